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
import warnings
from pathlib import Path

import numpy as np
import torch

from .atomic import replace_atomically
from .errors import CheckpointError, LumosWarning, NonFiniteError

FORMAT = 1
INDEX = "index.json"
_PREFIX = "ckpt-"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _disk_error(path: Path, exc: OSError) -> CheckpointError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(
            f"no space left on the device to write {path} (the previous version of the file, "
            "if any, is kept): free some space or point the run somewhere else (--out DIR), "
            "then continue with --resume."
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CheckpointError(
            f"cannot write {path}: its folder is read-only ({exc.strerror or exc}); make it "
            "writable, or write somewhere else (--out DIR)."
        )
    return CheckpointError(f"could not write {path}: {exc.strerror or exc}.")


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync,
    ``os.replace``): a crash or a full disk leaves the previous file or none, never a part of
    one. Failures are :class:`CheckpointError`s that name the file and the way out."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        replace_atomically(path, lambda fh: fh.write(raw))
    except OSError as exc:
        raise _disk_error(path, exc) from None


def save_file(path: str | os.PathLike, state: dict) -> str:
    """Write ``state`` atomically to ``path``; returns the file's SHA-256."""
    path = Path(path)
    try:
        replace_atomically(path, lambda fh: torch.save(state, fh))
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
        "Resume from another checkpoint: `lumos fit CONFIG --out RUN_DIR --resume` falls back "
        "to the newest intact one by itself, `--resume PATH` (or train(..., resume=PATH)) "
        "takes a given ckpt-*.pt file; or start afresh in a new folder (--out DIR)."
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
        self.damaged: list[str] = []  # checkpoints found damaged by load(), dropped on save

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
    def _on_disk(self) -> dict:
        """An index rebuilt from the ``ckpt-*.pt`` files present (no digests), oldest first."""
        found = []
        for path in self.directory.glob(f"{_PREFIX}*.pt"):
            try:
                found.append((int(path.stem[len(_PREFIX):]), path.name))
            except ValueError:
                continue
        found.sort()
        return {"latest": found[-1][1] if found else None,
                "files": {name: {"sha256": None, "step": step} for step, name in found}}

    def _index(self) -> dict:
        path = self.directory / INDEX
        if not path.exists():
            # an index deleted (or never written by an older run): the files still count
            return self._on_disk() if self.directory.is_dir() else {"latest": None, "files": {}}
        try:
            index = json.loads(path.read_text())
            assert isinstance(index, dict) and isinstance(index.get("files"), dict)
            return index
        except (OSError, ValueError, AssertionError):
            warnings.warn(
                f"{path} is damaged; using the checkpoint files in {self.directory} without "
                "their recorded digests (the next checkpoint rewrites the index).",
                LumosWarning, stacklevel=3,
            )
            return self._on_disk()

    def _write_index(self, index: dict) -> None:
        path = self.directory / INDEX
        data = json.dumps(index, indent=1).encode()
        try:
            replace_atomically(path, lambda fh: fh.write(data))
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
        """Write checkpoint number ``step`` atomically, record it, prune the oldest.

        A state whose model weights hold NaN/Inf is refused (:class:`NonFiniteError`) before
        anything is written, so a diverged run never pushes its last finite checkpoints out.
        """
        bad = non_finite_tensors(state.get("model"))
        if bad:
            latest = self._latest_name()
            kept = (f"the last finite checkpoint {self.directory / latest} is kept"
                    if latest else "no finite checkpoint was written yet")
            raise NonFiniteError(
                f"the weights hold NaN/Inf at step {step} ({', '.join(bad[:3])}): training "
                f"diverged, so this state is not written as a checkpoint; {kept}. Lower lr "
                "or set grad_clip, and start a new run in another folder (--out DIR)."
            )
        name = f"{_PREFIX}{step:09d}.pt"
        path = self.directory / name
        sha = save_file(path, {"format": FORMAT, **state})
        index = self._index()
        for gone in self.damaged:  # found damaged when resuming: no longer a checkpoint
            if gone == name:  # just replaced by an intact one
                continue
            index["files"].pop(gone, None)
            with contextlib.suppress(OSError):
                (self.directory / gone).unlink()
        self.damaged.clear()
        files = {k: v for k, v in index["files"].items() if k != name}
        files[name] = {"sha256": sha, "step": int(step)}
        keep = list(files)[-self.keep:]
        self._write_index({"latest": name, "files": {k: files[k] for k in keep}})
        for old in set(files) - set(keep):
            with contextlib.suppress(OSError):
                (self.directory / old).unlink()
        return path

    def _latest_name(self) -> str | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._index()["latest"]

    def load(self, path: str | os.PathLike | None = None) -> dict | None:
        """The checkpoint at ``path`` (default: the newest intact one; None when there is none
        yet).

        Without ``path`` a damaged or missing latest checkpoint is skipped with a
        :class:`LumosWarning` naming it, and the next older intact one is used; only when no
        recorded checkpoint is intact is a :class:`CheckpointError` raised.
        """
        if path is not None:
            return load_file(path)
        index = self._index()
        names = list(index["files"])
        latest = index.get("latest")
        if latest in names:  # the latest first, then the others newest first
            names.remove(latest)
            names.append(latest)
        if not names:
            return None
        problems = []
        for name in reversed(names):
            candidate = self.directory / name
            try:
                state = load_file(candidate, index["files"][name].get("sha256"))
            except CheckpointError as exc:
                problems.append(str(exc).split(". ")[0])
                self.damaged.append(name)
                continue
            if problems:
                warnings.warn(
                    f"skipped damaged checkpoint(s) ({'; '.join(problems)}); resuming from the "
                    f"newest intact one, {candidate}.", LumosWarning, stacklevel=2,
                )
            return state
        raise CheckpointError(
            f"no intact checkpoint is left in {self.directory} ({'; '.join(problems)}); start "
            "the run afresh in a new folder (--out DIR)."
        )


def non_finite_tensors(state) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or Inf."""
    if not isinstance(state, dict):
        return []
    return [str(k) for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not bool(torch.isfinite(v).all())]


def state_bytes(model: torch.nn.Module, optimizer_slots: int = 2) -> int:
    """Rough size of a checkpoint: weights plus ``optimizer_slots`` copies (Adam keeps two)."""
    n = sum(t.numel() * t.element_size() for t in model.state_dict().values()
            if isinstance(t, torch.Tensor))
    return int(n * (1 + optimizer_slots) + (1 << 16))
