"""Student only (no distillation): the reference row for gains, significance and timing overhead (spec §4.1)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Distiller, register_distiller

if TYPE_CHECKING:
    import torch

    from ..backbones import BackboneOutput


@register_distiller("student")
class StudentOnly(Distiller):
    description = "no distillation: the student trained alone with its base loss (the reference row)"
    needs_teacher = False

    def loss(self, out: BackboneOutput) -> dict[str, torch.Tensor]:
        return {}
