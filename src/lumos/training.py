"""A plain training loop that works for dense models and SparseModels alike.

It is what the demo, the benchmarks and the CLI use, and what a user can copy: the only LUMOS
specifics are ``parameter_groups`` (gates get their own learning rate), ``penalty()`` added to
the loss, and ``set_progress`` so the budget schedule knows where training is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from .errors import ConfigurationError, InputError
from .sparse_model import SparseModel


@dataclass
class History:
    """Per-epoch record of a training run."""

    loss: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    kept_fraction: list[float] = field(default_factory=list)
    target: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


def _loader(data, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
        isinstance(t, Tensor) for t in data
    ):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise InputError(
                f"inputs have {x.shape[0]} rows but targets have {y.shape[0]}; they must match."
            )
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=generator
        )
    raise ConfigurationError(
        "data must be a DataLoader yielding (inputs, targets) or a tuple (X, y) of tensors."
    )


def train(
    model: nn.Module,
    data,
    *,
    epochs: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
    lr: float = 1e-3,
    gate_lr: float | None = None,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    seed: int = 0,
    on_epoch: Callable[[int, History], None] | None = None,
) -> History:
    """Train ``model`` (dense or :class:`SparseModel`) with Adam for ``epochs`` epochs."""
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ConfigurationError(f"epochs must be a positive integer, got {epochs!r}.")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigurationError(f"lr must be a positive number, got {lr!r}.")
    torch.manual_seed(seed)
    loader = _loader(data, batch_size, True, seed)
    sparse = isinstance(model, SparseModel)
    if sparse:
        groups = model.parameter_groups(lr, gate_lr, weight_decay)
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    optimizer = torch.optim.Adam(groups, lr=lr)
    steps_per_epoch = len(loader)
    total_steps = max(1, epochs * steps_per_epoch)
    history = History()
    step = 0
    model.train()
    for epoch in range(epochs):
        start = time.perf_counter()
        loss_sum = torch.zeros(())
        pen_sum = torch.zeros(())
        batches = 0
        for inputs, targets in loader:
            if sparse:
                model.set_progress(step / total_steps)
            out = model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
            loss = loss_fn(out, targets)
            total = loss
            if sparse:
                pen = model.penalty()
                total = loss + pen
                pen_sum += pen.detach()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            loss_sum += loss.detach()
            batches += 1
            step += 1
        history.epoch_seconds.append(time.perf_counter() - start)
        history.loss.append(float(loss_sum) / max(batches, 1))
        if not math.isfinite(history.loss[-1]):
            raise InputError(
                f"training loss became {history.loss[-1]} in epoch {epoch}: lower lr, check "
                "the targets for NaN/Inf, or standardise inputs and targets."
            )
        if sparse:
            history.penalty.append(float(pen_sum) / max(batches, 1))
            history.kept_fraction.append(float(model.expected_fraction().detach()))
            if model.controller is not None:
                history.target.append(model.controller.target())
        if on_epoch is not None:
            on_epoch(epoch, history)
    if sparse:
        model.set_progress(1.0)
    model.eval()
    return history
