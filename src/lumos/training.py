"""A plain training loop that works for dense models and SparseModels alike.

It is what the demo, the benchmarks and the CLI use, and what a user can copy: the only LUMOS
specifics are ``parameter_groups`` (gates get their own learning rate), ``penalty()`` added to
the loss, and ``set_progress`` so the budget schedule knows where training is.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from .errors import ConfigurationError, InputError
from .sparse_model import SparseModel

Metrics = Callable[[Tensor, Tensor], dict[str, float]]


@dataclass
class History:
    """Per-epoch record of a training run (plain lists, JSON-friendly via ``to_dict``)."""

    loss: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    kept_fraction: list[float] = field(default_factory=list)  # expected, from gate probabilities
    realized_fraction: list[float] = field(default_factory=list)  # what compaction would keep
    target: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    gate_probabilities: list[list[float]] = field(default_factory=list)  # if record_gates

    def to_dict(self) -> dict:
        return asdict(self)


def as_loader(data, batch_size: int = 128, shuffle: bool = True, seed: int = 0) -> DataLoader:
    """A DataLoader from a DataLoader (returned as is) or an ``(inputs, targets)`` tensor pair."""
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


def _call(model: nn.Module, inputs):
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


def _to(inputs, device):
    if device is None:
        return inputs
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(t.to(device) if isinstance(t, Tensor) else t for t in inputs)
    return inputs.to(device)


@torch.no_grad()
def predict(model: nn.Module, data, batch_size: int = 512, device=None) -> tuple[Tensor, Tensor]:
    """Concatenated predictions and targets over a loader (eval mode, no autograd)."""
    was_training = model.training
    model.eval()
    preds, targets = [], []
    try:
        for inputs, target in as_loader(data, batch_size, shuffle=False):
            preds.append(_call(model, _to(inputs, device)).cpu())
            targets.append(target)
    finally:
        model.train(was_training)
    return torch.cat(preds), torch.cat(targets)


def evaluate(model: nn.Module, data, metrics: Metrics, device=None) -> dict[str, float]:
    """``metrics(predictions, targets)`` over a whole validation set."""
    pred, target = predict(model, data, device=device)
    return {k: float(v) for k, v in metrics(pred, target).items()}


def _progress(total: int, enabled: bool | None, desc: str):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, leave=False)


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
    val_data=None,
    metrics: Metrics | None = None,
    on_epoch: Callable[[int, History], bool | None] | None = None,
    record_gates: bool = False,
    grad_clip: float | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> History:
    """Train ``model`` (dense or :class:`SparseModel`) with Adam for ``epochs`` epochs.

    ``val_data`` with ``metrics`` are evaluated after every epoch (``History.val``).
    ``on_epoch(epoch, history)`` may return True to stop early. Progress bars show on a TTY.
    """
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ConfigurationError(f"epochs must be a positive integer, got {epochs!r}.")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ConfigurationError(f"lr must be a positive number, got {lr!r}.")
    if val_data is not None and metrics is None:
        raise ConfigurationError("val_data needs metrics=fn(pred, target) -> dict to score it.")
    torch.manual_seed(seed)
    loader = as_loader(data, batch_size, True, seed)
    sparse = isinstance(model, SparseModel)
    if device is not None:
        model.to(device)
    if optimizer is None:
        optimizer = make_optimizer(model, lr, gate_lr, weight_decay)
    steps_per_epoch = len(loader)
    total_steps = max(1, epochs * steps_per_epoch)
    history = History()
    step = 0
    model.train()
    bar = _progress(total_steps, progress, type(model).__name__)
    try:
        for epoch in range(epochs):
            start = time.perf_counter()
            loss_sum = torch.zeros(())
            pen_sum = torch.zeros(())
            batches = 0
            for inputs, targets in loader:
                inputs, targets = _to(inputs, device), _to(targets, device)
                if sparse:
                    model.set_progress(step / total_steps)
                loss = loss_fn(_call(model, inputs), targets)
                total = loss
                if sparse:
                    pen = model.penalty()
                    total = loss + pen
                    pen_sum += pen.detach().cpu()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                loss_sum += loss.detach().cpu()
                batches += 1
                step += 1
                if bar is not None:
                    bar.update(1)
            history.epoch_seconds.append(time.perf_counter() - start)
            history.loss.append(float(loss_sum) / max(batches, 1))
            if not math.isfinite(history.loss[-1]):
                raise InputError(
                    f"training loss became {history.loss[-1]} in epoch {epoch}: lower lr, check "
                    "the targets for NaN/Inf, or standardise inputs and targets."
                )
            if sparse:
                if epoch == epochs - 1:
                    model.set_progress(1.0)
                _record_sparse(model, history, pen_sum / max(batches, 1), record_gates)
            if val_data is not None:
                history.val.append(evaluate(model, val_data, metrics, device))
                model.train()
            if bar is not None:
                bar.set_postfix(loss=f"{history.loss[-1]:.4g}")
            if on_epoch is not None and on_epoch(epoch, history):
                break
    finally:
        if bar is not None:
            bar.close()
    if sparse:
        model.set_progress(1.0)
    model.eval()
    return history


def make_optimizer(
    model: nn.Module, lr: float, gate_lr: float | None = None, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adam; for a SparseModel with the gates in their own group (see ``parameter_groups``)."""
    if isinstance(model, SparseModel):
        groups = model.parameter_groups(lr, gate_lr, weight_decay)
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    return torch.optim.Adam(groups, lr=lr)


@torch.no_grad()
def _record_sparse(sm: SparseModel, history: History, penalty: Tensor, gates: bool) -> None:
    history.penalty.append(float(penalty))
    history.kept_fraction.append(float(sm.expected_fraction()))
    history.realized_fraction.append(sm.compacted_counts()["params"] / max(sm.dense_params, 1))
    if sm.controller is not None:
        history.target.append(sm.controller.target())
    if gates:
        history.gate_probabilities.append(sm.gates.prob_nonzero().detach().cpu().tolist())
