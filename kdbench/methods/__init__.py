"""Distillers: the registry, the base class and the built-in methods (each registers itself on import)."""
from __future__ import annotations

from .base import DISTILLERS, Distiller, DistillerConfig, list_distillers, register_distiller, register_variant
from . import student, fitnet, freqd, kd, rd, cd, rrd, de, ftd, htd  # noqa: E402,F401

#: built-in methods run by default (variants and plugins are opt-in)
CORE_METHODS = ("student", "fitnet", "freqd", "kd", "rd", "cd", "rrd", "de", "ftd", "htd")

__all__ = ["CORE_METHODS", "DISTILLERS", "Distiller", "DistillerConfig", "list_distillers", "register_distiller",
           "register_variant"]
