"""Checkpoints that survive crashes and never run code from the file.

A checkpoint is a ``torch.save`` of plain containers and tensors only, read back with
``torch.load(weights_only=True)``. Writes are atomic (temporary file in the same folder, fsync,
``os.replace``) and recorded with their SHA-256 in ``index.json`` (itself replaced atomically),
so a crash mid-write leaves the previous checkpoint as "latest", and a truncated or altered file
is refused with a message naming it instead of being half-read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError

FORMAT = 1
INDEX = "index.json"
_PREFIX = "ckpt-"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, write) -> None:
    """Run ``write(file_object)`` into a temporary file next to ``path``, then rename it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _disk_error(path: Path, exc: OSError) -> CheckpointError:
    if exc.errno == errno.ENOSPC:
        return CheckpointError(
            f"no space left on the device to write {path}: free some space or point the run "
            "somewhere else (--out DIR), then continue with --resume."
        )
    return CheckpointError(f"could not write {path}: {exc.strerror or exc}.")


def save_file(path: str | os.PathLike, state: dict) -> str:
    """Write ``state`` atomically to ``path``; returns the file's SHA-256."""
    path = Path(path)
    try:
        _write_atomic(path, lambda fh: torch.save(state, fh))
    except OSError as exc:
        raise _disk_error(path, exc) from None
    return _sha256(path)


def _recorded_sha256(path: Path) -> str | None:
    """The digest ``index.json`` beside ``path`` recorded for it, if any."""
    index = path.parent / INDEX
    try:
        entry = json.loads(index.read_text())["files"].get(path.name)
        return entry["sha256"] if entry else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def load_file(path: str | os.PathLike, sha256: str | None = None) -> dict:
    """Read a checkpoint without executing code from it; ``sha256`` is checked when given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or the run dir.")
    fix = (
        "Delete it and resume from an earlier checkpoint (--resume PATH), or start the run "
        "again without --resume."
    )
    if sha256 is None:
        sha256 = _recorded_sha256(path)
    if sha256 is not None and _sha256(path) != sha256:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its SHA-256 differs from the one recorded when it "
            f"was written (truncated or altered afterwards). {fix}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors of a truncated or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read safely ({first[:200]}); it is truncated, "
            f"corrupt, or holds more than tensors and plain containers. {fix}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a LUMOS checkpoint of format {FORMAT}. {fix}"
        )
    return state


# ---- random number generators ------------------------------------------------------------------
def rng_state() -> dict:
    """Every generator a training step may draw from (torch CPU/CUDA, numpy, Python)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- a folder of checkpoints ------------------------------------------------------------------
class CheckpointManager:
    """Numbered checkpoints in one folder, the newest ``keep`` kept, listed in ``index.json``."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2) -> None:
        if keep < 1:
            from .errors import ConfigurationError

            raise ConfigurationError(f"keep_checkpoints must be >= 1, got {keep}.")
        self.directory = Path(directory)
        self.keep = int(keep)

    # -- before training --
    def prepare(self, estimate_bytes: int = 0) -> None:
        """Create the folder and prove it takes a file of about ``estimate_bytes``.

        Called before the first step so an unwritable folder or a full disk stops the run at
        once instead of after hours of training.
        """
        d = self.directory
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create the checkpoint folder {d} ({exc.strerror or exc}); choose a "
                "writable output folder (--out DIR)."
            ) from None
        if not os.access(d, os.W_OK | os.X_OK):
            raise CheckpointError(
                f"the checkpoint folder {d} is not writable; fix its permissions or choose "
                "another output folder (--out DIR)."
            )
        for stale in d.glob(f".{_PREFIX}*.tmp"):  # left by a crash mid-write
            with contextlib.suppress(OSError):
                stale.unlink()
        # keep + 1 checkpoints exist for a moment while the oldest is pruned
        needed = int(estimate_bytes) * (self.keep + 1)
        free = shutil.disk_usage(d).free
        if needed > free:
            raise CheckpointError(
                f"{d} has {free / 1e6:.1f} MB free but {self.keep + 1} checkpoints of this model "
                f"need about {needed / 1e6:.1f} MB; free some space, lower keep_checkpoints, or "
                "choose another output folder (--out DIR)."
            )
        probe = d / ".write-test"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"\0" * min(int(estimate_bytes), 1 << 20))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise _disk_error(probe, exc) from None
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    # -- index --
    def _index(self) -> dict:
        path = self.directory / INDEX
        if not path.exists():
            return {"latest": None, "files": {}}
        try:
            index = json.loads(path.read_text())
            assert isinstance(index, dict) and isinstance(index.get("files"), dict)
            return index
        except (OSError, ValueError, AssertionError):
            raise CheckpointError(
                f"{path} is damaged; delete it and resume from a checkpoint file directly "
                f"(--resume {self.directory}/{_PREFIX}....pt)."
            ) from None

    def _write_index(self, index: dict) -> None:
        path = self.directory / INDEX
        data = json.dumps(index, indent=1).encode()
        try:
            _write_atomic(path, lambda fh: fh.write(data))
        except OSError as exc:
            raise _disk_error(path, exc) from None

    def files(self) -> list[Path]:
        """Checkpoints recorded in the index, oldest first."""
        index = self._index()
        return [self.directory / name for name in index["files"]]

    def latest(self) -> Path | None:
        name = self._index()["latest"]
        return None if name is None else self.directory / name

    # -- save / load --
    def save(self, state: dict, step: int) -> Path:
        """Write checkpoint number ``step`` atomically, record it, prune the oldest."""
        name = f"{_PREFIX}{step:09d}.pt"
        path = self.directory / name
        sha = save_file(path, {"format": FORMAT, **state})
        index = self._index()
        files = {k: v for k, v in index["files"].items() if k != name}
        files[name] = {"sha256": sha, "step": int(step)}
        keep = list(files)[-self.keep:]
        self._write_index({"latest": name, "files": {k: files[k] for k in keep}})
        for old in set(files) - set(keep):
            with contextlib.suppress(OSError):
                (self.directory / old).unlink()
        return path

    def load(self, path: str | os.PathLike | None = None) -> dict | None:
        """The checkpoint at ``path`` (default: the latest; None when there is none yet)."""
        if path is None:
            path = self.latest()
            if path is None:
                return None
        return load_file(path)


def state_bytes(model: torch.nn.Module, optimizer_slots: int = 2) -> int:
    """Rough size of a checkpoint: weights plus ``optimizer_slots`` copies (Adam keeps two)."""
    n = sum(t.numel() * t.element_size() for t in model.state_dict().values()
            if isinstance(t, torch.Tensor))
    return int(n * (1 + optimizer_slots) + (1 << 16))
