"""Reading a run back: its metrics, its text report, and its SparseModel rebuilt from the
weights-only checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CheckpointError, ConfigurationError
from .catalog import resolve_workload
from .config import read_config_file, validate_config
from .fit import build_sparse_model
from .results import format_summary


def read_metrics(run_dir: str | os.PathLike) -> dict:
    """The ``metrics.json`` of a finished run."""
    path = Path(run_dir) / "metrics.json"
    if not Path(run_dir).is_dir():
        raise ConfigurationError(f"run directory {run_dir} does not exist.")
    if not path.exists():
        raise ConfigurationError(
            f"{run_dir} holds no finished run (no metrics.json); finish it with "
            f"`lumos fit {Path(run_dir) / 'config.yaml'} --out {run_dir} --resume`."
        )
    try:
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict) or "final" not in metrics:
            raise ValueError("not a LUMOS metrics file")
        return metrics
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(
            f"{path} is damaged ({exc}); write it again from the run's last checkpoint with "
            f"`lumos fit {Path(run_dir) / 'config.yaml'} --out {run_dir} --resume`."
        ) from None


def report_run(run_dir: str | os.PathLike, plots: bool = True) -> str:
    """The text summary of a finished run; redraws its plots from metrics.json."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    if plots:
        from ..plots import plot_run

        folder = run_dir / "plots"
        fix = (f"make it writable, or print the summary without redrawing the plots: "
               f"`lumos report {run_dir} --no-plots`.")
        if not os.access(folder if folder.exists() else run_dir, os.W_OK | os.X_OK):
            raise CheckpointError(f"cannot redraw the plots: {folder} is read-only; {fix}")
        try:
            plot_run(metrics, folder)
        except OSError as exc:
            raise CheckpointError(
                f"cannot redraw the plots in {folder} ({exc.strerror or exc}); {fix}"
            ) from None
    text = (run_dir / "report.txt").read_text() if (run_dir / "report.txt").exists() else ""
    return text.rstrip() or format_summary(metrics)


def load_run(run_dir: str | os.PathLike):
    """Rebuild a finished run's SparseModel from its config and last checkpoint.

    Returns ``(config, workload, data, sparse_model)``; the weights come from a weights-only
    checkpoint, never from a pickle. The data are read from the cache (or regenerated).
    """
    from ..checkpoint import CheckpointManager

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise ConfigurationError(f"{run_dir} is not a LUMOS run directory (no config.yaml).")
    config = validate_config(read_config_file(config_path), f"config file {config_path}")
    workload = resolve_workload(config.workload)
    state = CheckpointManager(run_dir / "checkpoints").load()
    if state is None:
        raise ConfigurationError(f"{run_dir} has no checkpoint yet; run `lumos fit` first.")
    if not state["position"]["finished"]:
        raise ConfigurationError(
            f"the run in {run_dir} has not finished; continue it with "
            f"`lumos fit {config_path} --out {run_dir} --resume`."
        )
    data = workload.data(config.size, config.seed, config.cache_dir, False)
    sm = build_sparse_model(config, workload, data)
    sm.load_state_dict(state["model"])
    sm.set_progress(1.0)
    return config, workload, data, sm.eval()
