"""FTD: Full Topology Distillation (Kang et al., "Topology Distillation for Recommender System", KDD 2021).

The student reproduces the teacher's whole similarity structure among the batch's entities. With U_B = uniq(u),
I_B = uniq(P ∪ N), n = |U_B| + |I_B|, s = [S_{U_B}; S_{I_B}] ∈ R^{n×d_s} and t ∈ R^{n×d_t}:

    L_FTD = Σ_{a,b} (cos(t_a, t_b) − cos(s_a, s_b))²

over all n² ordered pairs, self-pairs included (spec §4.4). No trainable modules; cost two n×n Gram matrices,
O(n²(d_s + d_t)) time and O(n²) memory. Default λ 1e-3 (Kang's TD notebook; FTD is not in KDs). Reference:
SeongKu-Kang/Topology_Distillation_KDD21 ``model.py`` class ``FTD`` (``get_TD_loss``).

Deviations: features are the final representations by default (spec §2.4; the reference uses BPR tables, where
both coincide), the teacher Gram is built without autograd, cosines use ``F.normalize`` (norm clamped at 1e-12,
the reference divides by the raw norm), and SimpleX uses only the first negative column (spec §4.0 cap).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._common import batch_entities, student_features
from .base import Distiller, DistillerConfig, register_distiller


@dataclass(frozen=True)
class FTDConfig(DistillerConfig):
    weight: float = 1e-3           # λ, Kang TD notebook (spec §4.4)
    feature_source: str = "final"  # final | raw (spec §2.4)
    kd_all_negatives: bool = True  # False: only the first negative column (SimpleX cap, spec §4.0)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """cos(a_i, b_j) for all rows i of a and j of b (b = a when omitted)."""
    a = F.normalize(a, dim=-1)
    return a @ (a if b is None else F.normalize(b, dim=-1)).T


def topology_entities(out, all_negatives: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """U_B = uniq(u) and I_B = uniq(P ∪ N) (N capped to the first column when ``all_negatives`` is False)."""
    users, pos, neg = batch_entities(out, all_negatives)
    return users, torch.unique(torch.cat([pos, neg]))


def batch_features(student, teacher, out, source: str, users: torch.Tensor, items: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """s = [S_users; S_items] (differentiable) and t = [T_users; T_items] (constant)."""
    s_user, s_item = student_features(student, out, source)
    t_user, t_item = teacher.repr(source)
    return torch.cat([s_user[users], s_item[items]]), torch.cat([t_user[users], t_item[items]])


@register_distiller("ftd")
class FTD(Distiller):
    description = "full topology distillation: match all pairwise cosine similarities of the batch's entities"
    Config = FTDConfig
    backbone_defaults = {"simplex": {"kd_all_negatives": False}}

    def loss(self, out):
        users, items = topology_entities(out, self.cfg.kd_all_negatives)
        s, t = batch_features(self.student, self.teacher, out, self.cfg.feature_source, users, items)
        with torch.no_grad():
            cos_t = cosine_matrix(t)
        return {"kd_topo": ((cos_t - cosine_matrix(s)) ** 2).sum()}
