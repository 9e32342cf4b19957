"""RD: Ranking Distillation (Jiaxi Tang and Ke Wang, "Ranking Distillation: Learning Compact Ranking Models With
High Performance for Recommender System", KDD 2018).

The teacher's top-K unobserved items π_0..π_{K−1} (training items masked) become extra positives with position
weights (spec §4.2):

    w^s_c ∝ exp(−(c+1)/T_rd)                                      (static, normalised to sum 1)
    r̂_c  = ⌊(n_I − 1)·|{j ∈ D_u : ŷ^S_uj > ŷ^S_{uπ_c}}| / n_dyn⌋ + 1,  D_u = n_dyn uniform non-training items
    w^d_c = max(0, tanh(μ(r̂_c − c)))                              (dynamic, from epoch ``start_epoch`` on)
    w_c   = L1-normalise(w^s_c · w^d_c), detached
    L_RD  = −Σ_{u∈U_B} Σ_c w_c log σ(ŷ^S_{uπ_c})

D_u is redrawn every epoch (uniform with replacement over I \\ I_u^+, as KDs). The dynamic ranks are one
[|U_B|, K, n_dyn] comparison instead of the official per-column loop (spec §7 #15).

Reference code: graytowne/rank_distill (official, Caser); woriazzc/KDs modeling/KD/cf/baseline.py ``RD``
(defaults: K 30, T_rd 1, μ 0.1, n_dyn 100, start epoch 100, λ 1).

Deviations: sums over unique batch users (KDs uses every batch row, spec §4.0); the teacher list masks the full
training history (official code excludes only the target items, spec §7 #15); the base loss is not scaled by
(1 − α) as in the paper, the harness adds λ·L_RD to the full base loss; weights renormalised after the dynamic
factor (KDs; the official code does not); log σ via ``logsigmoid``; K is clamped to min_u |I \\ I_u^+|.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..sampling import PairMembership, sample_excluding
from ..scoring import pair_scores
from ._ranking import min_free_items, seeded_generator
from .base import Distiller, DistillerConfig, register_distiller

if TYPE_CHECKING:
    from ..backbones import Backbone, BackboneOutput
    from ..datasets import Dataset
    from ..teacher import Teacher


@dataclass(frozen=True)
class RDConfig(DistillerConfig):
    weight: float = 1.0           # λ (KDs; spec §4.2)
    k: int = 30                   # teacher top-K positives (KDs; official Caser code 10)
    temperature: float = 1.0      # T_rd of the static weights exp(−(c+1)/T_rd) (KDs)
    mu: float = 0.1               # μ of the dynamic weights tanh(μ(r̂ − c)) (KDs)
    n_dynamic: int = 100          # n_dyn uniform non-training items per user per epoch (KDs)
    start_epoch: int = 100        # first (0-based) epoch with dynamic weights (KDs; official Caser code 10)


@register_distiller("rd")
class RD(Distiller):
    description = "ranking distillation: teacher top-K as position-weighted positives, dynamic under-rank weights"
    Config = RDConfig

    def __init__(self, teacher: Teacher | None, student: Backbone, data: Dataset, cfg: RDConfig) -> None:
        super().__init__(teacher, student, data, cfg)
        if cfg.k < 1 or cfg.n_dynamic < 1 or cfg.temperature <= 0:
            raise ValueError("rd needs k ≥ 1, n_dynamic ≥ 1 and temperature > 0")
        self.k = min(cfg.k, min_free_items(data))
        if self.k < 1:
            raise ValueError("rd: some user has interacted with every item")
        self.topk = self.static_w = self.dynamic = self.gen = self.seen = None
        self.dynamic_on = False

    def precompute(self) -> None:
        dev = self.teacher.user_repr.device
        self.gen = seeded_generator(dev)
        self.topk = self.teacher.topk(self.k)                                       # [n_U, K]
        c = torch.arange(self.k, device=dev, dtype=torch.float32)
        w = torch.exp(-(c + 1) / self.cfg.temperature)
        self.static_w = w / w.sum()                                                 # [K]
        self.seen = PairMembership(torch.from_numpy(self.data.train).to(dev), self.data.n_items)

    def on_epoch_start(self, epoch: int) -> None:
        self.dynamic_on = epoch >= self.cfg.start_epoch
        if self.dynamic_on:
            users = torch.arange(self.data.n_users, device=self.topk.device)
            self.dynamic = sample_excluding(users, self.cfg.n_dynamic, self.data.n_items, self.seen, self.gen)

    def weights(self, s_top: torch.Tensor, s_dyn: torch.Tensor | None) -> torch.Tensor:
        """[B, K] position weights from the student's scores on the list [B, K] and on D_u [B, n_dyn] (detached)."""
        w = self.static_w.expand_as(s_top)
        if s_dyn is None:
            return w
        n_above = (s_dyn[:, None, :] > s_top[:, :, None]).sum(-1).float()          # [B, K] via [B, K, n_dyn]
        r_hat = torch.floor((self.data.n_items - 1) * n_above / s_dyn.shape[1]) + 1
        c = torch.arange(s_top.shape[1], device=s_top.device, dtype=s_top.dtype)
        w_dyn = torch.tanh(self.cfg.mu * (r_hat - c)).clamp(min=0.0)
        return F.normalize(w * w_dyn, p=1, dim=1)

    def loss(self, out: BackboneOutput) -> dict[str, torch.Tensor]:
        users = torch.unique(out.users)
        s_user, s_item = out.all_repr()
        s_top = pair_scores(s_user, s_item, users, self.topk[users])                           # [B, K]
        with torch.no_grad():
            s_dyn = pair_scores(s_user, s_item, users, self.dynamic[users]) if self.dynamic_on else None
            w = self.weights(s_top.detach(), s_dyn)
        return {"kd_rank": -(w * F.logsigmoid(s_top)).sum()}
