"""Tolerance instead of budget: the smallest model whose validation metric stays within a
relative tolerance of the dense model's.

One training run walks the budget down: the first epochs train with every gate open (features
still judged), then each epoch starts at a tighter budget (the weakest gates are shut, the rest
of the epoch lets the network adapt) and ends with a validation of the compactable model. The
smallest model inside the tolerance is kept; when a step falls outside, the walk returns to it
and continues with smaller steps. The last epochs fine-tune the best model. Every point of the
walk (kept fraction, metric) is returned, so the trade-off curve is visible.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .errors import ConfigurationError
from .options import GateOptions
from .pipeline import sparsify
from .sparse_model import SparseModel
from .training import as_loader, evaluate, make_optimizer, train

Metrics = Callable[[Tensor, Tensor], dict[str, float]]


@dataclass
class WalkPoint:
    epoch: int
    budget: float
    kept_fraction: float
    metric: float
    within: bool
    phase: str
    train_seconds: float = 0.0  # the epoch's training time (without the validation)


@dataclass
class ToleranceResult:
    """What :func:`fit_within_tolerance` found; ``model`` is the trained SparseModel."""

    model: SparseModel
    reference: float
    tolerance: float
    metric: float
    kept_fraction: float
    within: bool
    walk: list[WalkPoint] = field(default_factory=list)
    #: every gate's probability of being open after each epoch of the walk (for gates.png)
    gate_probabilities: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "tolerance": self.tolerance,
            "metric": self.metric,
            "kept_fraction": self.kept_fraction,
            "within": self.within,
            "walk": [asdict(p) for p in self.walk],
        }


def within_tolerance(metric: float, reference: float, tolerance: float,
                     higher_is_better: bool) -> bool:
    """Is ``metric`` no worse than ``reference`` by more than ``tolerance`` (relative)?"""
    slack = tolerance * abs(reference)
    return metric >= reference - slack if higher_is_better else metric <= reference + slack


def fit_within_tolerance(
    model: nn.Module,
    example_inputs,
    train_data,
    val_data,
    *,
    metrics: Metrics,
    primary: str,
    higher_is_better: bool,
    epochs: int,
    tolerance: float = 0.01,
    reference: float | None = None,
    floor: float = 0.02,
    warm_fraction: float = 0.25,
    finetune_fraction: float = 0.15,
    patience: int = 1,
    loss_fn=None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    seed: int = 0,
    on_epoch: Callable[[WalkPoint], None] | None = None,
    **sparsify_kwargs,
) -> ToleranceResult:
    """Train ``model`` with LUMOS and return the smallest version within ``tolerance``.

    ``reference`` is the dense model's validation metric; if None, a copy of ``model`` is
    first trained dense with the same recipe to measure it. ``metrics(pred, target)`` must
    contain ``primary``. ``floor`` is the smallest kept fraction the walk will try;
    ``patience`` the epochs a cut may take to recover before the walk steps back.
    """
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
        raise ConfigurationError(
            f"tolerance must be a relative fraction in [0, 1), got {tolerance!r}; e.g. 0.01 "
            "keeps the metric within 1% of the dense model's."
        )
    if not (isinstance(epochs, int) and epochs >= 3):
        raise ConfigurationError(f"tolerance mode needs at least 3 epochs, got {epochs!r}.")
    if not 0 < floor < 1:
        raise ConfigurationError(f"floor must lie in (0, 1), got {floor!r}.")
    fit_kwargs = {"lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
                  "seed": seed, "progress": False}
    if loss_fn is not None:
        fit_kwargs["loss_fn"] = loss_fn
    train_loader = as_loader(train_data, batch_size, shuffle=True, seed=seed)

    def score(m: nn.Module) -> float:
        values = evaluate(m, val_data, metrics)
        if primary not in values:
            raise ConfigurationError(
                f"metrics() returned {sorted(values)}, which lacks the primary metric "
                f"{primary!r}; pass primary= one of those."
            )
        return float(values[primary])

    if reference is None:
        dense = copy.deepcopy(model)
        train(dense, train_loader, epochs=epochs, **fit_kwargs)
        reference = score(dense)
    if not math.isfinite(reference):
        raise ConfigurationError(f"the dense reference metric is {reference}; cannot compare.")

    # the walk decides when gates freeze (its fine-tune phase), not the progress schedule
    options = sparsify_kwargs.pop("gates", None) or GateOptions()
    sm = sparsify(model, example_inputs, budget=1.0,
                  gates=dataclasses.replace(options, finetune=0.0), **sparsify_kwargs)
    controller = sm.controller
    controller.warmup = 1e-9  # the walk sets the target itself, epoch by epoch
    controller.settle = math.inf  # and shuts gates itself (enforce_budget)
    optimizer = make_optimizer(sm, lr, None, weight_decay)
    warm = max(1, round(warm_fraction * epochs))
    finetune = max(1, round(finetune_fraction * epochs))
    walking = max(1, epochs - warm - finetune)
    shrink = floor ** (1.0 / walking)  # reaches the floor if every step holds

    seconds = [0.0]

    def run_epoch(epoch: int, budget: float) -> None:
        controller.budget = budget
        sm.enforce_budget(budget)
        history = train(sm, train_loader, epochs=1, optimizer=optimizer,
                        progress_range=(epoch / epochs, (epoch + 1) / epochs), **fit_kwargs)
        seconds[0] = history.epoch_seconds[-1]

    walk: list[WalkPoint] = []
    gate_probabilities: list[list[float]] = []

    def record(epoch: int, budget: float, phase: str) -> WalkPoint:
        point = WalkPoint(epoch, budget, sm.kept_fraction(), score(sm), False, phase,
                          seconds[0])
        point.within = within_tolerance(point.metric, reference, tolerance, higher_is_better)
        walk.append(point)
        gate_probabilities.append(sm.gates.prob_nonzero().detach().cpu().tolist())
        if on_epoch is not None:
            on_epoch(point)
        return point

    for epoch in range(warm):
        run_epoch(epoch, 1.0)
        record(epoch, 1.0, "warm")
    best = _snapshot(sm, optimizer, walk[-1]) if walk[-1].within else None
    target = max(floor, walk[-1].kept_fraction * shrink)
    held = 0
    for epoch in range(warm, warm + walking):
        run_epoch(epoch, target)
        point = record(epoch, target, "walk")
        if point.within:
            if best is None or point.kept_fraction <= best.point.kept_fraction:
                best = _snapshot(sm, optimizer, point)
            held = 0
            target = max(floor, point.kept_fraction * shrink)  # the next cut
        else:
            held += 1  # recover at this budget for up to `patience` more epochs
            if held > patience and best is not None:  # too far: back to the best model
                best.restore(sm, optimizer)
                shrink = math.sqrt(shrink)  # and smaller steps from there
                target = max(floor, best.point.kept_fraction * shrink)
                held = 0
    if best is not None:
        best.restore(sm, optimizer)
    final_budget = best.point.kept_fraction if best is not None else target
    if options.finetune > 0:  # freeze the best structure and fine-tune the surviving weights
        sm.enforce_budget(final_budget)
        sm.gates.freeze(sm.kept_mask())
    for epoch in range(warm + walking, epochs):
        run_epoch(epoch, final_budget)
        point = record(epoch, final_budget, "finetune")
        if best is None or (point.within and point.kept_fraction <= best.point.kept_fraction):
            best = _snapshot(sm, optimizer, point)
    if best is not None:
        best.restore(sm, optimizer)
    controller.settled = True  # the walk enforced its budgets: compact() has nothing to add
    sm.eval()
    metric = score(sm)
    fraction = sm.kept_fraction()
    return ToleranceResult(
        sm, reference, tolerance, metric, fraction,
        within_tolerance(metric, reference, tolerance, higher_is_better), walk,
        gate_probabilities,
    )


@dataclass
class _Snapshot:
    point: WalkPoint
    model_state: dict
    optimizer_state: dict
    extra: dict

    def restore(self, sm: SparseModel, optimizer: torch.optim.Optimizer) -> None:
        sm.load_state_dict(self.model_state)
        optimizer.load_state_dict(self.optimizer_state)
        sm.gates.set_extra_state(self.extra)


def _snapshot(sm: SparseModel, optimizer: torch.optim.Optimizer, point: WalkPoint) -> _Snapshot:
    return _Snapshot(point, copy.deepcopy(sm.state_dict()), copy.deepcopy(optimizer.state_dict()),
                     sm.gates.get_extra_state())
