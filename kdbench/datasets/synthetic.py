"""The embedded default dataset: planted low-rank preferences with a popularity skew, no files needed.

Users and items get latent factors of rank ``rank`` (> the student's 20 dims) whose scale decays slowly with the
factor index, so a 20-d student can only capture the leading directions while a 200-d teacher can capture all of
them; item popularity follows a Zipf-like bias. Each user draws a lognormal number of distinct items from a softmax
over affinities (Gumbel top-k, fully vectorised). The data depend only on the arguments: the same seed gives the
same bytes on any machine.
"""
from __future__ import annotations

import numpy as np

from .base import Dataset
from .splits import random_split


def make_synthetic(n_users: int = 2000, n_items: int = 1500, rank: int = 64, mean_items: float = 80.0,
                   temperature: float = 0.15, popularity: float = 0.8, seed: int = 0, split_seed: int = 0
                   ) -> Dataset:
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(1.0 + np.arange(rank) / 8.0)  # slowly decaying spectrum: many directions matter
    p = rng.standard_normal((n_users, rank)) * scale
    q = rng.standard_normal((n_items, rank)) * scale
    bias = -popularity * np.log1p(rng.permutation(n_items))  # Zipf-like popularity over a random item order
    affinity = (p @ q.T) / np.sqrt((scale ** 2).sum()) + bias[None, :] * temperature
    gumbel = rng.gumbel(size=affinity.shape)
    keys = affinity / temperature + gumbel  # Gumbel top-k = sampling without replacement ∝ softmax(aff/T)
    counts = np.clip(rng.lognormal(np.log(mean_items), 0.5, n_users).astype(int), 5, n_items // 2)
    order = np.argsort(-keys, axis=1)
    take = np.arange(n_items)[None, :] < counts[:, None]
    users = np.repeat(np.arange(n_users), counts)
    items = order[take]
    pairs = np.stack([users, items], 1).astype(np.int64)
    tr, va, te = random_split(pairs, split_seed)
    src = {"generator": "kdbench.datasets.synthetic.make_synthetic",
           "params": dict(n_users=n_users, n_items=n_items, rank=rank, mean_items=mean_items,
                          temperature=temperature, popularity=popularity, seed=seed),
           "split": f"per-user random 8:1:1, split_seed={split_seed}"}
    return Dataset.from_raw_splits("synthetic", tr, va, te, src)
