"""The run directory on disk: preparing it (or refusing it) before any work, checking that a
resumed run has the same configuration, and the files written while and after training."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import torch

from ..checkpoint import save_file, write_atomic
from ..errors import ConfigurationError, LumosWarning
from .config import RunConfig, read_config_file, resume_compared, validate_config

#: the free space a run directory needs at least (checkpoints and the model)
MIN_FREE_BYTES = 50 * 1024 * 1024


#: the manifest that marks a folder as a LUMOS run directory (written before anything else)
MANIFEST = "lumos-run.json"
#: held (with the writer's pid) while a process writes the run directory
LOCK = ".lumos-run.lock"
#: an unreadable lock younger than this may be one being written right now
_LOCK_GRACE_S = 10.0


def has_run(out: Path) -> bool:
    """Does ``out`` already hold a run (a manifest, or the checkpoint index of an older run)?"""
    return (out / MANIFEST).exists() or (out / "checkpoints" / "index.json").exists()


def config_sha256(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _config_diff(saved: dict, config: dict) -> list[str]:
    saved, config = resume_compared(saved), resume_compared(config)
    return [k for k in dict.fromkeys([*config, *saved]) if saved.get(k) != config.get(k)]


def read_manifest(out: Path) -> dict | None:
    """The manifest of the run in ``out`` (None when there is none)."""
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        assert isinstance(manifest, dict) and isinstance(manifest.get("config"), dict)
        return manifest
    except (OSError, ValueError, AssertionError):
        raise ConfigurationError(
            f"{path} is damaged, so LUMOS cannot tell which configuration the run in {out} "
            "has; start a new run with --out DIR."
        ) from None


def write_manifest(out: Path, config: RunConfig) -> None:
    from .. import __version__

    values = config.to_dict()
    write_atomic(out / MANIFEST, json.dumps(
        {"lumos_run": 1, "lumos_version": __version__, "config_sha256": config_sha256(values),
         "config": values}, indent=1) + "\n")


class RunLock:
    """The exclusive lock file of a run directory (``O_CREAT | O_EXCL``, holding the pid)."""

    def __init__(self, path: Path, token: str) -> None:
        self.path = path
        self.token = token

    def release(self) -> None:
        with contextlib.suppress(OSError):
            if self.path.read_text() == self.token:
                self.path.unlink()


def _holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _alive(holder: dict) -> bool:
    """Can the holder still be running? (only a process on this host can be checked)"""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def lock_run_dir(out: Path) -> RunLock:
    """Take the run directory's lock; a live holder is refused, a dead one's lock taken over."""
    path = out / LOCK
    token = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "since": time.time()})
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                with contextlib.suppress(OSError):
                    if time.time() - path.stat().st_mtime < _LOCK_GRACE_S:
                        holder = {"pid": "?", "host": "?"}  # being written just now
            if holder is not None and _alive(holder):
                raise ConfigurationError(
                    f"{out} is being written by another lumos process (pid {holder['pid']} on "
                    f"{holder.get('host')}, lock file {path}); wait for it to finish or choose "
                    f"another folder with --out DIR. If that process is surely gone, delete "
                    f"{path}."
                ) from None
            warnings.warn(
                f"taking over the lock {path} of process {holder['pid'] if holder else '?'}, "
                "which is no longer running (it stopped without releasing it).",
                LumosWarning, stacklevel=2,
            )
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write to the output folder {out} ({exc.strerror or exc}); choose a "
                "writable folder with --out DIR."
            ) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        return RunLock(path, token)
    raise ConfigurationError(f"could not take the lock {path}; try again, or choose --out DIR.")


def _foreign_files(out: Path) -> list[str]:
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name not in (LOCK, ".write-test"))


def _claim(out: Path, resume: bool, config: RunConfig) -> None:
    """Decide, under the lock, whether this run may write ``out``; mark it with the manifest."""
    manifest = read_manifest(out)
    if manifest is not None:
        if not resume:
            raise ConfigurationError(
                f"{out} already holds a run; continue it with --resume, or choose a new folder "
                "with --out DIR."
            )
        diff = _config_diff(manifest["config"], config.to_dict())
        if diff:
            raise ConfigurationError(
                f"--resume with a different configuration than the run in {out} "
                f"(differs in: {', '.join(diff)}); resume with the same settings, or start a "
                "new run with --out DIR."
            )
        return
    if (out / "checkpoints" / "index.json").exists():  # a run of a LUMOS without manifests
        if not resume:
            raise ConfigurationError(
                f"{out} already holds a run; continue it with --resume, or choose a new folder "
                "with --out DIR."
            )
        if not (out / "config.yaml").exists():
            raise ConfigurationError(
                f"{out} holds checkpoints but neither {MANIFEST} nor config.yaml, so the "
                "configuration it was trained with cannot be checked; put its config.yaml "
                "back, or start a new run with --out DIR."
            )
        check_resume_config(out, config)
    elif _foreign_files(out):
        names = _foreign_files(out)
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ConfigurationError(
            f"{out} is not empty and not a LUMOS run directory (it holds {shown}, and no "
            f"{MANIFEST}); LUMOS writes only into an empty or new folder, so none of these is "
            "overwritten: choose another folder with --out DIR."
        )
    write_manifest(out, config)


def prepare_run_dir(out: Path, resume: bool, config: RunConfig) -> RunLock:
    """Create ``out`` or refuse it, before any data are generated or any step is trained.

    Returns the run directory's lock, held until :meth:`RunLock.release`. ``out`` is written
    only when it is new or empty, or holds a LUMOS run (``lumos-run.json``) that is resumed
    with the same configuration.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write to the output folder {out} ({exc.strerror or exc}); choose a "
            "writable folder with --out DIR."
        ) from None
    lock = lock_run_dir(out)
    try:
        _claim(out, resume, config)
        try:
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
                f"only {free / 1e6:.1f} MB are free where {out} lives; a run needs room for "
                "its checkpoints and model: free some space or choose another folder with "
                "--out DIR."
            )
    except BaseException:
        lock.release()
        raise
    return lock


def check_resume_config(out: Path, config: RunConfig) -> None:
    """Refuse to resume the run in ``out`` with another configuration than it was started with."""
    saved_path = out / "config.yaml"
    if not (saved_path.exists() and has_run(out)):
        return
    saved = validate_config(read_config_file(saved_path), f"config file {saved_path}")
    diff = _config_diff(saved.to_dict(), config.to_dict())
    if diff:
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
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def save_model(folder: Path, small: torch.nn.Module) -> str:
    """``model/``: the compacted weights (weights-only loadable) and, where it pickles, the
    compacted module itself (each file replaced atomically).

    Returns how to load it, in one line: also written to ``model/README.txt`` and printed by
    ``lumos fit``, since a module holding LUMOS's own layers (``lumos.layers``' FNO convs)
    needs LUMOS to unpickle, and one that cannot be pickled has only its weights.
    """
    folder.mkdir(exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in small.state_dict().items()}
    save_file(folder / "state_dict.pt", state)
    try:
        pickle_ok = True
        buffer = io.BytesIO()
        torch.save(small.cpu(), buffer)
    except Exception as exc:  # a layer that cannot be pickled: the weights are still there
        pickle_ok = False
        write_atomic(folder / "compacted.txt",
                     f"the compacted module could not be pickled ({exc}); use `lumos export` "
                     "or state_dict.pt.\n")
    if pickle_ok:
        write_atomic(folder / "compacted.pt", buffer.getvalue())
        (folder / "compacted.txt").unlink(missing_ok=True)  # a previous run's note
        own = sorted({f"{type(m).__module__}.{type(m).__name__}" for m in small.modules()
                      if type(m).__module__.split(".")[0] == "lumos"})
        note = ("model/compacted.pt: torch.load(path, weights_only=False) "
                + (f"needs LUMOS installed (it holds {', '.join(own)}); `lumos export RUN "
                   "--format torchscript` writes a file that loads without it"
                   if own else "loads without LUMOS (plain torch and the model's own classes)"))
    else:
        note = ("model/compacted.pt: not written (the compacted module does not pickle, see "
                "model/compacted.txt); use `lumos export RUN --format torchscript` or "
                "model/state_dict.pt")
    write_atomic(folder / "README.txt", note + "\n")
    return note
