"""Scoring a trained model: predictions over a whole data set, and metrics of them."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..modes import evaluating
from .batches import as_loader, batch_pair, call_model, to_device

#: ``metrics(predictions, targets) -> {name: value}``
Metrics = Callable[[Tensor, Tensor], dict[str, float]]


@torch.no_grad()
def predict(model: nn.Module, data, batch_size: int = 512, device=None) -> tuple[Tensor, Tensor]:
    """Concatenated predictions and targets over a loader (eval mode, no autograd)."""
    preds, targets = [], []
    with evaluating(model):
        for batch in as_loader(data, batch_size, shuffle=False):
            inputs, target = batch_pair(batch)
            preds.append(call_model(model, to_device(inputs, device)).cpu())
            targets.append(target)
    return torch.cat(preds), torch.cat(targets)


def evaluate(model: nn.Module, data, metrics: Metrics, device=None) -> dict[str, float]:
    """``metrics(predictions, targets)`` over a whole validation set."""
    pred, target = predict(model, data, device=device)
    return {k: float(v) for k, v in metrics(pred, target).items()}
