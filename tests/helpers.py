"""Builders shared by tests: a teacher/student/distiller triple and a fixed batch on tiny data; cell records
written without training, for the tables and the report; the counts of a grid run's summary line; a LightGCN
list file."""
import dataclasses
import re
from pathlib import Path

import numpy as np
import torch

from kdbench.backbones import BACKBONES
from kdbench.evaluate import METRICS
from kdbench.methods import DISTILLERS
from kdbench.records import write_json
from kdbench.teacher import Teacher


def make_distiller(tiny, backbone, method, seed=0, t_dim=16, s_dim=4, teacher_std=None, **params):
    """(teacher, student, distiller) on ``tiny``; SimpleX with 8 negatives so that tests stay small."""
    B = BACKBONES.get(backbone)
    cfg = dataclasses.replace(B.Config(), num_ns=8) if backbone == "simplex" else B.Config()
    torch.manual_seed(seed)
    t_cfg = cfg if teacher_std is None else dataclasses.replace(cfg, init_std=teacher_std)
    teacher = Teacher(B(tiny, t_dim, t_cfg), tiny)
    student = B(tiny, s_dim, cfg)
    cls = DISTILLERS.get(method)
    return teacher, student, cls(teacher, student, tiny, cls.Config(**{**cls.default_params(backbone), **params}))


def make_batch(tiny, student, n=32, seed=0):
    """(users, positives, negatives) drawn from the training pairs with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(tiny.train), (n,), generator=g)
    pairs = torch.from_numpy(tiny.train)[idx]
    neg = torch.randint(tiny.n_items, (n, student.n_neg), generator=g)
    return pairs[:, 0], pairs[:, 1], neg


def make_record(method, seed, ndcg20, dataset="toy", backbone="bprmf", epoch_s=1.0, status="ok", error=None,
                epochs=3):
    """A minimal record with the fields that the leaderboard, timing and report read."""
    metrics = {m: ndcg20 for m in METRICS}  # only ndcg@20 matters here; the others just have to exist
    return {"schema": 1, "dataset": {"name": dataset, "fingerprint": "f" * 8}, "backbone": backbone,
            "method": method, "seed": seed, "profile": "quick", "status": status, "error": error,
            "metrics": metrics if status == "ok" else None,
            "timing": {"epoch_s": epoch_s, "precompute_s": 0.0, "eval_s": 0.5, "train_s": 3 * epoch_s,
                       "peak_rss_mb": 100.0} if status == "ok" else None,
            "history": [{"epoch": e, "losses": {"base": 1.0 / (e + 1)}, "valid_ndcg@20": ndcg20 * (e + 1) / epochs,
                         "epoch_s": epoch_s} for e in range(epochs)] if status == "ok" else None,
            "environment": {"git_commit": "abcdef0123456789", "git_dirty": False, "cpu": "Test CPU",
                            "threads": 1},
            "started_at": f"2026-01-0{seed + 1}T10:00:00+00:00",
            "finished_at": f"2026-01-0{seed + 1}T11:00:00+00:00",
            "config": {"train": {"early_stop": "ndcg@20"}}}


def summary_counts(stderr: str) -> dict:
    """The counts of the final ``N cells run, N skipped ..., N running elsewhere, N failed`` line of a run's log."""
    m = re.search(r"(\d+) cells run, (\d+) skipped \(done before\), (\d+) running elsewhere, (\d+) failed", stderr)
    assert m, stderr
    return dict(zip(("run", "skipped", "busy", "failed"), map(int, m.groups())))


def write_cells(out, records):
    for r in records:
        stem = f"{r['dataset']['name']}__{r['backbone']}__{r['method']}__seed{r['seed']}"
        write_json(out / "cells" / f"{stem}.json", r)
    return records


def write_list_file(path: Path, pairs: np.ndarray) -> None:
    """``pairs`` as a LightGCN list file: one line per user, ``user item item ...``."""
    lines = [" ".join(map(str, [u, *pairs[pairs[:, 0] == u, 1]])) for u in np.unique(pairs[:, 0])]
    path.write_text("\n".join(lines) + "\n")


def write_lightgcn_folder(folder: Path, data) -> Path:
    """``data``'s train/valid/test splits as a LightGCN-format folder, ids shifted so that they differ from
    kdbench's internal ones (a loader that forgot to remap would be caught)."""
    folder.mkdir()
    for split in ("train", "valid", "test"):
        pairs = getattr(data, split).copy()
        pairs[:, 0] += 1000
        pairs[:, 1] += 5000
        write_list_file(folder / f"{split}.txt", pairs)
    return folder
