"""Tolerance instead of budget: the smallest model whose validation metric stays within a
relative tolerance of the dense model's.

One training run walks the budget down: the first epochs train with every gate open (features
still judged), then each cut starts at a tighter budget (the weakest gates are shut, the rest
of the epoch lets the network adapt) and ends with a validation of the compactable model. The
smallest model inside the tolerance is kept; when a step falls outside, the walk returns to it
and continues with smaller steps, which grow again with every step that holds. When no step has
held yet, a paced or matched walk (``compare_to``) returns to the structure the warm epochs left
(the weights trained so far stay), so a walk that cannot cut ends at the largest model rather
than at its first miss (a final walk cannot tell a miss from an unfinished recipe and stays
where it stands); when the next step could only repeat a size that already failed (coarse
units: a GAT's heads), or two cuts failed with none held (``GIVE_UP_AFTER``: each leaves its mark
on the weights), the walk ends and the remaining epochs train the best model. The last
epochs fine-tune the best model. If that model still ends outside the tolerance, the dense
model is the answer (``dense``; the walk trains one itself when no ``reference`` is given),
without the input features the walk dropped if it stays within so: the smallest model within
the tolerance is then the dense one, not one worse than allowed.
Every point of the walk (kept fraction, metric, the reference
it was judged against, a bootstrap interval over the validation samples) is returned, so the
trade-off curve and how sure each decision was are visible.

What a cut is compared with (``compare_to``), chosen by measurement
(``docs/results/tolerance_rules.md``). Some use the dense model's validation curve, which the
walk records itself when no ``reference`` is given; its "pace" at an epoch is its best metric
up to that epoch, never stricter than the finished dense model.

- ``"final"``: a cut holds when it is within the tolerance of the finished dense model, else
  it misses. In the middle of an annealed recipe a cut must then already match a model trained
  to the end (Burgers: the walk idled at 91% kept from epoch 38 to 117 of 150), and without a
  cut that held, the walk cannot tell a miss from an unfinished recipe, so it never steps back.
- ``"paced"`` (default): a cut holds against the finished model as under ``"final"``, but
  misses only when it falls outside the tolerance of the dense model's pace; in between, it
  keeps pace and trains on at its structure. The walk steps back (to the warm structure if
  nothing held yet) on real misses only, and does not wait out a cut that has fallen behind.
- ``"matched"``: holds and misses both against the pace. A small model that keeps pace in
  mid-training can fall behind as the learning rate anneals: on Burgers the matched walk kept
  47% and ended 64% worse than dense.

The final result is judged against the finished dense model under every rule.

How a cut is judged (``decide_on``), chosen by measurement (``docs/results/tolerance_rules.md``):

- ``"settled"`` (default): one epoch with the gates training at the new budget, then one with
  them frozen at that structure, and the decision on the validation after the second. With
  gate noise on, the model evaluated (deterministic gates) is not the one trained, and its
  metric swings from epoch to epoch by more than a 1% tolerance (conformer GCN: +-3% R^2,
  Burgers: +-30% rel. L2, while the same structures frozen vary by +-0.3% and +-10%); frozen,
  the weights fit the very structure judged, as in the final fine-tune.
- ``"last"``: one epoch per cut, judged right after it (the walk before this option).

For models whose weights train behind their dense selves through gate noise, the walk can
split its steps (``gates=GateOptions(gate_step_every=4)``): one optimiser step in four draws
gate noise and trains weights and gates, the other three run the deterministic gates, the
network every cut is judged on, and train the weights alone. With noise on every step the
Darcy FNO missed every cut (1.7% behind dense with every unit kept); split, the walk kept 80%
at +1.5%. Over
the whole suite it is not the better default (``docs/results/ablation_split/
tolerance_rules.md``): the Burgers transformer kept everything instead of 84%, and feature
gates learning on a quarter of the steps dropped fewer noise inputs. Weights that never see
noise (the noisy steps training the gates alone) kept Darcy's warm epochs on the dense pace,
yet every cut missed by 5-25%: the noise is what teaches the weights to bear a unit's loss.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .copying import copy_model
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
    #: the dense metric ``within`` was judged against (see ``compare_to``)
    reference: float | None = None
    #: the dense model's pace at this epoch, below which a cut misses (None: the reference)
    pace: float | None = None


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
    compare_to: str = "final"
    #: "walk" (the model the walk trained) or "dense" (no model the walk trained was within
    #: the tolerance, so the dense model is returned, every gate fixed open; see ``dense``)
    returned: str = "walk"

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "returned": self.returned,
            "tolerance": self.tolerance,
            "decide_on": self.decide_on,
            "compare_to": self.compare_to,
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
    reference: float | Sequence[float] | None = None,
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
    compare_to: str = "paced",
    interval_rounds: int = 200,
    lr_schedule: Schedule | None = None,
    dense: nn.Module | None = None,
    **sparsify_kwargs,
) -> ToleranceResult:
    """Train ``model`` with LUMOS and return the smallest version within ``tolerance``.

    ``reference`` is the dense model's validation metric: one number (the finished model) or
    its curve, one value per epoch of the same recipe on ``val_data``; if None, a copy of
    ``model`` is first trained dense with the same recipe and its curve recorded.
    ``compare_to`` says what each cut is judged against (``"final"``, ``"paced"`` or
    ``"matched"``, see the module docstring); with a single number, every rule is ``"final"``.
    ``metrics(pred, target)`` must contain ``primary``.
    ``floor`` is the smallest kept fraction the walk will try;
    ``patience`` the further tries a cut gets to recover before the walk steps back;
    ``decide_on`` how a cut is judged (``"settled"`` or ``"last"``, see the module docstring);
    ``interval_rounds`` the bootstrap resamples behind each point's interval (each calls
    ``metrics`` once; 0 skips the intervals); ``lr_schedule`` the learning-rate multiplier over
    the whole run (the dense reference is trained with it too), as in
    :func:`lumos.training.train`.

    ``dense`` is the dense model trained with the same recipe, if you have one (the one
    ``reference`` describes; without a ``reference`` its metric on ``val_data`` is the single
    number judged against). When no model the walk trained ends within the tolerance, the
    answer is the dense model itself: a SparseModel of a copy of ``dense`` with every gate
    fixed open (it computes what ``dense`` computes, and compacts to its size), less the input
    features the walk dropped where that scores within the tolerance too, marked
    ``returned="dense"`` and shown as the walk's last point. Without a ``reference`` the walk
    trains that dense model itself, so the fallback is always there; with a ``reference``
    and no ``dense``, a walk that ends outside returns its own model (``within`` False).
    ``dense`` is copied, never changed.
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
    if compare_to not in COMPARISONS:
        raise ConfigurationError(
            f"compare_to must be one of {COMPARISONS}, got {compare_to!r}: 'final' judges a "
            "cut against the finished dense model, 'paced' also lets it train on while it "
            "keeps pace with the dense model at the same epoch, 'matched' judges it against "
            "that pace alone.")
    if decide_on not in DECISION_RULES:
        raise ConfigurationError(
            f"decide_on must be one of {DECISION_RULES}, got {decide_on!r}: 'settled' judges "
            "a cut after an epoch with its gates frozen, 'last' right after the cut's epoch.")
    if dense is not None and not isinstance(dense, nn.Module):
        raise ConfigurationError(
            f"dense must be the trained dense nn.Module (the fallback when no smaller model is "
            f"within the tolerance), got {type(dense).__name__}; pass the model or leave it "
            "out.")
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

    if reference is None and dense is not None:
        reference = score(dense)
    if reference is None:
        dense = copy_model(model)
        history = train(dense, train_loader, epochs=epochs, val_data=val_data,
                        metrics=metrics, **fit_kwargs)
        reference = [float(values.get(primary, math.nan)) for values in history.val]
        reference[-1] = score(dense)  # checks that metrics() gives the primary metric
    rule = compare_to if _is_curve(reference) else "final"
    pace = _pace(reference, epochs, higher_is_better)
    final_reference = pace[-1]
    holds_against = pace if rule == "matched" else [final_reference] * epochs
    misses_against = holds_against if rule != "paced" else pace

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
                          seconds[0], low, high, holds_against[epoch],
                          misses_against[epoch] if rule == "paced" else None)
        point.within = within_tolerance(point.metric, holds_against[epoch], tolerance,
                                        higher_is_better)
        walk.append(point)
        gate_probabilities.append(sm.gates.prob_nonzero().detach().cpu().tolist())
        if on_epoch is not None:
            on_epoch(point)
        return point

    for epoch in range(warm):
        run_epoch(epoch, 1.0)
        record(epoch, 1.0, "warm")
    best = _snapshot(sm, optimizer, walk[-1]) if walk[-1].within else None
    # where the walk returns when no cut has held: the warm structure, not the warm weights
    anchor, anchor_kept = copy.deepcopy(sm.gates.state_dict()), walk[-1].kept_fraction
    target = max(floor, walk[-1].kept_fraction * shrink)
    held = 0
    failed: set[tuple[int, ...]] = set()  # structures judged outside after their recovery

    def go_back() -> float:
        """Back to the best model, or to the warm structure; returns its kept fraction."""
        if best is not None:
            best.restore(sm, optimizer)
            return best.point.kept_fraction
        _reopen(sm, anchor)
        return anchor_kept

    def step_back() -> bool:
        """Go back and aim a smaller step from there; False (and back) when that step could
        only repeat a structure that failed, or cut nothing."""
        nonlocal shrink, target
        base = go_back()
        shrink = math.sqrt(shrink)
        target = max(floor, base * shrink)
        before = _units_kept(sm)
        sm.enforce_budget(target)
        reached = _units_kept(sm)
        if reached in failed or reached == before:
            go_back()
            return False
        return True

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
            if _improves(point, best, higher_is_better):
                best = _snapshot(sm, optimizer, point)
            held = 0
            shrink = max(boldest, shrink * shrink)  # it held: bolder again, up to the first
            target = max(floor, point.kept_fraction * shrink)  # the next cut
        elif not within_tolerance(point.metric, misses_against[point.epoch], tolerance,
                                  higher_is_better):
            held += 1  # recover at this budget for up to `patience` more epochs
            # too far: back, and smaller steps from there (a "final" walk without a model
            # that held cannot tell a miss from an unfinished recipe, and trains on)
            if held > patience and (best is not None or rule != "final"):
                failed.add(_units_kept(sm))
                held = 0
                # nothing new to try, or every cut so far failed (each left its mark on the
                # weights: units reopen with the weights they had when shut): the rest trains
                # the best model, or the warm structure
                if (best is None and len(failed) >= GIVE_UP_AFTER) or not step_back():
                    walked = epoch + per_cut
                    break
        else:  # not there yet but keeping the dense model's pace: it trains on as it is,
            held = 0  # and only misses in a row (noise aside) send the walk back
    if best is not None:
        best.restore(sm, optimizer)
    elif rule != "final":  # no cut held: the largest model, with the weights trained since
        _reopen(sm, anchor)  # (a final walk never stepped back; reopening units shut for
        # most of the run left Darcy 33% behind dense after a fine-tune epoch, 8.5% unopened)
    final_budget = best.point.kept_fraction if best is not None else sm.kept_fraction()
    if options.finetune > 0:  # freeze the best structure and fine-tune the surviving weights
        sm.enforce_budget(final_budget)
        sm.gates.freeze(sm.kept_mask())
    for epoch in range(walked, epochs):
        run_epoch(epoch, final_budget)
        point = record(epoch, final_budget, "finetune")
        if point.within and _improves(point, best, higher_is_better):
            best = _snapshot(sm, optimizer, point)
    if best is not None:  # else nothing was within: the model as fine-tuned to the end
        best.restore(sm, optimizer)
    controller.settled = True  # the walk enforced its budgets: compact() has nothing to add
    sm.eval()
    metric = score(sm)
    within = within_tolerance(metric, final_reference, tolerance, higher_is_better)
    returned = "walk"
    if not within and dense is not None:  # no smaller model is within: the dense one is,
        # without the inputs the walk dropped if it stays within so, else whole
        dropped = sm.feature_mask & ~sm.kept_mask()
        for closed in ([dropped, None] if bool(dropped.any()) else [None]):
            answer = _gates_open(dense, example_inputs, options, sparsify_kwargs, closed)
            if answer is None:
                continue
            sm, seconds[0] = answer, 0.0
            point = record(epochs - 1, sm.kept_fraction(), "dense")
            metric, within, returned = point.metric, point.within, "dense"
            if within:
                break
    return ToleranceResult(
        sm, final_reference, tolerance, metric, sm.kept_fraction(), within, walk,
        gate_probabilities, decide_on, rule, returned,
    )


def _gates_open(dense: nn.Module, example_inputs, options: GateOptions,
                sparsify_kwargs: dict, closed: Tensor | None = None) -> SparseModel | None:
    """A SparseModel of a copy of ``dense`` with every gate fixed at exactly 1, those in
    ``closed`` (a mask over the walk's gates) at 0: the dense model, in the form a tolerance
    walk returns (it compacts to the dense size, less the closed units). None when
    ``closed`` does not fit its gates (the dense model is not the walk's architecture)."""
    sm = sparsify(copy_model(dense), example_inputs, budget=1.0,
                  gates=dataclasses.replace(options, finetune=0.0), **sparsify_kwargs)
    if closed is not None and closed.shape != sm.gates.shut.shape:
        return None
    sm.gates.freeze_open(closed)
    sm.controller.settled = True
    sm.eval()
    return sm


#: failed cuts, with none held, after which the walk ends and trains the warm structure
GIVE_UP_AFTER = 2
DECISION_RULES = ("settled", "last")
COMPARISONS = ("final", "paced", "matched")


def _improves(point: WalkPoint, best: _Snapshot | None, higher_is_better: bool) -> bool:
    """A point within the tolerance beats the best so far when it is smaller, or the same size
    with a better metric: among the fine-tune epochs of one structure the last is not the best
    (CFD: R^2 0.9759, 0.9726 on the selection half; the later one was -1.1% on the report)."""
    if best is None:
        return True
    if not math.isclose(point.kept_fraction, best.point.kept_fraction, rel_tol=1e-9):
        return point.kept_fraction < best.point.kept_fraction
    return (point.metric > best.point.metric if higher_is_better
            else point.metric < best.point.metric)


def _is_curve(reference) -> bool:
    return not isinstance(reference, (int, float))


def _pace(reference: float | Sequence[float], epochs: int,
          higher_is_better: bool) -> list[float]:
    """The dense model's pace: per epoch its best metric so far, never stricter than its last
    (a noisy early peak of the dense curve must not set a bar its finished model misses). A
    single number is the finished model's metric at every epoch.
    """
    if not _is_curve(reference):
        values = [float(reference)] * epochs
    else:
        try:
            curve = [float(v) for v in reference]
        except (TypeError, ValueError) as error:
            raise ConfigurationError(
                f"reference must be a number or one number per epoch, got {reference!r} "
                f"({error}).") from None
        if len(curve) != epochs:
            raise ConfigurationError(
                f"reference has {len(curve)} values but the walk trains {epochs} epochs: pass "
                "the dense model's validation metric after each epoch of the same recipe, or "
                "the finished model's metric as one number.")
        final = curve[-1]
        if not math.isfinite(final):
            curve = [final]
        better = max if higher_is_better else min
        worse = min if higher_is_better else max
        values, so_far = [], math.nan
        for value in curve:  # an epoch whose metric was not finite keeps the bar where it was
            if math.isfinite(value):
                so_far = value if math.isnan(so_far) else better(so_far, value)
            values.append(final if math.isnan(so_far) else worse(so_far, final))
        values += [final] * (epochs - len(values))
    if not all(math.isfinite(v) for v in values):
        raise ConfigurationError(
            f"the dense reference metric is not finite ({values[-1]} at the end); cannot "
            "compare. Check the dense model's training and the metric.")
    return values


def _units_kept(sm: SparseModel) -> tuple[int, ...]:
    """The neuron/channel/head gates kept: the structure a cut tried (its kept fraction also
    moves with the features, which the walk does not cut)."""
    return tuple(torch.nonzero(sm.kept_mask() & ~sm.feature_mask).flatten().tolist())


def _reopen(sm: SparseModel, gates_state: dict) -> None:
    """Give ``sm`` back the unit gates of ``gates_state`` (open where they were open), keeping
    the weights and the feature gates: a walk that found no cut returns to the larger
    structure without discarding the epochs its weights, and the feature selection, have
    trained since."""
    features = sm.feature_mask
    log_alpha, shut = sm.gates.log_alpha.detach().clone(), sm.gates.shut.clone()
    sm.load_gate_state(gates_state)
    with torch.no_grad():
        sm.gates.log_alpha[features] = log_alpha[features]
        sm.gates.shut[features] = shut[features]
    sm.gates.unfreeze()


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
