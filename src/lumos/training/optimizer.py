"""The optimiser a training run uses: Adam, with a SparseModel's gates in their own group."""

from __future__ import annotations

import torch
from torch import nn

from ..sparse_model import SparseModel


def make_optimizer(
    model: nn.Module, lr: float, gate_lr: float | None = None, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adam; for a SparseModel with the gates in their own group (see ``parameter_groups``)."""
    if isinstance(model, SparseModel):
        groups = model.parameter_groups(lr, gate_lr, weight_decay)
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    return torch.optim.Adam(groups, lr=lr)
