"""The run directory on disk: preparing it (or refusing it) before any work, checking that a
resumed run has the same configuration, and the files written while and after training."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import torch

from ..errors import ConfigurationError
from .config import RunConfig, read_config_file, validate_config

#: the free space a run directory needs at least (checkpoints and the model)
MIN_FREE_BYTES = 50 * 1024 * 1024


def has_run(out: Path) -> bool:
    """Does ``out`` already hold a run (a checkpoint index)?"""
    return (out / "checkpoints" / "index.json").exists()


def prepare_run_dir(out: Path, resume: bool) -> None:
    """Create ``out`` or refuse it, before any data are generated or any step is trained."""
    if has_run(out) and not resume:
        raise ConfigurationError(
            f"{out} already holds a run; continue it with --resume, or choose a new folder "
            "with --out DIR."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        for sub in ("checkpoints", "model", "plots"):
            (out / sub).mkdir(exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"lumos")
        probe.unlink()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write to the output folder {out} ({exc.strerror or exc}); choose a "
            "writable folder with --out DIR."
        ) from None
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise ConfigurationError(
            f"only {free / 1e6:.1f} MB are free where {out} lives; a run needs room for its "
            "checkpoints and model: free some space or choose another folder with --out DIR."
        )


def check_resume_config(out: Path, config: RunConfig) -> None:
    """Refuse to resume the run in ``out`` with another configuration than it was started with."""
    saved_path = out / "config.yaml"
    if not (saved_path.exists() and has_run(out)):
        return
    saved = validate_config(read_config_file(saved_path), f"config file {saved_path}")
    if saved.to_dict() != config.to_dict():
        diff = [k for k in config.to_dict() if getattr(saved, k) != getattr(config, k)]
        raise ConfigurationError(
            f"--resume with a different configuration than the run in {out} "
            f"(differs in: {', '.join(diff)}); resume with the same settings, or start a new "
            "run with --out DIR."
        )


#: metrics.csv columns before the validation metrics
HISTORY_COLUMNS = ("penalty", "kept_fraction", "realized_fraction", "target")


def _metrics_rows(history, primary_first: list[str]) -> list[dict]:
    rows = []
    for i, loss in enumerate(history.loss):
        row = {"epoch": i + 1, "loss": loss}
        for key in HISTORY_COLUMNS:
            values = getattr(history, key)
            row[key] = values[i] if i < len(values) else ""
        row["seconds"] = history.epoch_seconds[i] if i < len(history.epoch_seconds) else ""
        if i < len(history.val):
            for k in primary_first:
                row[f"val_{k}"] = history.val[i].get(k, "")
        rows.append(row)
    return rows


def write_metrics_csv(path: Path, history, primary: str) -> None:
    """``metrics.csv``: one row per epoch, the primary validation metric first (replaced
    atomically, so it can be watched while the run goes on)."""
    keys = list(history.val[0]) if history.val else []
    keys = [primary] + [k for k in keys if k != primary] if primary in keys else keys
    rows = _metrics_rows(history, keys)
    columns = ["epoch", "loss", *HISTORY_COLUMNS, "seconds"] + [f"val_{k}" for k in keys]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def save_model(folder: Path, small: torch.nn.Module) -> None:
    """``model/``: the compacted weights (weights-only loadable) and, where it pickles, the
    compacted module itself."""
    folder.mkdir(exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in small.state_dict().items()}
    torch.save(state, folder / "state_dict.pt")
    try:
        torch.save(small.cpu(), folder / "compacted.pt")
    except Exception as exc:  # a layer that cannot be pickled: the weights are still there
        (folder / "compacted.txt").write_text(
            f"the compacted module could not be pickled ({exc}); use `lumos export` or "
            "state_dict.pt.\n"
        )
