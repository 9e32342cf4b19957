"""FitNet: plain feature distillation (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

A per-side projector P maps the student representation to the teacher's width and is trained to regress it:

    L_KD = Σ_{u∈U_B} ℓ(u) + ½(Σ_{i∈P_B} ℓ(i) + Σ_{j∈N_B} ℓ(j)),   ℓ(e) = ‖P(s_e) − t_e‖²   (or 1 − cos)

on the batch's unique users, positives and negatives (spec §4.3, §4.0). Default: linear projector without bias,
MSE, final representations, λ = 0.05 (KDs ``fit.yaml``).
Deviation from KDs ``Fit``: batch entities instead of random users/items, and no MLP/dropout by default (spec §4.3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..backbones.base import rows_of
from ._common import batch_entities, make_projector, student_features, template_sum
from .base import Distiller, DistillerConfig, register_distiller

if TYPE_CHECKING:
    from ..backbones import Backbone, BackboneOutput
    from ..datasets import Dataset
    from ..teacher import Teacher


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

    def __init__(self, teacher: Teacher | None, student: Backbone, data: Dataset, cfg: FitNetConfig) -> None:
        super().__init__(teacher, student, data, cfg)
        self.proj_user = make_projector(cfg.projector, student.dim, teacher.dim)
        self.proj_item = make_projector(cfg.projector, student.dim, teacher.dim)

    def precompute(self) -> None:
        t_user, t_item = self.teacher.repr(self.cfg.feature_source)
        # ‖t_e‖², constant: the closed form's last term, in float64 like the rest of that expansion
        self.t_sq = (t_user.double().pow(2).sum(-1), t_item.double().pow(2).sum(-1))

    def loss(self, out: BackboneOutput) -> dict[str, torch.Tensor]:
        s_user, s_item = student_features(self.student, out, self.cfg.feature_source)
        t_user, t_item = self.teacher.repr(self.cfg.feature_source)
        users, pos, neg = batch_entities(out, self.cfg.kd_all_negatives)
        if self.cfg.projector == "linear" and self.cfg.loss == "mse":
            # the template's weights: users 1, positives and negatives ½ (an item in both counts twice)
            items = torch.cat([pos, neg])
            w_items = torch.full((len(items),), 0.5, device=items.device)
            return {"kd_feat": linear_mse_sum(self.proj_user.weight, rows_of(s_user, users), t_user[users],
                                              self.t_sq[0][users], torch.ones(len(users), device=users.device))
                    + linear_mse_sum(self.proj_item.weight, rows_of(s_item, items), t_item[items], self.t_sq[1][items],
                                     w_items)}

        def ell(proj: torch.nn.Module, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            p = proj(s)
            return ((p - t) ** 2).sum(-1) if self.cfg.loss == "mse" else 1 - F.cosine_similarity(p, t, dim=-1)

        return {"kd_feat": template_sum(ell(self.proj_user, rows_of(s_user, users), t_user[users]),
                                       ell(self.proj_item, rows_of(s_item, pos), t_item[pos]),
                                       ell(self.proj_item, rows_of(s_item, neg), t_item[neg]))}


#: below this ratio of the loss to Σ w‖t‖², ``linear_mse_sum`` computes Tᵀ D S in float64
_CROSS_F32_MIN = 1e-2


def linear_mse_sum(weight: torch.Tensor, s: torch.Tensor, t: torch.Tensor, t_sq: torch.Tensor, w: torch.Tensor
                   ) -> torch.Tensor:
    """Σ_e w_e ‖W s_e − t_e‖² for a bias-free linear map W [d_t, d_s], without forming the n × d_t projections:

        ⟨WᵀW, Sᵀ D S⟩ − 2 ⟨W, Tᵀ D S⟩ + Σ_e w_e ‖t_e‖²,   D = diag(w),  ``t_sq`` = ‖t_e‖²,

    i.e. d_s × d_s and d_t × d_s products in place of n × d_t ones and their element-wise passes (the n × d_t work
    was most of FitNet's epoch on CPU). The expansion subtracts terms of the size of Σ w‖t‖², so the result is only
    as precise as they are relative to the loss. The d_s-sized products and the sums are float64. Tᵀ D S, the one
    product with n × d_t inputs, is float32 (float64 would convert T and double its cost); its rounding (~1e-7 of Σ
    w‖t‖²) is negligible while the loss is at least ``_CROSS_F32_MIN`` of Σ w‖t‖² (about half in the trained
    CiteULike grid's FitNet students: the best linear map from a 20-d student leaves half of a 200-d teacher
    unexplained), and below that it is recomputed in float64 (in float32 throughout, a near-perfect fit drifts by
    ~2 % in value and ~4e-4 in gradient)."""
    w64, s64 = weight.double(), s.double()
    sw64 = s64 * w.double()[:, None]
    quad = ((w64.t() @ w64) * (s64.t() @ sw64)).sum()
    const = (w.double() * t_sq.double()).sum()
    loss = quad - 2 * (w64 * (t.t() @ (s * w[:, None])).double()).sum() + const
    if loss < _CROSS_F32_MIN * const:
        loss = quad - 2 * (w64 * (t.double().t() @ sw64)).sum() + const
    return loss.to(s.dtype)

