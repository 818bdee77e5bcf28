"""Check that a model compacts exactly: the tool LUMOS's own rule tests use, for your layers too.

:func:`assert_compacts_exactly` sparsifies a model (or takes a :class:`~lumos.SparseModel`),
puts its gates in several random states (closed, fractional and open gates mixed), compacts it
and checks what LUMOS promises: the compacted model computes what the gated model computes,
both are repeatable, and the cost model's parameter and FLOP counts are the compacted model's
real ones. Use it after registering a rule for a custom layer (``docs/custom_layers.md``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .errors import LumosWarning
from .measure import count_flops, count_params
from .modes import mode
from .pipeline import sparsify
from .sparse_model import SparseModel

__all__ = ["CompactionCheck", "GateState", "assert_compacts_exactly"]

#: log alpha of a gate that is clearly closed / clearly open at the deterministic gate
CLOSED_LOG_ALPHA = -10.0
OPEN_LOG_ALPHA = 10.0


@dataclass
class GateState:
    """One random gate state that was checked, and what it measured."""

    index: int
    closed: int  # gates set clearly closed
    fractional: int  # gates set strictly between 0 and 1
    open: int  # gates set clearly open
    removed: int  # channels compaction dropped (kept_mask False)
    max_abs_diff: float  # largest |gated - compacted| over every output and batch size
    params: int  # parameters of the compacted model
    flops: int | None  # its FLOPs on the example inputs (None if counts were not checked)


@dataclass
class CompactionCheck:
    """What :func:`assert_compacts_exactly` checked; ``sparse_model`` is ready to use."""

    sparse_model: SparseModel
    states: list[GateState] = field(default_factory=list)

    @property
    def rules_used(self) -> dict:
        """``{fx node name: RuleEntry}``: the registry entries that described the model."""
        return self.sparse_model.graph_info.rules_used


def assert_compacts_exactly(
    model: nn.Module | SparseModel,
    example_inputs,
    *,
    budget: float = 0.5,
    seed: int = 0,
    states: int = 3,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    batch_sizes: Sequence[int] | None = None,
    check_counts: bool = True,
    sparsify_kwargs: dict | None = None,
) -> CompactionCheck:
    """Assert that compaction of ``model`` is exact for random gate states.

    For each of ``states`` gate states (seeded; each mixes clearly closed, fractional and
    clearly open gates, at least one of each when there are three gates or more) the sparse
    model is compacted (``sm.eval().compact()``) and checked:

    - the eval outputs of the gated and the compacted model agree within
      ``|a - b| <= atol + rtol * |b|`` on ``example_inputs``, and on each of ``batch_sizes``
      (the example's tensors that share its batch size are cut or repeated along dim 0);
    - two eval calls of each give the same output;
    - ``check_counts``: the compacted model's parameter count and its FLOPs on
      ``example_inputs`` (:func:`lumos.count_params`, :func:`lumos.count_flops`) equal the cost
      model's ``sm.compacted_counts()``; with a plain ``model``, the dense counts also equal
      the model's own.

    At least one state must remove a channel, so the check cannot pass vacuously. Only the
    gates are changed: the weights are untouched, the gates of a given ``SparseModel`` are put
    back as they were, and every module keeps its train/eval mode.

    Args:
        model: an ``nn.Module`` to sparsify, or an existing :class:`~lumos.SparseModel`.
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs
            (as for :func:`lumos.sparsify`); the outputs may be tensors or (nested)
            tuples, lists and dicts of tensors.
        budget: passed to :func:`lumos.sparsify` (ignored for a ``SparseModel``).
        seed: seeds the random gate states (the global RNG is not touched).
        states: how many gate states to check (at least 1).
        atol, rtol: tolerance of the output comparison.
        batch_sizes: other batch sizes to compare the outputs at (None: only the example).
        check_counts: also check parameter and FLOP counts against the cost model.
        sparsify_kwargs: more keyword arguments for :func:`lumos.sparsify`.

    Returns:
        A :class:`CompactionCheck`: ``sparse_model`` (its gates as they were before the check)
        and one :class:`GateState` per state checked.

    Raises:
        AssertionError: the model has no gates; an output differs (the message names the
            state, the output and the max abs difference); an output is not repeatable; a
            count differs from the cost model's (both numbers); or no state removed anything.
        ValueError: ``states < 1``.

    Example:
        >>> import torch, lumos.testing
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 2))
        >>> check = lumos.testing.assert_compacts_exactly(net, torch.randn(5, 4),
        ...                                               batch_sizes=[1, 7])
        >>> len(check.states), check.sparse_model.gates.num_gates
        (3, 12)
    """
    if states < 1:
        raise ValueError(f"states must be at least 1, got {states}.")
    sm: SparseModel
    original: nn.Module | None
    if isinstance(model, SparseModel):
        sm = model
        original = None
    else:
        sm = sparsify(model, example_inputs, budget=budget, **(sparsify_kwargs or {}))
        original = model
    num_gates = sm.gates.num_gates
    if num_gates == 0:
        raise AssertionError(
            "the sparse model has no gates: every channel is kept whole, so there is nothing "
            f"to compact. What LUMOS reported:\n{sm.report()}"
        )
    check = CompactionCheck(sm)
    with contextlib.ExitStack() as stack:
        if original is not None:
            stack.enter_context(mode(original, training=False))
        stack.enter_context(mode(sm, training=False))
        stack.enter_context(_gates_restored(sm))
        if check_counts and original is not None:
            _check_dense_counts(sm, original, example_inputs)
        calls = [("the example inputs", example_inputs)]
        calls += [(f"batch size {n}", _with_batch_size(example_inputs, n))
                  for n in (batch_sizes or ())]
        for index in range(states):
            check.states.append(_check_state(sm, index, seed, calls, example_inputs, atol,
                                             rtol, check_counts))
    if not any(s.removed for s in check.states):
        raise AssertionError(
            f"none of the {states} gate states removed a channel (each closed gates, but "
            "compaction kept every channel), so the check would pass vacuously; use more "
            "states or a model whose gated groups can lose channels."
        )
    return check


# ---- one state ------------------------------------------------------------------------------
def _check_state(sm: SparseModel, index: int, seed: int, calls: list, example_inputs,
                 atol: float, rtol: float, check_counts: bool) -> GateState:
    closed, fractional, opened = _set_random_state(sm, index, seed)
    name = f"gate state {index} ({closed} closed, {fractional} fractional, {opened} open)"
    removed = int((~sm.kept_mask()).sum())
    with warnings.catch_warnings():
        # the states are random: an input whose every feature closed is expected here
        warnings.simplefilter("ignore", LumosWarning)
        try:
            small = sm.compact(verify=False)  # checked below, more thoroughly
        except Exception as exc:
            raise AssertionError(f"{name}: compaction raised {type(exc).__name__}: {exc}") from exc
    worst = 0.0
    with torch.no_grad():
        for label, inputs in calls:
            gated = _call(sm, inputs)
            again = _call(sm, inputs)
            _assert_same(gated, again, f"{name}: the gated model's eval output on {label} "
                                       "differs between two calls")
            try:
                compacted = _call(small, inputs)
            except Exception as exc:
                raise AssertionError(
                    f"{name}: the compacted model fails on {label}: {type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                ) from exc
            again = _call(small, inputs)
            _assert_same(compacted, again, f"{name}: the compacted model's eval output on "
                                           f"{label} differs between two calls")
            try:
                worst = max(worst, _assert_close(compacted, gated, atol, rtol,
                                                 f"{name}, {label}"))
            except AssertionError as exc:
                raise AssertionError(f"{exc}{_where_they_part(sm)}") from None
    params = count_params(small)
    flops = None
    if check_counts:
        predicted = sm.compacted_counts()
        flops = count_flops(small, example_inputs)
        for kind, actual in (("params", params), ("flops", flops)):
            if abs(actual - predicted[kind]) > 0.5:
                raise AssertionError(
                    f"{name}: the compacted model has {actual} {_KIND[kind]} but the cost model "
                    f"predicted {predicted[kind]:g} (difference {actual - predicted[kind]:g})"
                )
    return GateState(index, closed, fractional, opened, removed, worst, params, flops)


_KIND = {"params": "parameters", "flops": "FLOPs on the example inputs"}


def _where_they_part(sm: SparseModel) -> str:
    """What compaction's own check says about the example inputs (the first node that
    differs), to help find the rule at fault."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LumosWarning)
            sm.compact(verify=True)
    except Exception as exc:  # CompactionError, or whatever compaction raised
        return f"; compaction's own check: {exc}"
    return ""


def _set_random_state(sm: SparseModel, index: int, seed: int) -> tuple[int, int, int]:
    """Closed / fractional / open gates in random proportions (seeded by seed and index)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    n = sm.gates.num_gates
    weights = -torch.log(torch.rand(3, generator=gen, dtype=torch.float64))  # Dirichlet(1,1,1)
    kind = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=gen)
    perm = torch.randperm(n, generator=gen)
    for k in range(min(3, n)):  # at least one closed, one fractional, one open gate
        kind[perm[k]] = k
    cfg = sm.gates.cfg
    # fractional: a deterministic gate value z in [0.05, 0.95], inverted through the gate
    z = 0.05 + 0.9 * torch.rand(n, generator=gen, dtype=torch.float64)
    s = (z - cfg.gamma) / (cfg.zeta - cfg.gamma)
    fractional = cfg.beta * torch.log(s / (1.0 - s))
    la = torch.where(kind == 0, torch.full_like(z, CLOSED_LOG_ALPHA),
                     torch.where(kind == 1, fractional, torch.full_like(z, OPEN_LOG_ALPHA)))
    with torch.no_grad():
        sm.gates.log_alpha.copy_(la.to(sm.gates.log_alpha))
    return tuple(int((kind == k).sum()) for k in range(3))  # type: ignore[return-value]


@contextlib.contextmanager
def _gates_restored(sm: SparseModel) -> Iterator[None]:
    """Open the gates to any state for the block (unfrozen, none shut); restore them after."""
    gates = sm.gates
    saved = (gates.log_alpha.detach().clone(), gates.shut.clone(), gates.frozen,
             gates.frozen_values.clone(), sm._realized)
    gates.frozen = False
    gates.shut.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            gates.log_alpha.copy_(saved[0])
        gates.shut.copy_(saved[1])
        gates.frozen = saved[2]
        gates.frozen_values = saved[3]
        sm._realized = saved[4]


def _check_dense_counts(sm: SparseModel, model: nn.Module, example_inputs) -> None:
    for kind, dense, actual in (
        ("params", sm.dense_params, count_params(model)),
        ("flops", sm.dense_flops, count_flops(model, example_inputs)),
    ):
        if abs(actual - dense) > 0.5:
            raise AssertionError(
                f"the original model has {actual} {_KIND[kind]} but the cost model's dense "
                f"total is {dense:g}"
            )


# ---- calls and outputs ----------------------------------------------------------------------
def _call(module: nn.Module, inputs):
    if isinstance(inputs, dict):
        return module(**inputs)
    if isinstance(inputs, (tuple, list)):
        return module(*inputs)
    return module(inputs)


def _batch_size(inputs) -> int | None:
    for value in _leaves(inputs):
        if isinstance(value, Tensor) and value.dim() >= 1:
            return int(value.shape[0])
    return None


def _with_batch_size(inputs, n: int):
    """The example with every tensor of its batch size cut or repeated to ``n`` rows."""
    batch = _batch_size(inputs)
    if batch is None or batch == 0:
        raise ValueError("batch_sizes needs example inputs with a batch dim (dim 0 of a tensor).")
    index = torch.arange(n) % batch

    def resize(value):
        if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == batch:
            return value.index_select(0, index.to(value.device))
        if isinstance(value, dict):
            return {k: resize(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return type(value)(resize(v) for v in value)
        return value

    return resize(inputs)


def _leaves(value, path: str = "output") -> Iterator:
    yield from (leaf for _, leaf in _flatten(value, path))


def _flatten(value, path: str = "output") -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [item for k in value for item in _flatten(value[k], f"{path}[{k!r}]")]
    if isinstance(value, (tuple, list)):
        return [item for i, v in enumerate(value) for item in _flatten(v, f"{path}[{i}]")]
    return [(path, value)]


def _pairs(actual, expected, what: str) -> list[tuple[str, object, object]]:
    a, e = _flatten(actual), _flatten(expected)
    if [p for p, _ in a] != [p for p, _ in e]:
        raise AssertionError(f"{what}: the outputs have different structures: "
                             f"{[p for p, _ in a]} vs {[p for p, _ in e]}")
    return [(p, x, y) for (p, x), (_, y) in zip(a, e)]


def _assert_same(actual, expected, what: str) -> None:
    for path, x, y in _pairs(actual, expected, what):
        if isinstance(x, Tensor) and isinstance(y, Tensor):
            if x.shape != y.shape or not torch.equal(x, y):
                diff = _max_diff(x, y) if x.shape == y.shape else math.inf
                raise AssertionError(f"{what} ({path}; max abs difference {diff:g})")
        elif x != y:
            raise AssertionError(f"{what} ({path}: {x!r} vs {y!r})")


def _assert_close(actual, expected, atol: float, rtol: float, what: str) -> float:
    worst = 0.0
    for path, x, y in _pairs(actual, expected, what):
        if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
            if x != y:
                raise AssertionError(f"{what}: {path} of the compacted model is {x!r}, of the "
                                     f"gated model {y!r}")
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            raise AssertionError(
                f"{what}: {path} of the compacted model has shape {tuple(x.shape)} "
                f"({x.dtype}), of the gated model {tuple(y.shape)} ({y.dtype})"
            )
        if x.numel() == 0:
            continue
        xd, yd = _wide(x), _wide(y)
        diff = _max_diff(x, y)
        worst = max(worst, diff)
        ok = (torch.isnan(xd) & torch.isnan(yd)) | (xd == yd) | (
            (xd - yd).abs() <= atol + rtol * yd.abs())
        if not bool(ok.all()):
            raise AssertionError(
                f"{what}: {path} of the compacted model differs from the gated model's eval "
                f"output: max abs difference {diff:g} ({int((~ok).sum())} of {x.numel()} "
                f"elements outside atol={atol:g}, rtol={rtol:g})"
            )
    return worst


def _wide(x: Tensor) -> Tensor:
    return x.to(torch.complex128) if x.is_complex() else x.to(torch.float64)


def _max_diff(x: Tensor, y: Tensor) -> float:
    """Largest |x - y| (0 where both are NaN, inf where only one is)."""
    if x.numel() == 0:
        return 0.0
    xd, yd = _wide(x), _wide(y)
    d = (xd - yd).abs().real
    d = torch.where(xd == yd, torch.zeros_like(d), d)  # equal infinities
    d = torch.where(torch.isnan(xd) & torch.isnan(yd), torch.zeros_like(d), d)
    return float(torch.nan_to_num(d, nan=math.inf).max())
