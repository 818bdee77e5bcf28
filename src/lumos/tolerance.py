"""Tolerance instead of budget: the smallest model whose validation metric stays within a
relative tolerance of the dense model's.

One training run walks the budget down: the first epochs train with every gate open (features
still judged), then each cut starts at a tighter budget (the weakest gates are shut, the rest
of the epoch lets the network adapt) and ends with a validation of the compactable model. The
smallest model inside the tolerance is kept; when a step falls outside, the walk returns to it
and continues with smaller steps, which grow again with every step that holds. The last epochs
fine-tune the best model. Every point of the
walk (kept fraction, metric, a bootstrap interval over the validation samples) is returned, so
the trade-off curve and how sure each decision was are visible.

How a cut is judged (``decide_on``), chosen by measurement (``docs/results/tolerance_rules.md``):

- ``"settled"`` (default): one epoch with the gates training at the new budget, then one with
  them frozen at that structure, and the decision on the validation after the second. With
  gate noise on, the model evaluated (deterministic gates) is not the one trained, and its
  metric swings from epoch to epoch by more than a 1% tolerance (conformer GCN: +-3% R^2,
  Burgers: +-30% rel. L2, while the same structures frozen vary by +-0.3% and +-10%); frozen,
  the weights fit the very structure judged, as in the final fine-tune.
- ``"last"``: one epoch per cut, judged right after it (the walk before this option).
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
from .schedules import Schedule
from .sparse_model import SparseModel
from .training import as_loader, make_optimizer, predict, train

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
    #: 90% bootstrap interval of ``metric`` over the validation samples (None: not computed)
    low: float | None = None
    high: float | None = None


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
    decide_on: str = "settled"

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "tolerance": self.tolerance,
            "decide_on": self.decide_on,
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
    decide_on: str = "settled",
    interval_rounds: int = 200,
    lr_schedule: Schedule | None = None,
    **sparsify_kwargs,
) -> ToleranceResult:
    """Train ``model`` with LUMOS and return the smallest version within ``tolerance``.

    ``reference`` is the dense model's validation metric; if None, a copy of ``model`` is
    first trained dense with the same recipe to measure it. ``metrics(pred, target)`` must
    contain ``primary``. ``floor`` is the smallest kept fraction the walk will try;
    ``patience`` the further tries a cut gets to recover before the walk steps back;
    ``decide_on`` how a cut is judged (``"settled"`` or ``"last"``, see the module docstring);
    ``interval_rounds`` the bootstrap resamples behind each point's interval (each calls
    ``metrics`` once; 0 skips the intervals); ``lr_schedule`` the learning-rate multiplier over
    the whole run (the dense reference is trained with it too), as in
    :func:`lumos.training.train`.
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
    if decide_on not in DECISION_RULES:
        raise ConfigurationError(
            f"decide_on must be one of {DECISION_RULES}, got {decide_on!r}: 'settled' judges "
            "a cut after an epoch with its gates frozen, 'last' right after the cut's epoch.")
    fit_kwargs = {"lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
                  "seed": seed, "progress": False, "lr_schedule": lr_schedule}
    if loss_fn is not None:
        fit_kwargs["loss_fn"] = loss_fn
    train_loader = as_loader(train_data, batch_size, shuffle=True, seed=seed)

    def scored(m: nn.Module) -> tuple[float, float | None, float | None]:
        pred, target = predict(m, val_data)
        values = metrics(pred, target)
        if primary not in values:
            raise ConfigurationError(
                f"metrics() returned {sorted(values)}, which lacks the primary metric "
                f"{primary!r}; pass primary= one of those."
            )
        if interval_rounds <= 0:
            return float(values[primary]), None, None
        return (float(values[primary]),
                *bootstrap_interval(pred, target, lambda p, t: metrics(p, t)[primary], seed,
                                    interval_rounds))

    def score(m: nn.Module) -> float:
        return scored(m)[0]

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
    per_cut = 2 if decide_on == "settled" and walking >= 2 else 1
    shrink = floor ** (1.0 / max(1, walking // per_cut))  # reaches the floor if every step holds
    boldest = shrink

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
        metric, low, high = scored(sm)
        point = WalkPoint(epoch, budget, sm.kept_fraction(), metric, False, phase,
                          seconds[0], low, high)
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

    def cut(epoch: int, budget: float) -> WalkPoint:
        """Train one cut and judge it (see ``decide_on``)."""
        run_epoch(epoch, budget)
        if per_cut == 1:
            return record(epoch, budget, "walk")
        record(epoch, budget, "cut")  # shown, not judged: gates were still training
        sm.gates.freeze(sm.kept_mask())  # the structure judged, its weights settling on it
        run_epoch(epoch + 1, budget)
        point = record(epoch + 1, budget, "walk")
        sm.gates.unfreeze()  # closed gates stay shut; the rest train on from here
        return point

    walked = warm + (walking // per_cut) * per_cut  # the first epoch after the walk
    for epoch in range(warm, walked, per_cut):
        point = cut(epoch, target)
        if point.within:
            if best is None or point.kept_fraction <= best.point.kept_fraction:
                best = _snapshot(sm, optimizer, point)
            held = 0
            shrink = max(boldest, shrink * shrink)  # it held: bolder again, up to the first
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
    for epoch in range(walked, epochs):
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
        gate_probabilities, decide_on,
    )


DECISION_RULES = ("settled", "last")


def bootstrap_interval(pred: Tensor, target: Tensor, metric: Callable[[Tensor, Tensor], float],
                       seed: int = 0, rounds: int = 200,
                       level: float = 0.9) -> tuple[float | None, float | None]:
    """The ``level`` percentile interval of ``metric`` over ``rounds`` resamples of the rows.

    How far a validation metric could move on another draw of the same number of samples:
    the tolerance walk shows it with every point it judges.

    Args:
        pred, target: predictions and targets, one row per sample.
        metric: ``metric(pred, target) -> float``.
        seed: seeds the resampling, so a rerun draws the same rows.
        rounds: resamples; level: the interval's coverage.

    Returns:
        ``(low, high)``, or ``(None, None)`` for fewer than 10 rows or a metric that a
        resample leaves undefined (not finite).

    Example:
        >>> import torch
        >>> from lumos.metrics import r2
        >>> target = torch.linspace(-1, 1, 200).unsqueeze(1)
        >>> low, high = bootstrap_interval(target + 0.1 * torch.sin(40 * target), target, r2)
        >>> 0.95 < low <= r2(target + 0.1 * torch.sin(40 * target), target) <= high < 1.0
        True
    """
    n = pred.shape[0]
    if n < 10:
        return None, None
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(rounds):
        rows = torch.randint(0, n, (n,), generator=generator)
        value = float(metric(pred[rows], target[rows]))
        if not math.isfinite(value):
            return None, None
        values.append(value)
    values.sort()
    tail = (1.0 - level) / 2
    return values[int(tail * (rounds - 1))], values[int(round((1 - tail) * (rounds - 1)))]


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
