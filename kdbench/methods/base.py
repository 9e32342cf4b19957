"""The ``Distiller`` interface: what the harness calls, and nothing else.

Lifecycle, driven by :func:`kdbench.train.fit`:

1. ``__init__(teacher, student, data, cfg)`` builds the method's own modules (projectors, experts); they are
   ``nn.Module`` children, so one Adam trains them together with the student.
2. ``precompute()`` once before training (teacher top-K lists, filtered teacher features); timed as
   ``precompute_s``.
3. ``on_epoch_start(epoch)`` before each epoch (resampling, temperature annealing); counted in the epoch time.
   Random draws come from ``torch.Generator`` attributes created in ``__init__`` or ``precompute`` (on this
   module or a submodule): mid-training checkpoints save and restore them by attribute name, so that a resumed
   run draws what an uninterrupted one would. State carried from epoch to epoch must derive from ``epoch``, the
   parameters or those generators.
4. ``loss(out)`` on every batch: a dict of **unweighted** named KD terms (scalars with a grad_fn). The harness adds
   ``cfg.weight · Σ terms`` to the backbone's base loss.

The teacher and the student are held as plain attributes, not submodules, so that ``self.parameters()`` are only
the method's own; the harness refuses to train a distiller that exposes teacher parameters.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..backbones import Backbone, BackboneOutput
from ..datasets import Dataset
from ..registry import Registry
from ..teacher import Teacher

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DISTILLERS: Registry[type["Distiller"]] = Registry("distiller", "kdbench.distillers")


@dataclass(frozen=True)
class DistillerConfig:
    weight: float = 1.0           # λ in L = L_base + λ·Σ L_KD terms


class Distiller(nn.Module):
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type[DistillerConfig]] = DistillerConfig
    needs_teacher: ClassVar[bool] = True
    #: per-backbone defaults that differ from ``Config``'s (the spec's tables), e.g. {"lightgcn": {"tau": 10}}
    backbone_defaults: ClassVar[dict[str, dict]] = {}
    #: per dataset-and-backbone defaults over those, keyed "dataset/backbone" (e.g. KDs' Gowalla configs)
    dataset_defaults: ClassVar[dict[str, dict]] = {}
    #: defaults of a registered variant (``name.tag``), applied over the backbone defaults
    variant_defaults: ClassVar[dict] = {}

    def __init__(self, teacher: Teacher | None, student: Backbone, data: Dataset, cfg: DistillerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        object.__setattr__(self, "teacher", teacher)   # plain attributes: never submodules (see module doc)
        object.__setattr__(self, "student", student)
        object.__setattr__(self, "data", data)

    @classmethod
    def default_params(cls, backbone: str, dataset: str | None = None) -> dict:
        base = dataclasses.asdict(cls.Config())
        return {**base, **cls.backbone_defaults.get(backbone, {}),
                **cls.dataset_defaults.get(f"{dataset}/{backbone}", {}), **cls.variant_defaults}

    @classmethod
    def code_classes(cls) -> tuple[type, ...]:
        """The classes whose code runs when this method trains: mid-training checkpoints are versioned by their
        source (with their base classes and the method modules they import)."""
        return (cls,)

    def teacher_parameters(self) -> Iterator[nn.Parameter]:
        return self.teacher.parameters() if self.teacher is not None else iter(())

    def precompute(self) -> None:
        """Once before training."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before each epoch."""

    def loss(self, out: BackboneOutput) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def register_distiller(name: str | None = None, *, override: bool = False
                       ) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: ``@register_distiller("mykd")`` makes ``--methods mykd`` available."""
    return DISTILLERS.register(name, override=override)


def register_variant(base: type[Distiller], tag: str, description: str, **defaults) -> type[Distiller]:
    """Register ``<base.name>.<tag>``: the same class with other default hyperparameters (timm's ``name.tag``)."""
    unknown = set(defaults) - {f.name for f in dataclasses.fields(base.Config)}
    if unknown:
        raise ValueError(f"variant {base.name}.{tag}: unknown hyperparameters {sorted(unknown)}")
    cls = type(f"{base.__name__}_{tag}", (base,), {"variant_defaults": {**base.variant_defaults, **defaults},
                                                   "description": description, "__module__": base.__module__})
    return DISTILLERS.register(f"{base.name}.{tag}")(cls)


def list_distillers(pattern: str = "*") -> list[str]:
    return DISTILLERS.list(pattern)
