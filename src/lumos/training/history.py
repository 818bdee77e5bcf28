"""What a training run records, epoch by epoch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ..sparse_model import SparseModel


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


@torch.no_grad()
def record_sparse_epoch(sm: SparseModel, history: History, penalty: Tensor, gates: bool) -> None:
    """Append a SparseModel's end-of-epoch numbers: penalty, expected and realized kept
    fraction, the budget target and (with ``gates``) every gate's keep probability."""
    history.penalty.append(float(penalty))
    history.kept_fraction.append(float(sm.expected_fraction()))
    history.realized_fraction.append(sm.kept_fraction())
    if sm.controller is not None:
        history.target.append(sm.controller.target())
    if gates:
        history.gate_probabilities.append(sm.gates.prob_nonzero().detach().cpu().tolist())
