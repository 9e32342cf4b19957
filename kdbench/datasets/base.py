"""The in-memory dataset: remapped train/valid/test interaction pairs, the id maps and a fingerprint."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp


class DatasetError(ValueError):
    """Bad dataset input: the message names the file (and line) and says how to fix it."""


def dedup_pairs(pairs: np.ndarray) -> np.ndarray:
    """Unique (user, item) rows, sorted by user then item."""
    if len(pairs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.asarray(pairs, dtype=np.int64), axis=0)


def _remove(pairs: np.ndarray, drop: np.ndarray, n_items: int) -> np.ndarray:
    if len(pairs) == 0 or len(drop) == 0:
        return pairs
    keys = pairs[:, 0] * n_items + pairs[:, 1]
    return pairs[~np.isin(keys, drop[:, 0] * n_items + drop[:, 1])]


@dataclass
class Dataset:
    """A split dataset in contiguous internal ids.

    ``user_ids[u]`` / ``item_ids[i]`` give the id of internal user ``u`` / item ``i`` as it appears in the source
    files, so that exported rankings can be checked without kdbench.
    """

    name: str
    n_users: int
    n_items: int
    train: np.ndarray  # [n, 2] int64, unique, sorted
    valid: np.ndarray
    test: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    source: dict = field(default_factory=dict)  # provenance: files, split recipe, filters

    @classmethod
    def from_raw_splits(cls, name: str, train: np.ndarray, valid: np.ndarray, test: np.ndarray,
                        source: dict) -> "Dataset":
        """Remap original ids to contiguous ints, drop duplicate pairs and pairs repeated across splits."""
        train, valid, test = (np.asarray(p, dtype=np.int64).reshape(-1, 2) for p in (train, valid, test))
        allp = np.concatenate([train, valid, test])
        user_ids, inv_u = np.unique(allp[:, 0], return_inverse=True)
        item_ids, inv_i = np.unique(allp[:, 1], return_inverse=True)
        mapped = np.stack([inv_u.reshape(-1), inv_i.reshape(-1)], axis=1).astype(np.int64)
        n1, n2 = len(train), len(train) + len(valid)
        n_items = len(item_ids)
        tr = dedup_pairs(mapped[:n1])
        va = _remove(dedup_pairs(mapped[n1:n2]), tr, n_items)
        te = _remove(_remove(dedup_pairs(mapped[n2:]), tr, n_items), va, n_items)
        return cls(name, len(user_ids), n_items, tr, va, te, user_ids, item_ids, dict(source))

    def csr(self, split: str) -> sp.csr_matrix:
        """Binary user × item matrix of one split (``train``, ``valid``, ``test``) or ``train+valid``."""
        cache = self.__dict__.setdefault("_csr", {})
        if split not in cache:
            pairs = np.concatenate([getattr(self, s) for s in split.split("+")])
            m = sp.csr_matrix((np.ones(len(pairs), dtype=np.float32), (pairs[:, 0], pairs[:, 1])),
                              shape=(self.n_users, self.n_items))
            m.sum_duplicates()
            m.data[:] = 1.0
            cache[split] = m
        return cache[split]

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the split contents and id maps: two datasets with the same fingerprint are the same data."""
        h = hashlib.sha256()
        h.update(f"{self.n_users},{self.n_items}".encode())
        for arr in (self.train, self.valid, self.test, self.user_ids, self.item_ids):
            a = np.ascontiguousarray(arr, dtype=np.int64)
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def stats(self) -> dict:
        return {"users": self.n_users, "items": self.n_items, "train": len(self.train), "valid": len(self.valid),
                "test": len(self.test)}

    def describe(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint, **self.stats(), "source": self.source}
