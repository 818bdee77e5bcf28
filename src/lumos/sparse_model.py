"""``lumos.sparsify``: wrap any traceable model with gates on its channel groups."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from . import topology
from .controller import BudgetController
from .cost import CostModel
from .errors import ConfigurationError, InputError, LumosWarning, UntraceableModelError
from .gates import (
    GateBank,
    HardConcreteConfig,
    fully_open_keep_probability,
    log_alpha_for_keep_probability,
)
from .schedules import Schedule
from .topology import registry
from .topology.analysis import ChannelGraph

#: default strength of the feature-selection pressure (see ``sparsify``): on 13 closed-form
#: laws x 2 budgets x 2 seeds with 12 noise columns, 0.07 closed every noise column and kept
#: every true variable (0.05 kept a noise column once, 0.1 lost a weak true variable once).
DEFAULT_FEATURE_PENALTY = 0.07

#: P(gate != 0) of a gate reopened by ``enforce_budget(fill=True)``: fully open again.
_REOPEN_KEEP_PROBABILITY = 0.99

GATES_PLACEHOLDER = "lumos_gates"


def apply_gates(x: Tensor, gates: Tensor, index: Tensor, dim: int) -> Tensor:
    """Multiply ``x`` along ``dim`` by the gate of each position (``index`` into ``gates``)."""
    shape = [1] * x.dim()
    shape[dim] = -1
    return x * gates.index_select(0, index).view(shape).to(x.dtype)


torch.fx.wrap("apply_gates")


def call_with_gated_params(module: nn.Module, gates: Tensor, specs: tuple, *args, **kwargs):
    """Call ``module`` with some parameters scaled by gates (units inside a leaf layer).

    ``specs`` holds ``(parameter path, dim, gate index)`` triples; the module's own parameters
    are untouched, so gradients reach both the weights and the gates.
    """
    params = {}
    for name, dim, index in specs:
        p = module.get_parameter(name)
        shape = [1] * p.dim()
        shape[dim] = -1
        params[name] = p * gates.index_select(0, index).view(shape).to(p.dtype)
    return torch.func.functional_call(module, params, args, kwargs)


torch.fx.wrap("call_with_gated_params")


def call_with_gated_input_columns(module: nn.Module, gates: Tensor, index: Tensor, x: Tensor):
    """``module(x * z)`` for a Linear or a conv, computed as ``module`` with its input columns
    scaled by ``z``: the same numbers, but a weight-sized multiply instead of an
    activation-sized one (much cheaper for convolutions and long sequences)."""
    weight = module.weight
    shape = [1] * weight.dim()
    shape[1] = -1
    scaled = weight * gates.index_select(0, index).view(shape).to(weight.dtype)
    if isinstance(module, nn.Linear):
        return torch.nn.functional.linear(x, scaled, module.bias)
    return module._conv_forward(x, scaled, module.bias)


torch.fx.wrap("call_with_gated_input_columns")

#: readers whose input gate is folded into their weight on the fly (see above)
_COLUMN_GATED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _Penalty(torch.autograd.Function):
    """A scalar ``value`` whose gradient in log alpha is the given ``grad`` (see penalty)."""

    @staticmethod
    def forward(ctx, log_alpha: Tensor, value: Tensor, grad: Tensor | None) -> Tensor:
        ctx.grad = grad
        return value.clone()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad = None if ctx.grad is None else grad_out * ctx.grad
        return grad, None, None


def _as_call(example_inputs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise ConfigurationError(
        f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword "
        f"inputs, got {type(example_inputs).__name__}."
    )


def _check_finite(name: str, value, when: str) -> None:
    if isinstance(value, Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
        bad = int((~torch.isfinite(value)).sum())
        raise InputError(
            f"input '{name}' of the {when} contains {bad} NaN/Inf value(s). LUMOS cannot learn "
            "gates from non-finite data: drop or impute those rows (e.g. torch.nan_to_num, or "
            "filter with torch.isfinite(x).all(dim=-1)) before passing them."
        )


@dataclass(frozen=True)
class GateOptions:
    """How the gates are trained. The defaults come from the ablation in
    ``docs/results/ablation.md``: plain hard-concrete noise (``b = 0``) and the paper's
    temperature, with the last 10% of training frozen and fine-tuned.

    ``noise_interval``: ``b`` of the uniform draw ``U(b, 1 - b)``; 0 is the plain
    hard-concrete gate, 0.5 a deterministic one; a number or a :class:`~lumos.Schedule` over
    training progress. ``temperature``: beta (None keeps the gate config's). ``log_alpha_range``:
    clamp log alpha into this range before every step (None: no clamp). ``finetune``: the last
    fraction of training runs with every gate frozen where it is (closed ones at 0, kept ones
    at their deterministic value; budget enforced first), without gate noise, so the surviving
    weights adapt to the final structure. ``gate_lr_scale``: default gate learning
    rate is ``max(gate_lr_scale * lr, 0.05)``.
    """

    noise_interval: float | Schedule = 0.0
    temperature: float | Schedule | None = None
    log_alpha_range: tuple[float, float] | None = None
    finetune: float = 0.1
    gate_lr_scale: float = 50.0

    def __post_init__(self) -> None:
        b = Schedule.of(self.noise_interval)
        for p in (0.0, 0.5, 1.0):
            if not 0.0 <= b(p) <= 0.5:
                raise ConfigurationError(
                    f"noise_interval must stay in [0, 0.5] (0: stochastic, 0.5: deterministic), "
                    f"got {b(p)} at progress {p}."
                )
        if self.temperature is not None:
            t = Schedule.of(self.temperature)
            if any(t(p) <= 0 for p in (0.0, 0.5, 1.0)):
                raise ConfigurationError("temperature must stay > 0.")
        if self.log_alpha_range is not None:
            lo, hi = self.log_alpha_range
            if not lo < hi:
                raise ConfigurationError(f"log_alpha_range needs low < high, got {lo}, {hi}.")
        if not 0.0 <= self.finetune < 1.0:
            raise ConfigurationError(f"finetune must be a fraction in [0, 1), got {self.finetune}.")
        if not self.gate_lr_scale > 0:
            raise ConfigurationError(f"gate_lr_scale must be > 0, got {self.gate_lr_scale}.")


class SparseModel(nn.Module):
    """A model with hard-concrete gates on its channel groups (see :func:`sparsify`)."""

    def __init__(
        self,
        gated: fx.GraphModule,
        graph: ChannelGraph,
        signature: inspect.Signature,
        example_args: tuple,
        *,
        budget: float | None,
        lam: float | None,
        feature_penalty: float,
        feature_names: dict[str, list[str]],
        gate_config: HardConcreteConfig,
        init_keep_probability: float | dict[str, float],
        warmup: float,
        gate_options: GateOptions,
        absent_arguments: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.model = gated
        self.graph_info = graph
        self.signature = signature
        self.example_args = example_args
        self.gates = GateBank(
            [g.size for g in graph.groups],
            [g.kind for g in graph.groups],
            gate_config,
            init_keep_probability,
        )
        self.cost = CostModel(graph)
        self.dense_params = self.cost.dense("params")
        self.dense_flops = self.cost.dense("flops")
        self.lam = lam
        self.feature_penalty = float(feature_penalty)
        self.controller = BudgetController(budget, warmup) if budget is not None else None
        self.feature_names = feature_names
        self.gate_options = gate_options
        #: optional forward arguments that were None in example_inputs (traced as that constant)
        self.absent_arguments = tuple(absent_arguments)
        # feature groups too: an input whose every column closed still feeds a conv that
        # torch cannot build with zero input channels (one inert column stays, gate 0 folded)
        self._nonempty_groups = [g for g in graph.groups if g.nonempty]
        self.register_buffer("feature_mask", self.gates.mask_of_kind("feature"), persistent=False)
        self._has_feature_gates = bool(self.feature_mask.any())
        self._realized: Tensor | None = None
        self._warned_unreachable = False
        self._realized_calls = 0
        self._input_dims = {
            name: (graph.feature_dims[name], space.size)
            for name, space in graph.feature_spaces.items()
        }

    @property
    def budget(self) -> float | None:
        """The kept-parameter fraction aimed at (None when a fixed ``lam`` is used)."""
        return self.controller.budget if self.controller is not None else None

    # ---- forward -------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        bound = self._bind(args, kwargs)
        z = self.gates()
        try:
            return self.model(*bound, **{GATES_PLACEHOLDER: torch.cat([z, z.new_ones(1)])})
        except RuntimeError as exc:
            mismatch = self._dtype_mismatch(bound)
            if mismatch is None:
                raise
            raise InputError(mismatch) from exc

    def _dtype_mismatch(self, values: list) -> str | None:
        """Why a failed call failed, if an input's dtype differs from the example's."""
        for name, value, example in zip(self.signature.parameters, values, self.example_args):
            if isinstance(value, Tensor) and isinstance(example, Tensor) and \
                    value.dtype != example.dtype and value.dtype != self.gates.log_alpha.dtype:
                return (f"input '{name}' has dtype {value.dtype} but the model was sparsified "
                        f"with {example.dtype} example inputs and its weights are "
                        f"{self.gates.log_alpha.dtype}; convert it, e.g. "
                        f"{name}.to({example.dtype}).")
        return None

    def _bind(self, args: tuple, kwargs: dict) -> list:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InputError(
                f"the inputs do not match the model's forward signature {self.signature}: {exc}."
            ) from None
        bound.apply_defaults()
        values = list(bound.arguments.values())
        for name in self.absent_arguments:
            if bound.arguments[name] is not None:
                raise InputError(
                    f"argument '{name}' was None in example_inputs, so the sparse model was built "
                    f"for {name}=None; to use it, sparsify with example_inputs that include "
                    f"'{name}'."
                )
        for name, (dim, size) in self._input_dims.items():
            value = bound.arguments.get(name)
            if not isinstance(value, Tensor):
                raise InputError(f"input '{name}' must be a tensor, got {type(value).__name__}.")
            if value.dim() < -dim or value.shape[dim] != size:
                raise InputError(
                    f"input '{name}' has shape {tuple(value.shape)} but the model was sparsified "
                    f"with {size} features along dim {dim}; pass inputs with the same feature "
                    "columns (in the same order) as example_inputs."
                )
            if self.training:
                _check_finite(name, value, "training batch")
        return values

    # ---- penalty ---------------------------------------------------------------------------
    def expected_fraction(self, kind: str = "params") -> Tensor:
        """Expected kept fraction of parameters (or FLOPs) under the current gate probabilities."""
        keep = self.gates.prob_nonzero()
        dense = self.dense_params if kind == "params" else self.dense_flops
        return self.cost.total(keep, kind) / max(dense, 1.0)

    def penalty(self) -> Tensor:
        """Term to add to the task loss once per step: size pressure plus feature selection.

        With ``budget`` the size term is the Lagrangian of :class:`BudgetController`; with
        ``lam`` it is ``lam * expected_live_params / dense_params``. Feature gates get their own
        pressure, ``feature_penalty * mean P(feature kept)``, because an input column costs so
        few parameters that a size budget alone would never close it.

        The value and its gradient in log alpha are computed directly (the cost model's
        marginal, the sigmoid's slope) and handed to autograd as one node: the same gradient
        as differentiating the formula above, at a fraction of the per-step cost.
        """
        with torch.no_grad():
            keep = self.gates.prob_nonzero()
            value = keep.new_zeros(())
            slope = torch.zeros_like(keep)  # d penalty / d keep
            if self.controller is not None or self.lam is not None:
                dense = max(self.dense_params, 1.0)
                if self.controller is not None:
                    # The budget is on what compaction keeps (deterministic gate > 0), which
                    # can be more than the expected count while gates sit half-open: the
                    # constraint sees the kept fraction's value, with the expected fraction's
                    # gradient.
                    realized = self._realized_fraction(keep.dtype)
                    size_value, size_slope = self.controller.value_and_slope(realized)
                else:
                    size_value = self.lam * self.cost.total(keep, "params") / dense
                    size_slope = self.lam
                value = value + size_value
                if size_slope:
                    slope = self.cost.marginal(keep, "params").mul_(size_slope / dense)
            if self.feature_penalty > 0 and self._has_feature_gates:
                weights = self._feature_weights(keep.dtype)
                value = value + self.feature_penalty * torch.dot(keep, weights)
                slope = slope + self.feature_penalty * weights
            # d keep / d log alpha: keep = sigmoid(log alpha - c), 0 where shut or frozen
            grad = slope * keep * (1.0 - keep) if not self.gates.frozen else None
        return _Penalty.apply(self.gates.log_alpha, value, grad)

    def _feature_weights(self, dtype: torch.dtype) -> Tensor:
        """1 / (number of feature gates) on feature gates, 0 elsewhere (their mean, as a dot)."""
        key = (dtype, self.feature_mask.device)
        if getattr(self, "_feature_weights_key", None) != key:
            mask = self.feature_mask.to(dtype)
            self._feature_weights_cache = mask / mask.sum().clamp_min(1.0)
            self._feature_weights_key = key
        return self._feature_weights_cache

    #: the kept fraction moves only when a gate crosses zero: refreshed every few steps
    REALIZED_EVERY = 8

    def _realized_fraction(self, dtype: torch.dtype) -> float:
        calls = self._realized_calls
        self._realized_calls += 1
        if self._realized is None or calls % self.REALIZED_EVERY == 0 or not self.training:
            with torch.no_grad():
                kept = (self.gates.deterministic() > 0).to(dtype)
                self._realized = self.cost.total(kept, "params") / max(self.dense_params, 1.0)
            self._realized_value = float(self._realized)  # one device read per refresh
        return self._realized_value

    def get_extra_state(self) -> dict:
        # the cached kept fraction and its refresh count travel with the weights, so a run
        # resumed from a checkpoint refreshes on the steps the uninterrupted run did
        return {"realized": self._realized, "realized_calls": self._realized_calls}

    def set_extra_state(self, state: dict) -> None:
        realized = state.get("realized")
        self._realized = None if realized is None else realized.to(self.gates.log_alpha.device)
        if realized is not None:
            self._realized_value = float(realized)
        self._realized_calls = int(state.get("realized_calls", 0))

    def set_progress(self, fraction: float) -> None:
        """Tell the budget schedule how far training is (0 = start, 1 = end)."""
        if not 0.0 <= fraction <= 1.0 or not math.isfinite(fraction):
            raise ConfigurationError(f"progress must lie in [0, 1], got {fraction}.")
        opts = self.gate_options
        noise, temperature = self._schedules()
        self.gates.noise_interval = noise(fraction)
        if temperature is not None:
            self.gates.set_temperature(temperature(fraction))
        if opts.log_alpha_range is not None:
            with torch.no_grad():
                self.gates.log_alpha.clamp_(*opts.log_alpha_range)
        if self.controller is not None:
            self.controller.progress = float(fraction)
            # enforce once when training settles and once at its end (not every step)
            settling = fraction >= self.controller.settle and not self.controller.settled
            if settling or fraction >= 1.0:
                # at settle, training goes on: gates closed past the budget may reopen
                self.enforce_budget(fill=settling and fraction < 1.0)
                self.controller.settled = True
        if opts.finetune > 0 and fraction >= 1.0 - opts.finetune and not self.gates.frozen:
            self.enforce_budget(fill=fraction < 1.0)
            self.gates.freeze(self.kept_mask())

    def _schedules(self) -> tuple[Schedule, Schedule | None]:
        """The gate options' schedules, built once per options object (this runs every step)."""
        opts = self.gate_options
        if getattr(self, "_schedules_of", None) is not opts:
            temperature = None if opts.temperature is None else Schedule.of(opts.temperature)
            self._schedules_cache = (Schedule.of(opts.noise_interval), temperature)
            self._schedules_of = opts
        return self._schedules_cache

    @torch.no_grad()
    def enforce_budget(self, budget: float | None = None, fill: bool = False) -> int:
        """Shut the least wanted neuron/channel/head gates until compaction keeps at most
        ``budget`` (default: the model's) of the dense parameters; returns how many were shut.

        The controller gets close; this makes the budget an exact upper bound. It runs by
        itself from ``set_progress(settle)`` on (default 0.9 of training), so the last part of
        training fine-tunes around the gates it shut. Feature gates are never shut here:
        they are judged by the feature pressure, not by the parameter budget.

        ``fill``: when the model is already under the budget, reopen the strongest closed
        neuron/channel/head gates while it stays within it (returns minus how many). The
        controller's momentum closes a few points more than asked; with training still to
        come, those units are better used than wasted. It is a no-op for gates shut for good.
        """
        budget = self.budget if budget is None else budget
        if budget is None:
            return 0
        kept = self.kept_mask()

        def fraction(shut: Tensor) -> float:
            keep = self._keep_alive(kept & ~shut).double()
            return float(self.cost.total(keep, "params")) / max(self.dense_params, 1.0)

        none = torch.zeros_like(kept)
        if fraction(none) <= budget:
            return -self._reopen_within(budget, kept) if fill else 0
        candidates = torch.nonzero(kept & ~self.feature_mask).flatten()
        order = candidates[torch.argsort(self.gates.log_alpha[candidates])]
        lo, hi = 0, len(order)  # smallest k whose k weakest gates shut meet the budget
        while lo < hi:
            mid = (lo + hi) // 2
            shut = none.clone()
            shut[order[:mid]] = True
            if fraction(shut) <= budget:
                hi = mid
            else:
                lo = mid + 1
        final = none.clone()
        final[order[:lo]] = True
        # the last gate shut may be a big one (a head) that overshoots: spare, strongest first,
        # every shut gate the budget still allows (cheap neurons fill the gap)
        for gate in order[: max(lo - 1, 0)].flip(0).tolist():
            final[gate] = False
            if fraction(final) > budget:
                final[gate] = True
        self.gates.shut_gates(torch.nonzero(final).flatten())
        self._realized = None
        reached = fraction(final)
        if reached > budget + 1e-9 and not self._warned_unreachable:
            self._warned_unreachable = True
            warnings.warn(_unreachable_message(self, budget, reached), LumosWarning, stacklevel=2)
        return int(final.sum())

    def _reopen_within(self, budget: float, kept: Tensor) -> int:
        """Reopen closed, not shut-for-good, non-feature gates, strongest (highest log alpha)
        first, each one that still fits: compaction stays within ``budget``. Returns how many.

        The strongest ones are found by a binary search over how many fit in a row; after the
        first that does not fit, the rest are tried one by one, so a cheap unit (a neuron) can
        still fill the gap an expensive one (an attention head) would overshoot.
        """
        closed = ~kept & ~self.gates.shut & ~self.feature_mask
        candidates = torch.nonzero(closed).flatten()
        if len(candidates) == 0:
            return 0
        order = candidates[torch.argsort(self.gates.log_alpha.detach()[candidates],
                                         descending=True)]

        def fraction(keep: Tensor) -> float:
            keep = self._keep_alive(keep).double()
            return float(self.cost.total(keep, "params")) / max(self.dense_params, 1.0)

        def with_first(k: int) -> Tensor:
            keep = kept.clone()
            keep[order[:k]] = True
            return keep

        lo, hi = 0, len(order)  # largest k whose k strongest gates reopened stay in budget
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fraction(with_first(mid)) <= budget:
                lo = mid
            else:
                hi = mid - 1
        keep = with_first(lo)
        for gate in order[lo + 1:].tolist():  # order[lo] did not fit; cost only grows
            keep[gate] = True
            if fraction(keep) > budget:
                keep[gate] = False
        reopened = keep & ~kept
        if reopened.any():
            opened = log_alpha_for_keep_probability(_REOPEN_KEEP_PROBABILITY, self.gates.cfg)
            self.gates.log_alpha.data[reopened] = opened
            self._realized = None
        return int(reopened.sum())

    def parameter_groups(
        self, lr: float, gate_lr: float | None = None, weight_decay: float = 0.0
    ) -> list[dict]:
        """Optimizer parameter groups: gates get their own learning rate and no weight decay.

        Gates have to travel a few units of log-alpha to close, so by default they learn at
        ``max(50 * lr, 0.05)``-ish speed; weight decay on log-alpha would pull every gate to
        "half open" and is never applied to them.
        """
        gate_params = list(self.gates.parameters())
        ids = {id(p) for p in gate_params}
        weights = [p for p in self.parameters() if id(p) not in ids]
        scale = self.gate_options.gate_lr_scale
        gate_lr = gate_lr if gate_lr is not None else max(scale * lr, 0.05)
        return [
            {"params": weights, "lr": lr, "weight_decay": weight_decay},
            {"params": gate_params, "lr": gate_lr, "weight_decay": 0.0},
        ]

    # ---- results ---------------------------------------------------------------------------
    def kept_mask(self) -> Tensor:
        """Which channels survive compaction: deterministic gate > 0.

        A group read or written by a layer torch cannot build with width 0 (conv, norm,
        attention heads) keeps its strongest channel even when every gate is closed; its gate
        value 0 is folded into its readers, so it contributes nothing and outputs are exact.
        """
        return self._keep_alive(self.gates.deterministic().detach() > 0)

    def _keep_alive(self, kept: Tensor) -> Tensor:
        """``kept`` plus the strongest channel of every must-not-be-empty group left empty."""
        kept = kept.clone()
        for group in self._nonempty_groups:
            sl = slice(group.offset, group.offset + group.size)
            if not bool(kept[sl].any()):
                kept[group.offset + int(torch.argmax(self.gates.log_alpha.detach()[sl]))] = True
        return kept

    def smallest_fraction(self) -> float:
        """The smallest kept-parameter fraction the budget can reach: every neuron/channel/head
        gate closed (one inert channel where torch needs one), the current features kept."""
        keep = self._keep_alive(self.kept_mask() & self.feature_mask).double()
        return float(self.cost.total(keep, "params")) / max(self.dense_params, 1.0)

    def gate_values(self) -> Tensor:
        """Deterministic gate values as compaction folds them (1 for ungated positions)."""
        z = self.gates.deterministic().detach()
        return torch.cat([z, z.new_ones(1)])

    def _feature_gates(self) -> dict[str, tuple[int, slice | None]]:
        """Per feature input: its feature count and where its gates sit (None: ungated)."""
        out = {}
        for name, space in self.graph_info.feature_spaces.items():
            group = self.graph_info.group_of(space)
            out[name] = (space.size, None if group is None
                         else slice(group.offset, group.offset + group.size))
        return out

    def selected_features(self) -> dict[str, list]:
        """Kept input features per model argument: indices, or names if ``feature_names`` given."""
        kept = self.kept_mask()
        out: dict[str, list] = {}
        for name, (size, gates) in self._feature_gates().items():
            idx = (list(range(size)) if gates is None
                   else torch.nonzero(kept[gates]).flatten().tolist())
            names = self.feature_names.get(name)
            out[name] = [names[i] for i in idx] if names else idx
        return out

    def feature_scores(self) -> dict[str, Tensor]:
        """Probability that each input feature is kept (a ranking, 1 for ungated inputs)."""
        probs = self.gates.prob_nonzero().detach()
        return {name: torch.ones(size) if gates is None else probs[gates].clone()
                for name, (size, gates) in self._feature_gates().items()}

    def compacted_counts(self) -> dict[str, float]:
        """Parameters and FLOPs that compaction will leave, from the cost model."""
        keep = self.kept_mask().double()
        return {k: float(self.cost.total(keep, k)) for k in ("params", "flops")}

    def compact(self, inputs: str = "full") -> fx.GraphModule:
        """A plain PyTorch module without the closed channels (see :mod:`lumos.compaction`)."""
        from .compaction import compact

        self._warn_if_an_input_closed()
        return compact(self, inputs=inputs)

    def _warn_if_an_input_closed(self) -> None:
        open_ = self.gates.deterministic().detach() > 0
        for name, (_, gates) in self._feature_gates().items():
            if gates is not None and not bool(open_[gates].any()):
                warnings.warn(
                    f"every feature of input '{name}' closed: the compacted model ignores it "
                    "(where the next layer needs an input channel, one column stays with weight "
                    "0). If the input matters, train longer or lower feature_penalty.",
                    LumosWarning, stacklevel=3)

    def report(self) -> str:
        from .reporting import report

        return report(self)

    def extra_repr(self) -> str:
        mode = f"budget={self.budget}" if self.budget is not None else f"lam={self.lam}"
        return f"groups={len(self.graph_info.groups)}, gates={self.gates.num_gates}, {mode}"


def _unreachable_message(sm: SparseModel, budget: float, reached: float) -> str:
    whole = sorted({s.origin for s in sm.graph_info.pinned_spaces()
                    if not s.pinned.startswith("model output")})
    shown = ", ".join(whole[:6]) + (" ..." if len(whole) > 6 else "")
    return (
        f"budget={budget} cannot be reached: the smallest model LUMOS can build from this one "
        f"keeps {reached:.1%} of the parameters, because some channels are kept whole "
        f"({shown or 'the model output'}; see sm.report()). Ask for a budget of at least "
        f"{reached:.2f}, or make those layers prunable (e.g. register a rule, avoid LayerNorm "
        "over a stream you want pruned)."
    )


#: ops that reorder dims without changing what each one holds (followed by ``_feature_dim``)
_DIM_MOVES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"}


def _moved(node: fx.Node, order: list[int]) -> list[int] | None:
    """``order`` (the input dim held by each dim) after a permute/transpose-like ``node``;
    None when the node is not one or its dims are not constants."""
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if name not in _DIM_MOVES or not node.args or not all(
            isinstance(a, int) for a in _flat_ints(node.args[1:])):
        return None
    rank = len(order)
    dims = [d % rank for d in _flat_ints(node.args[1:])]
    if name == "permute":
        return [order[d] for d in dims] if len(dims) == rank else None
    if name in ("movedim", "moveaxis"):
        if len(dims) != 2:
            return None
        moved = list(order)
        moved.insert(dims[1], moved.pop(dims[0]))
        return moved
    if len(dims) != 2:
        return None
    swapped = list(order)
    swapped[dims[0]], swapped[dims[1]] = swapped[dims[1]], swapped[dims[0]]
    return swapped


def _flat_ints(args) -> list:
    out = []
    for a in args:
        out.extend(a if isinstance(a, (tuple, list)) else [a])
    return out


def _feature_dim(gm: fx.GraphModule, placeholder: fx.Node, rank: int) -> int:
    """The dim of an input that holds its features: the one its first layer reads (default -1),
    followed back through permutes and transposes on the way (``x.permute(0, 2, 1)`` before a
    Conv1d makes the input's last dim the features, not its middle one)."""
    frontier = [(user, list(range(rank))) for user in placeholder.users]
    seen = set()
    while frontier:
        node, order = frontier.pop(0)
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module":
            rule = registry.module_rule(gm.get_submodule(node.target))
            if rule is not None and rule.input_dim is not None:
                return order[rule.input_dim % rank]
        if node.op in ("call_function", "call_method") and len(seen) < 64:
            moved = _moved(node, order)
            if moved is None and (node.target in _DIM_MOVES or getattr(
                    node.target, "__name__", "") in _DIM_MOVES):
                return -1  # dims moved in a way we cannot follow: the last dim, as by default
            frontier.extend((user, moved or order) for user in node.users)
        elif node.op == "call_module" and len(seen) < 64:
            frontier.extend((user, order) for user in node.users)
    return -1


def sparsify(
    model: nn.Module,
    example_inputs,
    *,
    budget: float | None = None,
    lam: float | None = None,
    features: bool | Sequence[str] = True,
    feature_names: Sequence[str] | dict[str, Sequence[str]] | None = None,
    feature_penalty: float = DEFAULT_FEATURE_PENALTY,
    strict: bool = False,
    concrete_args: dict | None = None,
    gate_config: HardConcreteConfig | None = None,
    init_keep_probability: float | dict[str, float] = 0.99,
    warmup: float = 0.5,
    gates: GateOptions | None = None,
) -> SparseModel:
    """Wrap ``model`` so training learns which input features and hidden channels to keep.

    Args:
        model: any ``nn.Module`` torch.fx can trace. Its parameters are shared, not copied.
        example_inputs: a tensor, tuple of positional inputs, or dict of keyword inputs.
        budget: keep at most this fraction of the parameters (0 < budget <= 1); a Lagrangian
            controller finds the penalty strength. Give ``budget`` or ``lam``, not both.
        lam: fixed penalty strength on the expected fraction of live parameters.
        features: gate the features of every floating input (True), of none (False), or of
            the named arguments only.
        feature_names: names of the feature columns (for one input), or ``{arg: names}``.
        feature_penalty: strength of the feature-selection pressure (0 disables it).
        strict: raise instead of keeping channels whole when an op has no channel rule.
        concrete_args: constants for torch.fx (e.g. flags that steer Python control flow).
        warmup: fraction of training over which the budget target goes from dense to budget.
        init_keep_probability: initial P(gate open), one number or per group kind
            (``{"feature": 0.9, "default": 0.99}``).
        gates: how the gates are trained (noise interval and temperature schedules, log-alpha
            clamp, final freeze-and-fine-tune); see :class:`GateOptions`.
    """
    if not isinstance(model, nn.Module):
        raise ConfigurationError(
            f"sparsify expects a torch.nn.Module, got {type(model).__name__}; wrap your function "
            "in a module first."
        )
    if isinstance(model, SparseModel):
        raise ConfigurationError(
            "this model is already a lumos.SparseModel; pass the original model to sparsify, "
            "or keep training the SparseModel you have."
        )
    if hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
        raise ConfigurationError(
            "sparsify got a torch.compile'd model, which torch.fx cannot read; pass the "
            "original module (model._orig_mod) and compile the SparseModel or the compacted "
            "model afterwards."
        )
    if budget is not None and lam is not None:
        raise ConfigurationError(
            "give either budget= (LUMOS finds the penalty) or lam= (a fixed penalty), not both."
        )
    if budget is not None and not (isinstance(budget, (int, float)) and 0.0 < budget <= 1.0):
        raise ConfigurationError(
            f"budget must be a fraction of the dense parameter count in (0, 1], got {budget!r}; "
            "e.g. budget=0.25 keeps at most 25% of the parameters."
        )
    if lam is not None and not (isinstance(lam, (int, float)) and lam >= 0 and math.isfinite(lam)):
        raise ConfigurationError(f"lam must be a finite number >= 0, got {lam!r}.")
    if not (feature_penalty >= 0 and math.isfinite(feature_penalty)):
        raise ConfigurationError(f"feature_penalty must be >= 0, got {feature_penalty!r}.")
    probabilities = (list(init_keep_probability.values())
                     if isinstance(init_keep_probability, dict) else [init_keep_probability])
    if not all(isinstance(p, (int, float)) and 0.0 < p < 1.0 for p in probabilities):
        raise ConfigurationError(
            f"init_keep_probability must lie in (0, 1), got {init_keep_probability!r}."
        )
    if gates is not None and not isinstance(gates, GateOptions):
        raise ConfigurationError(
            f"gates= takes a lumos.GateOptions, got {type(gates).__name__}."
        )
    gate_config = gate_config or HardConcreteConfig()
    if min(probabilities) < fully_open_keep_probability(gate_config):
        warnings.warn(
            f"init_keep_probability={init_keep_probability} starts the gates half-open (the "
            "deterministic gate is 1 only from "
            f"{fully_open_keep_probability(gate_config):.3f}), so before training the sparse "
            "model's eval output differs from the original model's. Use a higher value if "
            "training should start from the original model.",
            LumosWarning,
            stacklevel=2,
        )
    args, kwargs = _as_call(example_inputs)
    signature = inspect.signature(model.forward)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InputError(
            f"example_inputs do not match {type(model).__name__}.forward{signature}: {exc}."
        ) from None
    bound.apply_defaults()
    for name, value in bound.arguments.items():
        _check_finite(name, value, "example inputs")

    # An optional argument left at None (a mask, a conditioning input) is traced as the
    # constant None, so `if cond is not None:` follows the branch the example takes.
    absent = [name for name, value in bound.arguments.items()
              if value is None and name not in (concrete_args or {})]
    traced_constants = {**dict.fromkeys(absent), **(concrete_args or {})}
    gm = topology.trace(model, registry.leaf_types(), traced_constants or None)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) == len(bound.arguments):  # fx renames specialised arguments (cond_1)
        taken = {n.name for n in gm.graph.nodes}
        for node, name in zip(placeholders, bound.arguments):
            if node.target != name and name not in taken:
                node.target = node.name = name
        gm.recompile()
    example_args = []
    for node in placeholders:
        if node.target not in bound.arguments:
            raise UntraceableModelError(
                f"forward argument '{node.target}' of {type(model).__name__} could not be matched "
                "to example_inputs (variadic *args/**kwargs are not supported); give the model "
                "explicit named arguments."
            )
        example_args.append(bound.arguments[node.target])

    wanted = _feature_arguments(features, [n.target for n in placeholders])
    feature_inputs = {}
    for node, value in zip(placeholders, example_args):
        floating = isinstance(value, Tensor) and value.is_floating_point()
        if node.target in wanted and floating and value.dim() >= 2:
            feature_inputs[node.target] = _feature_dim(gm, node, value.dim()) % value.dim()
    names = _feature_names(feature_names, feature_inputs, example_args, placeholders)

    graph = ChannelGraph(gm, tuple(example_args), feature_inputs, strict=strict)
    if strict and graph.records.ungated:
        from .errors import UnsupportedModelError

        first = graph.records.ungated[0]
        raise UnsupportedModelError(
            f"{first.where}: {first.reason}. Ways out: teach LUMOS the layer with "
            "lumos.register_rule(YourLayer, ...) (docs/custom_layers.md), or call "
            "sparsify(..., strict=False) to keep these channels whole (listed in report())."
        )
    _insert_gates(gm, graph)
    sm = SparseModel(
        gm,
        graph,
        signature,
        tuple(example_args),
        budget=budget,
        lam=lam,
        feature_penalty=feature_penalty,
        feature_names=names,
        gate_config=gate_config,
        init_keep_probability=init_keep_probability,
        warmup=warmup,
        gate_options=gates or GateOptions(),
        absent_arguments=tuple(absent),
    )
    if budget is not None and budget < 1.0:
        floor = sm.smallest_fraction()
        if floor > budget:
            sm._warned_unreachable = True
            warnings.warn(_unreachable_message(sm, budget, floor), LumosWarning, stacklevel=2)
    return sm


def _feature_arguments(features, names: list[str]) -> set[str]:
    if features is True:
        return set(names)
    if features is False or features is None:
        return set()
    if isinstance(features, str):
        features = [features]
    unknown = [f for f in features if f not in names]
    if unknown:
        raise ConfigurationError(
            f"features= names {unknown} are not arguments of the model's forward {names}."
        )
    return set(features)


def _feature_names(feature_names, feature_inputs, example_args, placeholders) -> dict:
    if feature_names is None:
        return {}
    if not isinstance(feature_names, dict):
        if len(feature_inputs) != 1:
            raise ConfigurationError(
                "feature_names given as a list but the model has "
                f"{len(feature_inputs)} gated inputs {list(feature_inputs)}; pass a dict "
                "{argument name: [names]}."
            )
        feature_names = {next(iter(feature_inputs)): feature_names}
    values = {n.target: v for n, v in zip(placeholders, example_args)}
    out = {}
    for arg, names in feature_names.items():
        if arg not in feature_inputs:
            raise ConfigurationError(
                f"feature_names given for '{arg}', which is not a gated input "
                f"(gated: {list(feature_inputs)})."
            )
        names = [str(n) for n in names]
        size = values[arg].shape[feature_inputs[arg]]
        if len(names) != size:
            raise ConfigurationError(
                f"{len(names)} feature_names given for '{arg}', which has {size} features."
            )
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigurationError(
                f"feature_names for '{arg}' repeat {repeated}: each column needs its own name "
                "so that selected_features() is unambiguous."
            )
        out[arg] = names
    return out


def _insert_gates(gm: fx.GraphModule, graph: ChannelGraph) -> None:
    """Rewrite the traced graph: each gate site reads its input through ``apply_gates``."""
    g = gm.graph
    placeholders = [n for n in g.nodes if n.op == "placeholder"]
    with g.inserting_after(placeholders[-1]):
        gates_node = g.placeholder(GATES_PLACEHOLDER, default_value=None)
    for k, site in enumerate(graph.records.sites):
        index = graph.gate_index(site.layout)
        if not bool((index < graph.num_gates).any()):
            continue
        buffer = f"lumos_gate_index_{k}"
        gm.register_buffer(buffer, index, persistent=False)
        args = site.node.args if isinstance(site.arg, int) else site.node.kwargs
        value = args[site.arg]
        if _gate_weight_instead(gm, site, value):
            node = site.node
            with g.inserting_before(node):
                call = g.call_function(call_with_gated_input_columns, (
                    g.get_attr(node.target), gates_node, g.get_attr(buffer), value))
            call.meta = dict(node.meta)
            call.meta["is_wrapped"] = True
            node.replace_all_uses_with(call)
            g.erase_node(node)
            continue
        with g.inserting_before(site.node):
            idx_node = g.get_attr(buffer)
            gated = g.call_function(apply_gates, (value, gates_node, idx_node, site.dim))
        # one graph node even when fx re-traces the code (unpickling a SparseModel)
        gated.meta["is_wrapped"] = True
        if isinstance(site.arg, int):
            args = list(site.node.args)
            args[site.arg] = gated
            site.node.args = tuple(args)
        else:
            kwargs = dict(site.node.kwargs)
            kwargs[site.arg] = gated
            site.node.kwargs = kwargs
    _insert_param_gates(gm, graph, gates_node)
    g.lint()
    gm.recompile()


def _gate_weight_instead(gm: fx.GraphModule, site, value) -> bool:
    """Gate a Linear/conv's input by scaling its weight columns when the activation is the
    bigger tensor (convolutions, tokens, graph nodes); plain activations stay gated for
    small-batch MLPs, where the weight is the bigger one."""
    node = site.node
    if node.op != "call_module" or site.arg != 0 or len(node.args) != 1 or node.kwargs:
        return False
    module = gm.get_submodule(node.target)
    if type(module) not in _COLUMN_GATED or getattr(module, "groups", 1) != 1:
        return False
    meta = value.meta.get("tensor_meta") if isinstance(value, fx.Node) else None
    activation = math.prod(meta.shape) if meta is not None else 0
    return 4 * activation > module.weight.numel()  # the example batch is a small one


def _insert_param_gates(gm: fx.GraphModule, graph: ChannelGraph, gates_node: fx.Node) -> None:
    """Leaf layers with gated inner units are called through :func:`call_with_gated_params`."""
    g = gm.graph
    by_owner: dict[str, list] = {}
    for k, site in enumerate(graph.records.param_sites):
        index = graph.gate_index(site.layout)
        if not bool((index < graph.num_gates).any()):
            continue
        buffer = f"lumos_param_gate_index_{k}"
        gm.register_buffer(buffer, index, persistent=False)
        by_owner.setdefault(site.owner, []).append((site.param, site.dim, buffer))
    for node in list(g.nodes):
        if node.op != "call_module" or node.target not in by_owner:
            continue
        with g.inserting_before(node):
            module_node = g.get_attr(node.target)
            specs = tuple(
                (param, dim, g.get_attr(buffer)) for param, dim, buffer in by_owner[node.target]
            )
            call = g.call_function(
                call_with_gated_params, (module_node, gates_node, specs, *node.args), node.kwargs
            )
        call.meta = dict(node.meta)
        call.meta["is_wrapped"] = True
        node.replace_all_uses_with(call)
        g.erase_node(node)
