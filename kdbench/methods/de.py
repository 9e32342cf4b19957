"""DE: Distillation Experts (Kang et al., "DE-RRD: A Knowledge Distillation Framework for Recommender System",
CIKM 2020).

Per side (users, items) M experts E_m = Linear(d_s, h) → ReLU → Linear(h, d_t), h = (d_s + d_t)//2 (d_s//2 when
d_s = d_t), reconstruct the teacher representation from the student's; a selection network on the **teacher**
representation, α_e = softmax(W t_e + b), picks one expert per entity by Gumbel-softmax, so entities with similar
teacher vectors share an expert:

    z_e = softmax((log(α_e + 1e-10) + g)/T),  g ~ Gumbel(0, 1)^M fresh per call  (M = 1 → z = 1)
    t̂_e = Σ_m z_{e,m} E_m(s_e),   ℓ(e) = ‖t_e − t̂_e‖²
    L_DE = Σ_{u∈U_B} ℓ(u) + ½(Σ_{i∈P_B} ℓ(i) + Σ_{j∈N_B} ℓ(j))        (spec §4.3, §4.0)

with T annealed per epoch, T_e = max(T_end, T0·(T_end/T0)^{e/1000}), T0 = 1, T_end = 1e-10 (1000 = the configured
maximum epochs of Kang/KDs, fixed here even when early stopping ends sooner; spec §7 #11). Defaults: KDs BPR
CiteULike M 30, λ 0.05 (Kang: M 30, λ 0.01); KDs LightGCN M 20, λ 0.005; KDs SimpleX M 10, λ unset in the config
(the parser default 1 applies). Reference: SeongKu-Kang/DE-RRD_CIKM20 ``Models/DE.py`` (``BPR_DE.get_DE_loss``);
KDs ``modeling/KD/cf/baseline.py`` ``DE``.

Deviations: the experts run as one :class:`~kdbench.methods._experts.ExpertBank` (two GEMMs, no [n, d_t, M] tensor;
numerically the same mixture); positives and negatives share one expert call (independent noise per row, as in
separate calls); Gumbel noise comes from a generator seeded from the run's torch seed; features are the final
representations by default (spec §2.4) and SimpleX uses only the first negative column (spec §4.0 cap). Experts
and gates are discarded at inference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..backbones.base import rows_of
from ._common import batch_entities, student_features, template_sum
from ._experts import GumbelExpertDistiller
from .base import DistillerConfig, register_distiller

if TYPE_CHECKING:
    from ..backbones import BackboneOutput


@dataclass(frozen=True)
class DEConfig(DistillerConfig):
    weight: float = 0.05           # λ, KDs BPR CiteULike (Kang: 0.01)
    num_experts: int = 30          # M, KDs BPR CiteULike (= Kang)
    T0: float = 1.0                # initial Gumbel temperature (Kang, KDs)
    T_end: float = 1e-10           # final temperature (Kang, KDs)
    anneal_epochs: int = 1000      # `max_epochs` of the schedule, fixed (spec §4.3; Kang/KDs configured epochs)
    expert_hidden: int = 0         # expert width; 0 = (d_s+d_t)//2, d_s//2 if d_s = d_t (Kang DE.py)
    feature_source: str = "final"  # final | raw (spec §2.4)
    kd_all_negatives: bool = True  # False: only the first negative column (SimpleX cap, spec §4.0)


@register_distiller("de")
class DE(GumbelExpertDistiller):
    description = "distillation experts: Gumbel-selected MLP experts (gate on the teacher) regress the teacher repr"
    Config = DEConfig
    # KDs' configs per dataset (spec §4.3): BPR M 30/5/5, λ 0.05/0.005/0.005; LightGCN M 20/10/10, λ 0.005/0.5/0.5
    dataset_defaults = {**{f"{d}/bprmf": {"num_experts": 5, "weight": 0.005} for d in ("gowalla", "yelp2018")},
                        **{f"{d}/lightgcn": {"num_experts": 10, "weight": 0.5} for d in ("gowalla", "yelp2018")}}
    backbone_defaults = {"lightgcn": {"num_experts": 20, "weight": 0.005},
                         "simplex": {"num_experts": 10, "weight": 1.0, "kd_all_negatives": False}}

    def loss(self, out: BackboneOutput) -> dict[str, torch.Tensor]:
        s_user, s_item = student_features(self.student, out, self.cfg.feature_source)
        t_user, t_item = self.teacher.repr(self.cfg.feature_source)
        users, pos, neg = batch_entities(out, self.cfg.kd_all_negatives)
        items = torch.cat([pos, neg])
        ell_u = ((t_user[users] - self.experts.reconstruct("user", rows_of(s_user, users), t_user[users])) ** 2).sum(-1)
        ell_i = ((t_item[items] - self.experts.reconstruct("item", rows_of(s_item, items), t_item[items])) ** 2).sum(-1)
        return {"kd_feat": template_sum(ell_u, ell_i[:len(pos)], ell_i[len(pos):])}
