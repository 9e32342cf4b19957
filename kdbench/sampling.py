"""Vectorised samplers on device: uniform negatives by rejection against the training pairs."""
from __future__ import annotations

import torch


class PairMembership:
    """O(log n) vectorised test of (user, item) ∈ a pair set, via sorted keys u·n_items + i."""

    def __init__(self, pairs: torch.Tensor, n_items: int) -> None:
        self.n_items = n_items
        self.keys = torch.sort(pairs[:, 0] * n_items + pairs[:, 1]).values

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users * self.n_items + items
        pos = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)
        return self.keys[pos] == keys


def sample_excluding(users: torch.Tensor, n: int, n_items: int, exclude: PairMembership,
                     generator: torch.Generator, max_rounds: int = 100) -> torch.Tensor:
    """[len(users), n] items drawn uniformly from I \\ exclude(u); hits are redrawn (exact rejection sampling)."""
    dev = users.device
    out = torch.randint(n_items, (len(users), n), device=dev, generator=generator)
    uu = users[:, None].expand_as(out)
    bad = exclude.contains(uu, out)
    for _ in range(max_rounds):
        if not bool(bad.any()):
            return out
        k = int(bad.sum())
        out[bad] = torch.randint(n_items, (k,), device=dev, generator=generator)
        bad[bad.clone()] = exclude.contains(uu[bad], out[bad])
    raise RuntimeError("negative sampling did not converge: some user has interacted with almost every item")
