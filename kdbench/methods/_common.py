"""Pieces shared by several distillers: projectors and the batch-entity feature template (spec §4.0)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..backbones import BackboneOutput

if TYPE_CHECKING:
    from ..backbones import Backbone


def make_projector(kind: str, d_in: int, d_out: int, hidden: int | None = None) -> nn.Module:
    """``linear``: Linear(d_in, d_out, no bias) (classic FitNet); ``mlp``: Linear → ReLU → Linear with hidden
    width (d_in + d_out)//2 unless given (FreqD paper-era code, spec §7 #8)."""
    if kind == "linear":
        return nn.Linear(d_in, d_out, bias=False)
    if kind == "mlp":
        h = hidden or (d_in + d_out) // 2
        return nn.Sequential(nn.Linear(d_in, h), nn.ReLU(), nn.Linear(h, d_out))
    raise ValueError(f"projector must be 'linear' or 'mlp', not {kind!r}")


def batch_entities(out: BackboneOutput, all_negatives: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U_B, P_B, N_B = uniq(users), uniq(positives), uniq(negatives) of a batch.

    With ``all_negatives=False`` only the first negative column is used (spec §4.0 cap for SimpleX's thousands of
    negatives)."""
    neg = out.neg if all_negatives else out.neg[:, :1]
    return torch.unique(out.users), torch.unique(out.pos), torch.unique(neg)


def template_sum(l_users: torch.Tensor, l_pos: torch.Tensor, l_neg: torch.Tensor) -> torch.Tensor:
    """Σ_{u∈U_B} ℓ(u) + ½(Σ_{i∈P_B} ℓ(i) + Σ_{j∈N_B} ℓ(j)): an item in both P_B and N_B counts twice (KDs, Kang)."""
    return l_users.sum() + 0.5 * (l_pos.sum() + l_neg.sum())


def student_features(student: Backbone, out: BackboneOutput, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All users' and items' student features of the requested kind, reusing the forward's propagation."""
    if source not in ("final", "raw"):
        raise ValueError(f"feature_source must be 'final' or 'raw', not {source!r}")
    return out.all_repr() if source == "final" else student.raw_embeddings()
