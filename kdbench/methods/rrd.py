"""RRD: Relaxed Ranking Distillation (SeongKu Kang, Junyoung Hwang, Wonbin Kweon and Hwanjo Yu, "DE-RRD: A
Knowledge Distillation Framework for Recommender System", CIKM 2020).

Distil only the order of a few "interesting" items from the teacher's top-N list (N = ``mxk``, training items
masked) and require all of them to rank above sampled "uninteresting" items, unordered among themselves
(spec §4.2). Each epoch, per user:

    K interesting positions drawn without replacement with p(r) ∝ exp(−r/T), r = 1..N, then sorted ascending
    (teacher order kept)                                                                    → [n_U, K]
    L uninteresting items uniform without replacement from I \\ (I_u^+ ∪ top-N_u)            → [n_U, L]
    L_RRD = −Σ_{u∈U_B} Σ_{k=1}^{K} [ s_k − log( Σ_{l=k}^{K} e^{s_l} + Σ_{l'=1}^{L} e^{s'_{l'}} ) ]

with s the student scores of the interesting items in teacher order and s' those of the uninteresting ones
(Plackett–Luce), computed with a reversed logcumsumexp and a logsumexp. Variant ``rrd.nosample`` takes the
teacher's top-K directly, in order (the author's later READMEs); uninteresting items are still sampled there
([unverified] in the official code).

Reference code: SeongKu-Kang/DE-RRD_CIKM20 (official; K 40, L 40, T 10, N 500, λ 0.001); woriazzc/KDs
modeling/KD/cf/baseline.py ``RRD`` (BPRMF K 100, L 200, T 10, λ 0.1 on CiteULike; LightGCN K 50, L 100, λ 0.01),
whose values kdbench uses.

Deviations (spec §7 #12): uninteresting items by rejection sampling against the sorted (user, item) keys of the
training pairs and the top-N lists, then first-distinct of the i.i.d. stream (the same distribution as the
official multinomial over a dense n_U×n_I float mask, which is never built); logsumexp instead of clamping scores at
80 (KDs); the interesting positions by Gumbel-top-k. On small catalogues N, K, L are clamped so that every user
can fill them: N ≤ min_u |I \\ I_u^+| minus room for min(L, half of it) uninteresting items, K ≤ N,
L ≤ min_u |I \\ I_u^+| − N (never binding on the benchmark datasets).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..sampling import PairMembership
from ..scoring import pair_scores
from ._ranking import (
    min_free_items,
    rank_log_weights,
    relaxed_ranking_loss,
    sample_ranks,
    sample_uniform_distinct,
    seeded_generator,
)
from .base import Distiller, DistillerConfig, register_distiller, register_variant

if TYPE_CHECKING:
    from ..backbones import Backbone, BackboneOutput
    from ..datasets import Dataset
    from ..teacher import Teacher


@dataclass(frozen=True)
class RRDConfig(DistillerConfig):
    weight: float = 0.1           # λ (KDs BPRMF CiteULike; Gowalla/Yelp 0.005; Kang 0.001)
    k: int = 100                  # K interesting items per user (KDs BPRMF; Kang 40)
    l: int = 200                  # L uninteresting items per user (KDs BPRMF; Kang 40)
    temperature: float = 10.0     # T in p(r) ∝ exp(−r/T) (KDs CiteULike and Kang; KDs Gowalla/Yelp 100)
    mxk: int = 500                # N, length of the teacher's list (KDs ``rrd_mxK``, Kang)
    sample_interesting: bool = True  # False: the teacher's top-K in order (``rrd.nosample``)


def clamp_sizes(free: int, n: int, k: int, l: int) -> tuple[int, int, int]:
    """(N, K, L) that every user can fill, given ``free`` = min_u |I \\ I_u^+|."""
    n = min(n, free - min(l, free // 2))
    if n < 1:
        raise ValueError("rrd: some user has interacted with (almost) every item")
    return n, min(k, n), max(0, min(l, free - n))


@register_distiller("rrd")
class RRD(Distiller):
    description = "relaxed ranking KD: Plackett-Luce on sampled teacher top items above uninteresting ones"
    Config = RRDConfig
    backbone_defaults = {"lightgcn": {"k": 50, "l": 100, "weight": 0.01}}
    dataset_defaults = {f"{d}/bprmf": {"temperature": 100.0, "weight": 0.005} for d in ("gowalla", "yelp2018")}

    def __init__(self, teacher: Teacher | None, student: Backbone, data: Dataset, cfg: RRDConfig) -> None:
        super().__init__(teacher, student, data, cfg)
        if cfg.k < 1 or cfg.l < 0 or cfg.mxk < 1 or cfg.temperature <= 0:
            raise ValueError("rrd needs k ≥ 1, l ≥ 0, mxk ≥ 1 and temperature > 0")
        self.n_top, self.k, self.l = clamp_sizes(min_free_items(data), cfg.mxk, cfg.k, cfg.l)
        self.top = self.log_w = self.exclude = self.gen = None
        self.interesting = self.uninteresting = None

    def precompute(self) -> None:
        dev = self.teacher.user_repr.device
        self.gen = seeded_generator(dev)
        self.top = self.teacher.topk(self.n_top)                                   # [n_U, N], train masked
        self.log_w = rank_log_weights(self.n_top, self.cfg.temperature, dev)
        users = torch.arange(self.data.n_users, device=dev)
        top_pairs = torch.stack([users.repeat_interleave(self.n_top), self.top.reshape(-1)], 1)
        train = torch.from_numpy(self.data.train).to(dev)
        self.exclude = PairMembership(torch.cat([train, top_pairs]), self.data.n_items)
        if not self.cfg.sample_interesting:
            self.interesting = self.top[:, :self.k]

    def sample_interesting(self) -> torch.Tensor:
        """[n_U, K] teacher-list items at rank-weighted positions drawn without replacement, in teacher order."""
        pos = sample_ranks(self.log_w, self.data.n_users, self.k, self.gen, replacement=False)
        return self.top.gather(1, pos.sort(dim=1).values)

    def on_epoch_start(self, epoch: int) -> None:
        if self.cfg.sample_interesting:
            self.interesting = self.sample_interesting()
        users = torch.arange(self.data.n_users, device=self.top.device)
        self.uninteresting = sample_uniform_distinct(users, self.l, self.data.n_items, self.exclude, self.gen)

    def loss(self, out: BackboneOutput) -> dict[str, torch.Tensor]:
        users = torch.unique(out.users)
        items = torch.cat([self.interesting[users], self.uninteresting[users]], 1)
        s_user, s_item = out.all_repr()
        s = pair_scores(s_user, s_item, users, items)                              # [B, K + L]
        return {"kd_rank": relaxed_ranking_loss(s[:, :self.k], s[:, self.k:])}


register_variant(RRD, "nosample", "RRD without sampling: the teacher's top-K in order above uninteresting items",
                 sample_interesting=False)
