"""The checkpointed state of a training run: where the loop is, what it recorded, and how a
checkpoint is written and put back (model, optimiser, RNGs, batch order) so a resumed run ends
exactly where the uninterrupted one would have."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import distributed
from ..checkpoint import CheckpointManager, rng_state, set_rng_state
from ..errors import CheckpointError
from .batches import EpochBatches
from .history import History


@dataclass
class Position:
    """Where the loop is, and the running sums of the epoch in progress (checkpointed)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    finished: bool = False
    loss_sum: Tensor = field(default_factory=lambda: torch.zeros(()))
    penalty_sum: Tensor = field(default_factory=lambda: torch.zeros(()))
    batches: int = 0
    seconds: float = 0.0

    def sums(self) -> Tensor:
        """``[loss sum, penalty sum, batches]`` of the epoch in progress, as one tensor."""
        return torch.stack([self.loss_sum, self.penalty_sum, torch.tensor(float(self.batches))])

    def to_state(self, device=None) -> dict:
        """Plain data; the running sums of every rank (each rank resumes its own)."""
        state = asdict(self)
        state["rank_sums"] = distributed.all_gather_rows(self.sums(), device)
        return state

    @classmethod
    def from_state(cls, state: dict, rank: int) -> Position:
        state = dict(state)
        loss, penalty, batches = state.pop("rank_sums")[rank]
        state.update(loss_sum=loss.clone(), penalty_sum=penalty.clone(), batches=int(batches))
        return cls(**state)


def history_state(history: History) -> dict:
    """The history as a checkpoint holds it."""
    state = history.to_dict()
    # one tensor instead of a list of lists: smaller and faster to save
    state["gate_probabilities"] = torch.tensor(history.gate_probabilities, dtype=torch.float32)
    return state


def history_from(state: dict) -> History:
    state = dict(state)
    state["gate_probabilities"] = state["gate_probabilities"].tolist()
    return History(**{f.name: state[f.name] for f in fields(History) if f.name in state})


#: the configuration of the run being trained (set by ``lumos fit``): stored in every
#: checkpoint and compared on resume, so a checkpoint of another configuration is refused
_RUN_CONFIG: ContextVar[dict | None] = ContextVar("lumos_run_config", default=None)


@contextlib.contextmanager
def run_config(config: dict | None) -> Iterator[None]:
    """Within this block, checkpoints record ``config`` (plain values) and a resume refuses a
    checkpoint recorded with a different one."""
    token = _RUN_CONFIG.set(dict(config) if config is not None else None)
    try:
        yield
    finally:
        _RUN_CONFIG.reset(token)


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, position: dict,
                     history: History, order: dict | None, run_shape: dict) -> dict:
    """Everything a checkpoint holds (``position`` as :meth:`Position.to_state` gives it)."""
    config = _RUN_CONFIG.get()
    return {
        **({"config": config} if config is not None else {}),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "position": position,
        "history": history_state(history),
        "rng": rng_state(),
        "order": order,
        "run": run_shape,
    }


#: what a checkpoint must agree on with the run that resumes it
RUN_SHAPE_KEYS = ("steps_per_epoch", "epochs", "world_size", "seed")


def restore_checkpoint(state: dict, model: nn.Module, optimizer, run_shape: dict, source,
                       rank: int, batches: EpochBatches) -> tuple[History, Position]:
    """Put a checkpoint back into the model, optimiser and RNGs; returns (history, position)."""
    where = "the latest checkpoint" if source is True else str(source)
    saved = state.get("run", {})
    for key in RUN_SHAPE_KEYS:
        if saved.get(key) != run_shape[key]:
            raise CheckpointError(
                f"{where} was written by a run with {key}={saved.get(key)}, this run has "
                f"{key}={run_shape[key]}; resume with the same epochs, batch size, seed and "
                "number of processes, or start a new run in another folder."
            )
    config, saved_config = _RUN_CONFIG.get(), state.get("config")
    if config is not None and isinstance(saved_config, dict):
        diff = sorted(k for k in config if config.get(k) != saved_config.get(k))
        if diff:
            shown = ", ".join(f"{k}={saved_config.get(k)!r} there, {config.get(k)!r} here"
                              for k in diff)
            raise CheckpointError(
                f"{where} was written with another configuration (differs in: {shown}); "
                "resume with the settings it was written with, or start a new run in another "
                "folder (--out DIR)."
            )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise CheckpointError(
            f"{where} does not fit this model or optimiser ({first}); it belongs to another "
            "model or configuration: resume with the same configuration, or start afresh."
        ) from None
    pos = Position.from_state(state["position"], rank)
    batches.restore(state.get("order"), pos.epoch, pos.batch)  # may draw: before the RNGs
    set_rng_state(state["rng"])
    return history_from(state["history"]), pos


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint recorded in ``checkpoint_dir`` (None if there is none)."""
    if not (Path(checkpoint_dir) / "index.json").exists():
        return None
    return CheckpointManager(checkpoint_dir).latest()
