"""Distillers: the registry, the base class and the built-in methods (each registers itself on import)."""
from __future__ import annotations

from .base import DISTILLERS, Distiller, DistillerConfig, list_distillers, register_distiller, register_variant

# registration order is the listing order, and composites come after the methods they combine
from . import student, fitnet, freqd, kd, rd, cd, rrd, de, ftd, htd, composite  # noqa: E402,F401

#: the methods of the default run (``kdbench run`` with no arguments): the reference, plain feature KD, FreqD and
#: response KD. They fit the default run's few-minute budget on 2 CPU cores.
CORE_METHODS = ("student", "fitnet", "freqd", "kd")
#: every built-in method (``--methods all``); variants (``name.tag``) and plugins are named explicitly
BUILTIN_METHODS = ("student", "fitnet", "freqd", "kd", "rd", "cd", "rrd", "de", "ftd", "htd")

__all__ = ["BUILTIN_METHODS", "CORE_METHODS", "DISTILLERS", "Distiller", "DistillerConfig", "list_distillers",
           "register_distiller", "register_variant"]
