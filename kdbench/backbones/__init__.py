"""Backbone registry: ``bprmf``, ``lightgcn``, ``simplex`` (and plugins in group ``kdbench.backbones``)."""
from __future__ import annotations

from ..registry import Registry
from .base import Backbone, BackboneConfig, BackboneOutput

BACKBONES: Registry[type[Backbone]] = Registry("backbone", "kdbench.backbones")

from . import bprmf, lightgcn, simplex  # noqa: E402,F401  (built-ins register themselves)

__all__ = ["BACKBONES", "Backbone", "BackboneConfig", "BackboneOutput"]
