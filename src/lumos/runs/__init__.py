"""``lumos fit``: train a workload (or a YAML config) into a self-describing run directory.

A run directory holds everything needed to read, continue or ship the result::

    RUN_DIR/
      config.yaml       the resolved configuration (every default filled in)
      metrics.csv       one row per epoch (loss, penalty, kept fraction, validation metrics)
      metrics.json      history, final metrics (sparse, compacted, dense baseline), sizes,
                        feature ranking, per-group widths, gate trajectories
      report.txt        the human summary (``lumos report`` prints it)
      checkpoints/      resumable checkpoints (weights-only files + index.json with SHA-256)
      model/            compacted.pt (the plain compacted module, a full pickle),
                        state_dict.pt (its weights, loadable with weights_only=True) and
                        README.txt (how to load it; printed by lumos fit)
      plots/            gates.png, widths.png, features.png, metric_vs_params.png

The same entry point runs under ``torchrun``: every rank trains, rank 0 writes the files.
See ``docs/runs.md`` for the configuration schema.

Modules: ``config`` (:class:`RunConfig`, the schema, reading and validating configs),
``catalog`` (workload names, ``lumos workloads``), ``directory`` (preparing the run directory,
resume checks, the files written), ``fit`` (:func:`fit_run`, budget and tolerance runs),
``results`` (measuring a finished run, ``metrics.json``, the summary), ``reading``
(:func:`read_metrics`, :func:`report_run`, :func:`load_run`).
"""

from .catalog import resolve_workload, workload_table
from .config import (
    DEFAULT_BUDGET,
    SCHEMA,
    RunConfig,
    load_config,
    read_config_file,
    resolved,
    validate_config,
    write_config,
)
from .directory import write_metrics_csv
from .fit import build_sparse_model, fit_run
from .reading import load_run, read_metrics, report_run
from .results import RunResult, format_summary

__all__ = [
    "DEFAULT_BUDGET",
    "SCHEMA",
    "RunConfig",
    "RunResult",
    "build_sparse_model",
    "fit_run",
    "format_summary",
    "load_config",
    "load_run",
    "read_config_file",
    "read_metrics",
    "report_run",
    "resolve_workload",
    "resolved",
    "validate_config",
    "workload_table",
    "write_config",
    "write_metrics_csv",
]
