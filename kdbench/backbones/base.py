"""The backbone interface shared by teachers and students."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..datasets import Dataset


@dataclass
class BackboneOutput:
    """One forward pass on a batch of (user, positive, negatives).

    ``user_repr`` holds the batch users' final representations (spec §2.4; SimpleX users before dropout) that KD
    losses distil; ``pos_scores``/``neg_scores`` are what the base loss uses. ``all_repr()`` gives the final
    representations of every user and item, computed at most once per step (LightGCN already has them from the
    forward).
    """

    users: torch.Tensor            # [B]
    pos: torch.Tensor              # [B]
    neg: torch.Tensor              # [B, n_neg]
    user_repr: torch.Tensor        # [B, d]
    pos_scores: torch.Tensor       # [B]
    neg_scores: torch.Tensor       # [B, n_neg]
    _all_fn: Callable[[], tuple[torch.Tensor, torch.Tensor]] = field(repr=False, default=None)
    _all: tuple[torch.Tensor, torch.Tensor] | None = field(repr=False, default=None)

    def all_repr(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._all is None:
            self._all = self._all_fn()
        return self._all


# a dense GEMM against every item beats gathering rows once the lists are longer than n_items / DENSE_RATIO
DENSE_RATIO = 32


def rows_of(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table[idx]`` for a 2-D table and integer ids of any shape, differentiable in the table.

    Indexing's backward zero-fills a table-sized gradient and scatters into it with ``index_put_(accumulate)``;
    ``F.embedding``'s dense backward computes the same sums 3x faster on CPU (25,181 x 400 table, 4,096 ids:
    3.5 ms against 11.4 ms), and a 400-d BPRMF step gathers from two such tables."""
    return F.embedding(idx, table)


def scores_at(u: torch.Tensor, items: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """⟨u_b, items[idx_{b,k}]⟩ for users u [B, d], an item table [I, d] and item ids idx [B, K].

    For long lists (SimpleX's thousands of negatives) one GEMM against the whole table and a gather of the
    scores computes the same numbers far faster on CPU than gathering B·K embedding rows and scattering their
    gradient back into the table (measured on CiteULike: see benchmarks)."""
    if idx.shape[1] * DENSE_RATIO >= items.shape[0]:
        return (u @ items.t()).gather(1, idx)
    return batch_scores(u, rows_of(items, idx))


def batch_scores(u: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """⟨u_b, items_{b,k}⟩ for u [B, d] and items [B, K, d]. A broadcast product is faster on CPU for short lists
    (BPR's 1 + n_neg, KD's 50 candidates), a batched matrix-vector product for long ones (SimpleX, RRD)."""
    if items.shape[1] <= 64:
        return (items * u.unsqueeze(1)).sum(-1)
    return torch.bmm(items, u.unsqueeze(2)).squeeze(2)


@dataclass(frozen=True)
class BackboneConfig:
    init_std: float = 0.01
    loss_reduction: str = "sum"   # batch sum (KDs, Kang code) or mean (LightGCN paper); spec §1


class Backbone(nn.Module):
    """A recommender with raw ID tables and final representations; score = ⟨user repr, item repr⟩."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type] = BackboneConfig
    negatives_exclude_positives: ClassVar[bool] = True  # BPR backbones: uniform over I \\ I_u^+

    def __init__(self, data: Dataset, dim: int, cfg: BackboneConfig) -> None:
        super().__init__()
        self.n_users, self.n_items, self.dim, self.cfg = data.n_users, data.n_items, dim, cfg
        self.user_emb = nn.Embedding(self.n_users, dim)
        self.item_emb = nn.Embedding(self.n_items, dim)
        nn.init.normal_(self.user_emb.weight, std=cfg.init_std)
        nn.init.normal_(self.item_emb.weight, std=cfg.init_std)

    @property
    def n_neg(self) -> int:
        return 1

    def raw_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb.weight, self.item_emb.weight

    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final representations of all users and items (differentiable; eval mode gives pre-dropout users)."""
        return self.raw_embeddings()

    def forward(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> BackboneOutput:
        all_u, all_i = self.representations()
        u = rows_of(all_u, users)
        # one gather per table: each gather's backward zero-fills a table-sized gradient
        scores = scores_at(u, all_i, torch.cat([pos[:, None], neg], 1))
        return BackboneOutput(users, pos, neg, u, scores[:, 0], scores[:, 1:], _all=(all_u, all_i))

    def loss(self, out: BackboneOutput) -> torch.Tensor:
        """BPR: −(1/n_neg) Σ_j log σ(ŷ_ui − ŷ_uj), reduced over the batch by ``loss_reduction``."""
        per_row = F.softplus(out.neg_scores - out.pos_scores[:, None]).mean(1)
        return self.reduce(per_row)

    def reduce(self, per_row: torch.Tensor) -> torch.Tensor:
        return per_row.sum() if self.cfg.loss_reduction == "sum" else per_row.mean()
