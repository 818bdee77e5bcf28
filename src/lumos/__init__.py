"""LUMOS: L0-regularised learning that finds the input features that matter and returns a
smaller, faster plain PyTorch model."""

from . import rules
from .errors import (
    CheckpointError,
    ConfigurationError,
    InputError,
    LumosError,
    LumosWarning,
    UnsupportedModelError,
    UntraceableModelError,
)
from .gates import HardConcreteConfig
from .measure import count_flops, count_params, latency
from .sparse_model import SparseModel, sparsify
from .topology import register_rule

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigurationError",
    "HardConcreteConfig",
    "InputError",
    "LumosError",
    "LumosWarning",
    "SparseModel",
    "UnsupportedModelError",
    "UntraceableModelError",
    "count_flops",
    "count_params",
    "latency",
    "register_rule",
    "rules",
    "sparsify",
]
