"""SimpleX (Mao et al., CIKM 2021): cosine score, CCL loss, user = gated mix of its ID and its history (spec §2.3).

p_u = γ·e_u + (1−γ)·W_v·mean_{j∈H(u)} e_j,  p̂_u = p_u/‖p_u‖ (dropout on p̂_u in training only),  ê_i = e_i/‖e_i‖.
L = mean_b [relu(1 − ŷ_ui) + w·mean_j relu(ŷ_uj − m)], negatives uniform over all items.
The history mean is an ``embedding_bag`` over each user's last ``max_len`` training items (the target included,
as in KDs), never a B×max_len×d gather. KD losses see p̂_u before dropout ([deviation] from KDs, spec §7 #5).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import BACKBONES
from .base import DENSE_RATIO, Backbone, BackboneConfig, BackboneOutput, batch_scores, scores_at

if TYPE_CHECKING:
    from ..datasets import Dataset


@dataclass(frozen=True)
class SimpleXConfig(BackboneConfig):
    init_std: float = 1e-4        # spec §2.3
    gamma: float = 0.6            # gating weight g (CiteULike student/teacher)
    margin: float = 0.3           # CCL margin m (CiteULike student .3, teacher .1)
    neg_weight: float = 100.0     # CCL negative weight w
    dropout: float = 0.1
    num_ns: int = 2000            # negatives per positive, uniform over all items
    max_len: int = 500            # history length
    loss_reduction: str = "mean"  # CCL is a batch mean in all code bases


@BACKBONES.register("simplex")
class SimpleX(Backbone):
    description = "cosine score with a gated user history mean and cosine contrastive loss"
    Config = SimpleXConfig
    negatives_exclude_positives = False  # KDs neg_sampling_on_all

    def __init__(self, data: Dataset, dim: int, cfg: SimpleXConfig) -> None:
        super().__init__(data, dim, cfg)
        self.w_v = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_normal_(self.w_v.weight)
        r = data.csr("train")
        lens = np.diff(r.indptr)
        keep_from = r.indptr[1:] - np.minimum(lens, cfg.max_len)  # the last max_len items of each row
        idx = r.indices[np.arange(r.nnz) >= np.repeat(keep_from, lens)]
        new_lens = np.minimum(lens, cfg.max_len)
        self.register_buffer("hist_items", torch.from_numpy(idx.astype(np.int64)), persistent=False)
        self.register_buffer("hist_start", torch.from_numpy(np.concatenate([[0], np.cumsum(new_lens)[:-1]])
                                                            .astype(np.int64)), persistent=False)
        self.register_buffer("hist_len", torch.from_numpy(new_lens.astype(np.int64)), persistent=False)

    @property
    def n_neg(self) -> int:
        return self.cfg.num_ns

    def _users(self, users: torch.Tensor | None) -> torch.Tensor:
        """p̂ for ``users`` (all when None), before dropout."""
        if users is None:
            flat, offsets, e_u = self.hist_items, self.hist_start, self.user_emb.weight
        else:
            lens = self.hist_len[users]
            offsets = torch.zeros_like(lens)
            offsets[1:] = torch.cumsum(lens, 0)[:-1]
            total = int(lens.sum())
            base = torch.repeat_interleave(self.hist_start[users] - offsets, lens, output_size=total)
            flat = self.hist_items[base + torch.arange(total, device=lens.device)]
            e_u = self.user_emb(users)
        h = F.embedding_bag(flat, self.item_emb.weight, offsets, mode="mean")  # empty bags give 0
        p = self.cfg.gamma * e_u + (1 - self.cfg.gamma) * self.w_v(h)
        return F.normalize(p, dim=-1)

    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._users(None), F.normalize(self.item_emb.weight, dim=-1)

    def forward(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> BackboneOutput:
        u = self._users(users)
        ids = torch.cat([pos[:, None], neg], 1)
        u_drop = F.dropout(u, self.cfg.dropout, self.training)
        if ids.shape[1] * DENSE_RATIO >= self.n_items:  # normalise the table once, then one GEMM (scores_at)
            scores = scores_at(u_drop, F.normalize(self.item_emb.weight, dim=-1), ids)
        else:  # normalise only the rows the batch needs
            scores = batch_scores(u_drop, F.normalize(self.item_emb(ids), dim=-1))
        return BackboneOutput(users, pos, neg, u, scores[:, 0], scores[:, 1:], _all_fn=self.representations)

    def loss(self, out: BackboneOutput) -> torch.Tensor:
        per_row = F.relu(1 - out.pos_scores) + self.cfg.neg_weight * F.relu(out.neg_scores - self.cfg.margin).mean(1)
        return self.reduce(per_row)
