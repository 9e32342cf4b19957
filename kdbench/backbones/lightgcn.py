"""LightGCN (He et al., SIGIR 2020): Ē = mean_{k=0..K} Â^k E^(0), no self-loops (spec §2.2, KD mode).

Propagation is one sparse CSR product per layer inside one autograd function whose backward is the same
propagation of the gradient (Â is symmetric); it runs once per training step and its output is shared by the base
loss and the KD loss (``BackboneOutput.all_repr``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..graph import normalized_adjacency, propagate_mean, to_torch_csr
from . import BACKBONES
from .base import Backbone, BackboneConfig

if TYPE_CHECKING:
    from ..datasets import Dataset


@dataclass(frozen=True)
class LightGCNConfig(BackboneConfig):
    n_layers: int = 3             # spec §2.5 (CiteULike, Yelp: 3; Gowalla: 4)
    init_std: float = 0.1         # KD mode (spec §2.2)


@BACKBONES.register("lightgcn")
class LightGCN(Backbone):
    description = "linear graph convolution; final = mean of layers 0..K over the normalised user-item graph"
    Config = LightGCNConfig

    def __init__(self, data: Dataset, dim: int, cfg: LightGCNConfig) -> None:
        super().__init__(data, dim, cfg)
        self._adj_np = normalized_adjacency(data)
        self._adj = None

    def _graph(self) -> torch.Tensor:
        dev = self.user_emb.weight.device
        if self._adj is None or self._adj.device != dev:
            self._adj = to_torch_csr(self._adj_np, dev)
        return self._adj

    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        return propagate_mean(self._graph(), self.user_emb.weight, self.item_emb.weight, self.cfg.n_layers)
