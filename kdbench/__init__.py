"""kdbench: a benchmark suite for knowledge distillation in recommender systems."""
__version__ = "0.1.0"

from .backbones import BACKBONES, Backbone  # noqa: E402
from .datasets import DATASETS, load_dataset  # noqa: E402
from .methods import Distiller, DistillerConfig, list_distillers, register_distiller, register_variant  # noqa: E402

__all__ = ["__version__", "Distiller", "DistillerConfig", "register_distiller", "register_variant",
           "list_distillers", "Backbone", "BACKBONES", "DATASETS", "load_dataset"]
