"""Running under ``torchrun``: which process am I, and the few collectives training needs.

LUMOS uses PyTorch's own engine: :func:`init_from_env` joins the process group that
``torchrun`` describes in the environment (gloo on CPU, nccl on GPU), the training loop wraps
the model in ``DistributedDataParallel`` and shards batches with a ``DistributedSampler``.
Gate noise is drawn from a generator seeded by ``(noise_seed, draw)``, so every rank samples
the same gates in the same step and the budget controller sees the same numbers everywhere.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigurationError, LumosWarning


@dataclass(frozen=True)
class ProcessContext:
    """Where this process sits in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process job (``torchrun`` sets these)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def restart_count() -> int:
    """How many times ``torchrun --max-restarts`` has restarted this worker group."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def default_backend(device: torch.device | None = None) -> str:
    cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    return "nccl" if cuda else "gloo"


def init_from_env(backend: str | None = None, device: torch.device | None = None) -> ProcessContext:
    """Join the process group described by the environment, if there is one.

    Safe to call in a plain ``python`` process (returns rank 0 of 1) and more than once.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if not launched_by_torchrun():
        return ProcessContext()
    if not dist.is_available():  # pragma: no cover - every CPU/GPU wheel has it
        raise ConfigurationError(
            "WORLD_SIZE > 1 but this torch build has no torch.distributed; launch one process."
        )
    _warn_if_restarts_cannot_rejoin()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = backend or default_backend(device)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return current()


def _warn_if_restarts_cannot_rejoin() -> None:
    """torchrun shares its rendezvous store with the workers by default; after a restart the
    workers then read the previous attempt's addresses and cannot connect (pytorch#135712)."""
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if restarts > 0 and shared and int(os.environ.get("RANK", "0")) == 0:
        warnings.warn(
            "torchrun --max-restarts is set but the rendezvous store is shared with the "
            "workers, so a restarted group may fail to reconnect (pytorch/pytorch#135712). "
            "Launch with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in the environment.",
            LumosWarning,
            stacklevel=3,
        )


def current() -> ProcessContext:
    """The context of this process (rank 0 of 1 without an initialised process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return ProcessContext()
    return ProcessContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def device_for(ctx: ProcessContext, requested: str | torch.device | None) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` for ``"cuda"``/``"auto"`` on GPUs."""
    if requested is None or str(requested) == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(
                f"device {requested!r} asked for but CUDA is not available; use device: cpu."
            )
        if device.index is None:
            device = torch.device("cuda", ctx.local_rank if ctx.distributed else 0)
    return device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Sum a small tensor over all ranks (identity in a single process).

    ``device`` is where the collective runs (nccl needs GPU tensors); the result is on CPU.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.to(device or "cpu", copy=True)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = values.cpu()
    return values


def all_gather_rows(values: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """``values`` of every rank stacked along a new first dim (``[values]`` in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        local = values.to(device or "cpu", copy=True)
        rows = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, local)
        return torch.stack(rows).cpu()
    return values.unsqueeze(0).clone()


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (identity in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
