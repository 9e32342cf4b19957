"""Dataset registry and loaders: built-in names, and any folder in a documented format.

A loader is a function ``(root: Path | None, cfg: DataConfig) -> Dataset`` registered under a name, with a
``description`` attribute. ``load_dataset`` also accepts a path to a folder (see :func:`load_folder`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..registry import Registry
from .base import Dataset, DatasetError
from .formats import find_file, read_count_lists, read_interactions
from .splits import carve_validation, ordered_split, random_split
from .synthetic import make_synthetic

__all__ = ["DATASETS", "DataConfig", "Dataset", "DatasetError", "load_dataset", "load_folder", "resolve_data_root"]

DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset", "kdbench.datasets")


@dataclass(frozen=True)
class DataConfig:
    split_seed: int = 0          # seed of random splits and of the validation carve (spec §6: independent of runs)
    format: str = "auto"         # folder files: auto | list | pairs
    allow_cold_items: bool = False  # folder splits: accept valid/test items that never occur in train


def _dataset(name: str, description: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    def deco(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
        fn.description = description
        return DATASETS.register(name)(fn)
    return deco


def resolve_data_root(data_root: str | os.PathLike | None) -> Path | None:
    root = data_root or os.environ.get("KDBENCH_DATA")
    return Path(root).expanduser() if root else None


def _need(root: Path | None, rel: str, name: str) -> Path:
    if root is None:
        raise DatasetError(f"dataset {name!r} needs its files ({rel}); pass --data-root DIR or set KDBENCH_DATA")
    for cand in (root / rel, root / (rel + ".gz")):
        if cand.exists():
            return cand
    raise DatasetError(f"dataset {name!r}: {root / rel}[.gz] not found; point --data-root/KDBENCH_DATA at the "
                       "folder that holds it (see the README's 'Datasets' section)")


@_dataset("synthetic", "embedded planted low-rank data with popularity skew (2,000 users, 1,500 items); no files")
def _synthetic(root: Path | None, cfg: DataConfig) -> Dataset:
    return make_synthetic(split_seed=cfg.split_seed)


def _from_count_lists(name: str, path: Path, min_user_interactions: int) -> Dataset:
    """Recipe (A) on a ``users.dat``: user k-core filter, then the ordered 8:1:1 cut of each line."""
    lists = read_count_lists(path)
    keep = [k for k, items in enumerate(lists) if len(items) >= min_user_interactions]
    # dedupe within a line while keeping file order, which the ordered cut depends on
    ordered = [items[np.sort(np.unique(items, return_index=True)[1])] for items in (lists[k] for k in keep)]
    tr, va, te = ordered_split(ordered)
    users = np.asarray(keep, dtype=np.int64)
    for part in (tr, va, te):
        part[:, 0] = users[part[:, 0]]  # back to the line number = user id of the file
    src = {"files": [str(path)], "filter": f"users with >= {min_user_interactions} interactions, no item filter",
           "split": "ordered per user in file order, cut at max(floor(0.8n),1) and floor(0.9n) (spec §3.3 A)"}
    return Dataset.from_raw_splits(name, tr, va, te, src)


@_dataset("citeulike", "CiteULike-t, users >= 5 interactions (5,219 users, 25,181 items), ordered 8:1:1 split")
def _citeulike(root: Path | None, cfg: DataConfig) -> Dataset:
    return _from_count_lists("citeulike", _need(root, "citeulike-t/users.dat", "citeulike"), 5)


@_dataset("citeulike-a", "CiteULike-a (5,551 users, 16,980 items), ordered 8:1:1 split, no filter")
def _citeulike_a(root: Path | None, cfg: DataConfig) -> Dataset:
    return _from_count_lists("citeulike-a", _need(root, "citeulike-a/users.dat", "citeulike-a"), 1)


def _lightgcn(name: str, root: Path | None, cfg: DataConfig) -> Dataset:
    _need(root, f"{name}/train.txt", name)
    # The published splits have a few test items absent from train (Gowalla 9 pairs, Yelp2018 138); the standard
    # protocol keeps them as (unreachable) targets, so the strict folder check is relaxed here.
    ds = load_folder(root / name, replace(cfg, allow_cold_items=True))
    ds.name = name
    return ds


@_dataset("gowalla", "Gowalla, LightGCN 80/20 split; validation carved from train (seed 0)")
def _gowalla(root: Path | None, cfg: DataConfig) -> Dataset:
    return _lightgcn("gowalla", root, cfg)


@_dataset("yelp2018", "Yelp2018, LightGCN 80/20 split; validation carved from train (seed 0)")
def _yelp(root: Path | None, cfg: DataConfig) -> Dataset:
    return _lightgcn("yelp2018", root, cfg)


SPLIT_STEMS = {"train": ("train",), "valid": ("valid", "val", "validation", "dev"), "test": ("test",),
               "all": ("all", "ratings", "interactions", "data")}


def load_folder(folder: str | os.PathLike, cfg: DataConfig = DataConfig()) -> Dataset:
    """A folder with ``train`` + ``test`` (+ optional ``valid``) files, or one ``all``/``ratings`` file.

    Fixed splits are kept; without a validation file one is carved from train (spec §3.3 B); a single file is split
    per user at random (seeded by ``split_seed``). Files may be lists or pairs (``formats`` module), gzipped or not.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a directory")
    files = {k: find_file(folder, stems) for k, stems in SPLIT_STEMS.items()}
    src: dict = {"folder": str(folder.resolve())}
    if files["train"] is not None:
        if files["test"] is None:
            raise DatasetError(f"{folder}: has {files['train'].name} but no test file; add test.txt (or "
                               "test.csv/.tsv, optionally .gz), or give one all/ratings file to be split")
        tr, tr_lines = read_interactions(files["train"], cfg.format)
        te, te_lines = read_interactions(files["test"], cfg.format)
        parts = {"test": (te, te_lines, files["test"])}
        if files["valid"] is not None:
            va, va_lines = read_interactions(files["valid"], cfg.format)
            parts["valid"] = (va, va_lines, files["valid"])
        _check_against_train(tr, parts, cfg, files["train"])
        if files["valid"] is not None:
            src["split"] = "fixed train/valid/test files"
        else:
            tr, va = carve_validation(tr, cfg.split_seed)
            src["split"] = f"fixed train/test files; validation carved from train (spec §3.3 B, seed {cfg.split_seed})"
        src["files"] = [str(f) for f in files.values() if f is not None]
    elif files["all"] is not None:
        pairs, _ = read_interactions(files["all"], cfg.format)
        tr, va, te = random_split(np.unique(pairs, axis=0), cfg.split_seed)
        src["files"] = [str(files["all"])]
        src["split"] = f"per-user random 8:1:1 split, split_seed={cfg.split_seed}"
    else:
        raise DatasetError(f"{folder}: no train/test or all/ratings file found; expected train.txt + test.txt "
                           "(optionally valid.txt) or a single ratings.csv (see the README's 'Dataset formats')")
    return Dataset.from_raw_splits(folder.name, tr, va, te, src)


def _check_against_train(train: np.ndarray, parts: dict, cfg: DataConfig, train_file: Path) -> None:
    train_users = np.unique(train[:, 0])
    train_items = np.unique(train[:, 1])
    for split, (pairs, lines, path) in parts.items():
        bad_u = ~np.isin(pairs[:, 0], train_users)
        if bad_u.any():
            k = int(np.argmax(bad_u))
            raise DatasetError(f"{path}:{lines[k]}: user {pairs[k, 0]} has {split} items but no train items in "
                               f"{train_file.name}; a model cannot rank for it. Drop the user from {path.name} or "
                               "give it training interactions")
        bad_i = ~np.isin(pairs[:, 1], train_items)
        if bad_i.any() and not cfg.allow_cold_items:
            k = int(np.argmax(bad_i))
            raise DatasetError(f"{path}:{lines[k]}: item {pairs[k, 1]} never occurs in {train_file.name} "
                               f"({int(bad_i.sum())} such {split} pairs); it has no training signal. Remove those "
                               "pairs, or pass --set data.allow_cold_items=true to keep them")


def load_dataset(name_or_path: str, data_root: str | os.PathLike | None = None,
                 cfg: DataConfig = DataConfig()) -> Dataset:
    """A registered dataset by name, or a folder by path."""
    if name_or_path not in DATASETS and (os.sep in name_or_path or Path(name_or_path).is_dir()):
        return load_folder(name_or_path, cfg)
    loader = DATASETS.get(name_or_path)  # KeyError lists the names and close matches
    return loader(resolve_data_root(data_root), cfg)
