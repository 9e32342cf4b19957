"""Several distillers trained together, e.g. DE-RRD (Kang et al., CIKM 2020: DE on representations + RRD on
rankings, "DE+RRD" in the paper's tables):

    L = L_base + Σ_m λ_m · Σ L_KD terms of m

Any ``a+b[+c]`` of registered distillers is built on demand by the registry (``--methods de+rrd``). Each part
keeps its own hyperparameters and λ, exposed as ``<part>_<name>`` (a part's dots become underscores), e.g.
``--set de+rrd.rrd_weight=0.01``; the composite's own ``weight`` stays 1. Each part runs its own hooks, so the
composition needs nothing from the harness and nothing from the parts beyond the Distiller interface.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from torch import nn

from .base import DISTILLERS, Distiller, DistillerConfig

if TYPE_CHECKING:
    import torch

    from ..backbones import Backbone, BackboneOutput
    from ..datasets import Dataset
    from ..teacher import Teacher


def _prefix(part: str) -> str:
    return part.replace(".", "_") + "_"


class Composite(Distiller):
    parts: tuple[str, ...] = ()

    def __init__(self, teacher: Teacher | None, student: Backbone, data: Dataset, cfg: DistillerConfig) -> None:
        super().__init__(teacher, student, data, cfg)
        self.members = nn.ModuleList()
        for part in self.parts:
            cls = DISTILLERS.get(part)
            own = {f.name: getattr(cfg, _prefix(part) + f.name) for f in dataclasses.fields(cls.Config)}
            self.members.append(cls(teacher, student, data, cls.Config(**own)))

    @classmethod
    def default_params(cls, backbone: str, dataset: str | None = None) -> dict:
        out = {"weight": 1.0}
        for part in cls.parts:
            out.update({_prefix(part) + k: v
                        for k, v in DISTILLERS.get(part).default_params(backbone, dataset).items()})
        return out

    @classmethod
    def code_classes(cls) -> tuple[type, ...]:
        return (cls, *(c for part in cls.parts for c in DISTILLERS.get(part).code_classes()))

    def precompute(self) -> None:
        for m in self.members:
            m.precompute()

    def on_epoch_start(self, epoch: int) -> None:
        for m in self.members:
            m.on_epoch_start(epoch)

    def loss(self, out: BackboneOutput) -> dict[str, torch.Tensor]:
        terms = {}
        for part, m in zip(self.parts, self.members):
            for name, value in m.loss(out).items():
                terms[f"{part}:{name}"] = m.cfg.weight * value   # the harness applies the composite's weight 1
        return terms


def compose(name: str) -> type[Distiller] | None:
    """The composite class for ``a+b[+…]`` when every part is a registered distiller, else None."""
    parts = tuple(name.split("+"))
    if len(parts) < 2 or len(set(parts)) != len(parts) or any(p not in DISTILLERS for p in parts):
        return None
    classes = [DISTILLERS.get(p) for p in parts]
    fields = [("weight", float, dataclasses.field(default=1.0))]
    for part, cls in zip(parts, classes):
        fields += [(_prefix(part) + f.name, f.type, dataclasses.field(default=f.default))
                   for f in dataclasses.fields(cls.Config)]
    names = [f[0] for f in fields]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"cannot compose {name!r}: its parts' prefixed hyperparameters collide ({', '.join(clash)})")
    config = dataclasses.make_dataclass(f"{''.join(c.__name__ for c in classes)}Config", fields,
                                        bases=(DistillerConfig,), frozen=True)
    return type(f"{'_'.join(c.__name__ for c in classes)}", (Composite,), {
        "parts": parts, "Config": config, "needs_teacher": any(c.needs_teacher for c in classes),
        "description": " + ".join(parts) + " trained together, each part with its own hyperparameters and weight",
        "__module__": __name__})


DISTILLERS.factory = compose
# listed by name (the DE-RRD paper's combined method); registered directly, since a lookup of an unknown name would
# load entry-point plugins while kdbench itself is still being imported
DISTILLERS.register("de+rrd")(compose("de+rrd"))
