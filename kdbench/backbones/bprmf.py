"""BPRMF (Rendle et al., UAI 2009): dot product of ID embeddings, BPR loss. Raw = final (spec §2.1)."""
from __future__ import annotations

from dataclasses import dataclass

from . import BACKBONES
from .base import Backbone, BackboneConfig


@dataclass(frozen=True)
class BPRMFConfig(BackboneConfig):
    init_std: float = 0.01        # KDs init_std


@BACKBONES.register("bprmf")
class BPRMF(Backbone):
    description = "matrix factorisation with BPR loss; score = <e_u, e_i>"
    Config = BPRMFConfig
