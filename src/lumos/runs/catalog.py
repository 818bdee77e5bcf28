"""The workloads a run can name: resolving ``workload:`` to a Workload, and the table
``lumos workloads`` prints."""

from __future__ import annotations

import importlib
from dataclasses import asdict, fields, is_dataclass

from ..errors import ConfigurationError, LumosError


def resolve_workload(name: str):
    """A :class:`~lumos.workloads.Workload` from a built-in name or ``'module:attribute'``."""
    from ..workloads import Workload, get_workload

    if ":" not in name:
        return get_workload(name)
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"workload '{name}': cannot import module '{module_name}' ({exc}); check that it "
            "is on PYTHONPATH."
        ) from None
    workload = getattr(module, attr, None)
    if not isinstance(workload, Workload):
        raise ConfigurationError(
            f"workload '{name}': '{attr}' in {module_name} must be a lumos.workloads.Workload, "
            f"got {type(workload).__name__}."
        )
    return workload


def workload_table() -> list[dict]:
    """Every built-in workload with its architecture, metric, recipes and availability."""
    from ..workloads import get_workload, workload_names

    rows = []
    for name in workload_names():
        try:
            wl = get_workload(name)
        except (ImportError, LumosError) as exc:  # pragma: no cover - broken install
            rows.append({"name": name, "error": str(exc)})
            continue
        try:
            wl.check_available()
            missing = ""
        except LumosError as exc:
            missing = str(exc)
        rows.append({
            "name": name,
            "architecture": wl.architecture,
            "task": wl.task,
            "metric": wl.primary + (" (higher is better)" if wl.higher_is_better else ""),
            "recipes": {size: {f.name: _plain(getattr(r, f.name)) for f in fields(r)}
                        for size, r in wl.recipes.items()},
            "title": wl.title,
            "unavailable": missing,
        })
    return rows


def _plain(value):
    """A recipe value as JSON has it (a learning-rate ``Schedule`` as its fields)."""
    return asdict(value) if is_dataclass(value) else value
