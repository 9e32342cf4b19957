"""Split recipes of the spec (methods.md §3.3)."""
from __future__ import annotations

import numpy as np


def ordered_split(user_items: list[np.ndarray], train_frac: float = 0.8, valid_frac: float = 0.1
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recipe (A): cut each user's sequence, in the given order, at max(⌊0.8n⌋, 1) and ⌊0.9n⌋.

    ``user_items[u]`` holds user u's items in order; returns train/valid/test pairs.
    """
    parts = ([], [], [])
    for u, items in enumerate(user_items):
        n = len(items)
        if n == 0:
            continue
        a = max(int(np.floor(train_frac * n)), 1)
        b = max(int(np.floor((train_frac + valid_frac) * n)), a)
        for part, chunk in zip(parts, (items[:a], items[a:b], items[b:])):
            if len(chunk):
                part.append(np.stack([np.full(len(chunk), u, dtype=np.int64), chunk], 1))
    return tuple(np.concatenate(p) if p else np.zeros((0, 2), np.int64) for p in parts)


def group_by_user(pairs: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(sorted unique users, their items in the order they appear in ``pairs``)."""
    order = np.argsort(pairs[:, 0], kind="stable")
    p = pairs[order]
    users, starts = np.unique(p[:, 0], return_index=True)
    return users, np.split(p[:, 1], starts[1:])


def random_split(pairs: np.ndarray, seed: int, train_frac: float = 0.8, valid_frac: float = 0.1
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded per-user random split: shuffle each user's items, then cut as in :func:`ordered_split`."""
    rng = np.random.default_rng(seed)
    users, lists = group_by_user(pairs)
    shuffled = [items[rng.permutation(len(items))] for items in lists]
    tr, va, te = ordered_split(shuffled, train_frac, valid_frac)
    for part in (tr, va, te):  # ordered_split numbers users by position
        if len(part):
            part[:, 0] = users[part[:, 0]]
    return tr, va, te


def carve_validation(train: np.ndarray, seed: int = 0, frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Recipe (B): for users in ascending id order, move n_val = max(1, ⌊0.1·n⌋) of the user's sorted training
    items, chosen by ``rng.permutation`` with ``rng = default_rng(seed)``, to validation (n < 2: none)."""
    rng = np.random.default_rng(seed)
    users, lists = group_by_user(np.unique(train, axis=0))
    keep, val = [], []
    for u, items in zip(users, lists):
        items = np.sort(items)
        n = len(items)
        if n < 2:
            keep.append(np.stack([np.full(n, u), items], 1))
            continue
        n_val = max(1, int(np.floor(frac * n)))
        perm = rng.permutation(n)
        val.append(np.stack([np.full(n_val, u), items[np.sort(perm[:n_val])]], 1))
        rest = np.sort(perm[n_val:])
        keep.append(np.stack([np.full(len(rest), u), items[rest]], 1))
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros((0, 2), np.int64)  # noqa: E731
    return cat(keep), cat(val)
