"""LUMOS: L0-regularised learning that finds the input features that matter and returns a
smaller, faster plain PyTorch model."""

import importlib.util

from . import metrics, rules
from ._version import __version__ as __version__  # one source: pyproject reads it too
from .errors import (
    CheckpointError,
    CompactionError,
    ConfigurationError,
    InputError,
    LumosError,
    LumosWarning,
    NonFiniteError,
    UnsupportedModelError,
    UntraceableModelError,
)
from .gates import HardConcreteConfig
from .measure import count_flops, count_params, latency
from .options import GateOptions
from .pipeline import sparsify
from .schedules import Schedule
from .selection import FeatureEvidence, confirm_features
from .sparse_model import SparseModel
from .topology import register_rule

__all__ = [
    "CheckpointError",
    "CompactionError",
    "ConfigurationError",
    "FeatureEvidence",
    "GateOptions",
    "HardConcreteConfig",
    "InputError",
    "LumosError",
    "LumosWarning",
    "NonFiniteError",
    "Schedule",
    "SparseModel",
    "UnsupportedModelError",
    "UntraceableModelError",
    "confirm_features",
    "count_flops",
    "count_params",
    "latency",
    "metrics",
    "register_rule",
    "rules",
    "sparsify",
]

# scikit-learn is optional: the estimators are imported on first use (lumos.LumosRegressor).
_ESTIMATORS = ("LumosClassifier", "LumosRegressor")
if importlib.util.find_spec("sklearn") is not None:
    __all__ += list(_ESTIMATORS)


def __getattr__(name: str):
    if name in _ESTIMATORS:
        from . import estimators

        return getattr(estimators, name)
    if name == "testing":  # lumos.testing.assert_compacts_exactly, imported on first use
        import importlib

        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'lumos' has no attribute {name!r}")
