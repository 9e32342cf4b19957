"""FitNet: plain feature distillation (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

A per-side projector P maps the student representation to the teacher's width and is trained to regress it:

    L_KD = Σ_{u∈U_B} ℓ(u) + ½(Σ_{i∈P_B} ℓ(i) + Σ_{j∈N_B} ℓ(j)),   ℓ(e) = ‖P(s_e) − t_e‖²   (or 1 − cos)

on the batch's unique users, positives and negatives (spec §4.3, §4.0). Default: linear projector without bias,
MSE, final representations, λ = 0.05 (KDs ``fit.yaml``).
Deviation from KDs ``Fit``: batch entities instead of random users/items, and no MLP/dropout by default (spec §4.3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ._common import batch_entities, make_projector, student_features, template_sum
from .base import Distiller, DistillerConfig, register_distiller


@dataclass(frozen=True)
class FitNetConfig(DistillerConfig):
    weight: float = 0.05          # KDs fit.yaml
    projector: str = "linear"     # linear | mlp
    loss: str = "mse"             # mse | cos
    feature_source: str = "final"  # final | raw (spec §2.4)
    kd_all_negatives: bool = True  # False: only the first negative column (SimpleX cap, spec §4.0)


@register_distiller("fitnet")
class FitNet(Distiller):
    description = "plain feature KD: projector(student repr) regresses the teacher repr (MSE)"
    Config = FitNetConfig
    backbone_defaults = {"simplex": {"kd_all_negatives": False}}

    def __init__(self, teacher, student, data, cfg):
        super().__init__(teacher, student, data, cfg)
        self.proj_user = make_projector(cfg.projector, student.dim, teacher.dim)
        self.proj_item = make_projector(cfg.projector, student.dim, teacher.dim)

    def loss(self, out):
        s_user, s_item = student_features(self.student, out, self.cfg.feature_source)
        t_user, t_item = self.teacher.repr(self.cfg.feature_source)
        users, pos, neg = batch_entities(out, self.cfg.kd_all_negatives)

        def ell(proj, s, t):
            p = proj(s)
            return ((p - t) ** 2).sum(-1) if self.cfg.loss == "mse" else 1 - F.cosine_similarity(p, t, dim=-1)

        return {"kd_feat": template_sum(ell(self.proj_user, s_user[users], t_user[users]),
                                       ell(self.proj_item, s_item[pos], t_item[pos]),
                                       ell(self.proj_item, s_item[neg], t_item[neg]))}
