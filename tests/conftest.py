"""Shared fixtures: tiny generated data (no downloads) and the real data folder when it exists."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import write_lightgcn_folder

from kdbench.datasets.synthetic import make_synthetic


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tiny():
    """60 users × 80 items of planted low-rank data, split 8:1:1."""
    return make_synthetic(n_users=60, n_items=80, rank=8, mean_items=15, seed=1)


@pytest.fixture
def tiny_folder(tmp_path, tiny):
    """The tiny dataset written as a LightGCN-format folder (train/valid/test)."""
    return write_lightgcn_folder(tmp_path / "tinyds", tiny)


@pytest.fixture(scope="session")
def shared_data():
    root = os.environ.get("KDBENCH_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "datasets")
    if not Path(root, "citeulike-t", "users.dat.gz").exists():
        pytest.skip("real datasets not found (set KDBENCH_DATA to ../shared/datasets)")
    return root
