"""SciML workloads: data generators (offline), models and metrics, used as a user would.

Each workload module defines ``WORKLOAD``; they are imported lazily so that a missing optional
package (ASE, RDKit, Cantera, ...) only matters for the workloads that need it. Building,
sparsifying and training a workload's model with its recipe: :mod:`lumos.workloads.recipe`.
"""

from __future__ import annotations

import importlib

from ..errors import ConfigurationError
from .base import (
    GraphSplit,
    TensorSplit,
    TrainRecipe,
    Workload,
    WorkloadData,
    WorkloadUnavailableError,
)
from .recipe import (
    build_dense,
    build_sparse,
    example_inputs,
    feature_argument,
    feature_options,
    sparsify_features,
    train_recipe,
)

#: workload name -> module (relative to this package) that defines ``WORKLOAD``.
WORKLOAD_MODULES: dict[str, str] = {
    "atomistic_energy": "atomistic",
    "alloy_mixing": "alloy",
    "critical_temperature": "qspr",
    "cosmo_power_spectrum": "cosmo_pk",
    "cosmoflow": "cosmoflow",
    "cfd_pressure": "cfd",
    "ct_lesion": "ct",
    "boiling_point": "boiling",
    "mesh_pde": "mesh_pde",
    "conformer_energy": "conformer",
    "combustion": "combustion",
    "burgers": "burgers",
    "darcy": "darcy",
}


def workload_names() -> list[str]:
    return list(WORKLOAD_MODULES)


def get_workload(name: str) -> Workload:
    """The workload called ``name`` (see :func:`workload_names`)."""
    if name not in WORKLOAD_MODULES:
        raise ConfigurationError(
            f"unknown workload {name!r}; available: {', '.join(WORKLOAD_MODULES)}."
        )
    module = importlib.import_module(f".{WORKLOAD_MODULES[name]}", __name__)
    return module.WORKLOAD


__all__ = [
    "GraphSplit",
    "TensorSplit",
    "TrainRecipe",
    "WORKLOAD_MODULES",
    "Workload",
    "WorkloadData",
    "WorkloadUnavailableError",
    "build_dense",
    "build_sparse",
    "example_inputs",
    "feature_argument",
    "feature_options",
    "get_workload",
    "sparsify_features",
    "train_recipe",
    "workload_names",
]
