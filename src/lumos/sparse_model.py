"""``SparseModel``: a traced model with gates on its channel groups, and what it reports.

Built by :func:`lumos.sparsify` (:mod:`lumos.pipeline`). It owns the gate bank, the cost
model and the budget controller; it computes the penalty, moves the gate schedules once per
optimiser step, and answers what survives (kept mask, features, counts). The gated graph's
format lives in :mod:`lumos.gating`, the exact budget projection in :mod:`lumos.budget`, and
input checking in :mod:`lumos.inputs`.
"""

from __future__ import annotations

import inspect
import math
import warnings

import torch
import torch.distributed as dist
from torch import Tensor, fx, nn

from . import budget as projection
from . import compaction, verification
from .controller import BudgetController
from .cost import CostModel
from .errors import (
    CheckpointError,
    ConfigurationError,
    InputError,
    LumosWarning,
    NonFiniteError,
)
from .gates import GateBank
from .gating import GATES_PLACEHOLDER
from .inputs import InputSpec
from .latency import layer_seconds, owner_of, seconds_per_flop
from .options import GateOptions, number
from .schedules import Schedule
from .step_hook import register as _register
from .topology.analysis import ChannelGraph
from .widths import measured_width_multiple

__all__ = ["SparseModel"]




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


class SparseModel(nn.Module):
    """A model with hard-concrete gates on its channel groups (see :func:`sparsify`)."""

    # a buffer (registered in __init__), typed for readers
    feature_mask: Tensor

    def __init__(
        self,
        gated: fx.GraphModule,
        graph: ChannelGraph,
        inputs: InputSpec,
        *,
        budget: float | None,
        lam: float | None,
        feature_penalty: float,
        feature_names: dict[str, list[str]],
        gate_options: GateOptions,
        budget_on: str = "params",
    ) -> None:
        super().__init__()
        #: what ``budget`` (and ``lam``) measure: "params" or "flops" (on the example inputs)
        self.budget_on = budget_on
        self.model = gated
        self.graph_info = graph
        self.inputs = inputs
        self.gate_options = gate_options
        self.gates = GateBank(
            [g.size for g in graph.groups],
            [g.kind for g in graph.groups],
            gate_options.hard_concrete(),
            gate_options.init_keep_probability,
            essential=[bool(getattr(g, "essential", False)) for g in graph.groups],
        )
        self.gates.split_every = gate_options.gate_step_every
        self.cost = CostModel(graph)
        self.dense_params = self.cost.dense("params")
        self.dense_flops = self.cost.dense("flops")
        #: nanoseconds per FLOP of each FLOP term's layer (``budget_on="latency"``, else None)
        self.latency_weights: dict[str, float] | None = None
        self.dense_latency: float | None = None
        #: the width multiple ``width_multiple="auto"`` measured (on the device of the first
        #: projection, where the model trains), None until then
        self.measured_width_multiple: int | None = None
        if budget_on == "latency":
            self._use_latency_weights(self._measure_latency_weights())
        self._budget_dense = self.dense_cost(budget_on)
        self.lam = lam
        self.feature_penalty = float(feature_penalty)
        self.controller = (BudgetController(budget, gate_options.budget_warmup)
                           if budget is not None else None)
        self.feature_names = feature_names
        # feature groups too: an input whose every column closed still feeds a conv that
        # torch cannot build with zero input channels (one inert column stays, gate 0 folded)
        self._nonempty_groups = [g for g in graph.groups if g.nonempty]
        self.register_buffer("feature_mask", self.gates.mask_of_kind("feature"), persistent=False)
        self._has_feature_gates = bool(self.feature_mask.any())
        self._realized: Tensor | None = None
        self._warned_unreachable = False
        self._realized_calls = 0
        self._refreshed_at = -1
        self._pending_fraction: float | None = None
        # the task loss's size, which the pressure is measured in (see ``penalty(loss)``)
        self._pending_loss: Tensor | None = None
        self._loss_sum: Tensor | None = None
        self._loss_count = 0
        self._loss_scale: float | None = None
        self._progress: float | None = None  # the last set_progress (None: never called)
        self._explicit_steps = False
        self._auto_stepped = False
        self._steps_taken = 0
        _register(self)

    def dense_cost(self, kind: str) -> float:
        """The dense model's parameters, FLOPs per call of the example inputs, or estimated
        latency of that call in nanoseconds (``kind``: "params", "flops", "latency")."""
        if kind == "params":
            return self.dense_params
        if kind == "flops":
            return self.dense_flops
        if self.dense_latency is None:
            self._use_latency_weights(self._measure_latency_weights())
        assert self.dense_latency is not None
        return self.dense_latency

    def _measure_latency_weights(self) -> dict[str, float]:
        """Time the layers behind the FLOP terms once on the model's device (see
        :mod:`lumos.latency`): each FLOP term's weight is its layer's nanoseconds per FLOP
        (nanoseconds: the cost model's fractions divide by at least 1)."""
        ones = torch.ones(self.cost.num_gates, dtype=torch.float64)
        flops = self.cost.by_label(ones, "flops")
        paths = [name for name, _ in self.model.named_modules() if name]
        owners = {owner_of(label, paths) for label in flops} - {None}
        device = self._device()
        gates = torch.ones(self.gates.num_gates + 1, dtype=self.gates.log_alpha.dtype,
                           device=self.gates.log_alpha.device)
        was_training = self.model.training
        self.model.eval()
        try:
            seconds = layer_seconds(
                self.model, lambda: self.model(*self.inputs.example_args,
                                               **{GATES_PLACEHOLDER: gates}),
                sorted(owners), device)  # type: ignore[arg-type]
        finally:
            self.model.train(was_training)
        rates, mean = seconds_per_flop(flops, seconds)
        weights = {label: 1e9 * rates.get(owner_of(label, rates) or "", mean) for label in flops}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every process budgets rank 0's times: one cost model, the same gates shut
            shared = [weights]
            dist.broadcast_object_list(shared, src=0)
            weights = shared[0]
        return weights

    def _device(self) -> torch.device:
        """Where the wrapped model's weights are (CPU for a model without any)."""
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def _use_latency_weights(self, weights: dict[str, float]) -> None:
        self.cost.add_weighted_kind("latency", "flops", weights)
        self.latency_weights = dict(weights)
        self.dense_latency = self.cost.dense("latency")

    # what the model was built from (kept as attributes for code that read them before)
    @property
    def signature(self) -> inspect.Signature:
        return self.inputs.signature

    @property
    def example_args(self) -> tuple:
        return self.inputs.example_args

    @property
    def absent_arguments(self) -> tuple[str, ...]:
        """Optional forward arguments that were None in example_inputs (traced as None)."""
        return self.inputs.absent

    @property
    def budget(self) -> float | None:
        """The kept-parameter fraction aimed at (None when a fixed ``lam`` is used)."""
        return self.controller.budget if self.controller is not None else None

    # ---- forward -------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        bound = self.inputs.bind(args, kwargs, self.training)
        z = self.gates()
        try:
            return self.model(*bound, **{GATES_PLACEHOLDER: torch.cat([z, z.new_ones(1)])})
        except AssertionError as exc:  # a guard of known-value tracing: say it as an InputError
            if "traced by LUMOS" not in str(exc):
                raise
            raise InputError(str(exc)) from None
        except RuntimeError as exc:
            mismatch = self.inputs.dtype_mismatch(bound, self.gates.log_alpha.dtype)
            if mismatch is None:
                raise
            raise InputError(mismatch) from exc

    # ---- penalty ---------------------------------------------------------------------------
    def expected_fraction(self, kind: str = "params") -> Tensor:
        """Expected kept fraction of parameters (or FLOPs) under the current gate probabilities."""
        keep = self.gates.prob_nonzero()
        return self.cost.total(keep, kind) / max(self.dense_cost(kind), 1.0)

    #: optimiser steps whose mean task loss sets the unit of the pressure (then it is fixed):
    #: the first one, the loss of the untrained model (for a standardised target about 1,
    #: the unit the defaults were tuned in; averaging 20 steps gave ~0.65 there, as the model
    #: learns fast, and weakened the feature pressure enough to keep a noise column)
    LOSS_CALIBRATION_STEPS = 1

    def penalty(self, loss: Tensor | float | None = None) -> Tensor:
        """Term to add to the task loss once per step: size pressure plus feature selection.

        With ``budget`` the size term is the Lagrangian of :class:`BudgetController`; with
        ``lam`` it is ``lam * expected_live_params / dense_params``. Feature gates get their own
        pressure, ``feature_penalty * mean P(feature kept)``, because an input column costs so
        few parameters that a size budget alone would never close it.

        Pass the task ``loss`` (``loss + sm.penalty(loss)``) and both are measured in its units:
        they are multiplied by the task loss of the first optimiser step
        (``LOSS_CALIBRATION_STEPS``), so which features are kept and how the
        budget is approached do not depend on the units of the target (a target in m or in
        km, a loss summed or averaged). Without it the pressure is in absolute units, which
        suit a loss of order 1 (standardised targets). The call is a pure query: the loss is
        taken into the unit at the next :meth:`step`.

        The value and its gradient in log alpha are computed directly (the cost model's
        marginal, the sigmoid's slope) and handed to autograd as one node: the same gradient
        as differentiating the formula above, at a fraction of the per-step cost.

        Args:
            loss: the task loss of this step (a one-element tensor or a number), or None.

        Returns:
            A scalar tensor whose gradient reaches the gates' log alpha.

        Raises:
            InputError: ``loss`` is not a single number.

        Example::

            loss = F.mse_loss(sm(x), y)
            (loss + sm.penalty(loss)).backward()
        """
        value, grad = self.penalty_terms(loss)
        return _Penalty.apply(self.gates.log_alpha, value, grad)

    def penalty_terms(self, loss: Tensor | float | None = None) -> tuple[Tensor, Tensor | None]:
        """:meth:`penalty`'s value and its gradient in ``gates.log_alpha``, without autograd.

        For trainers that add the pressure after their own backward (the Lightning callback,
        :class:`lumos.integrations.lightning.LumosCallback`): adding ``grad`` to
        ``log_alpha.grad`` is the same as ``(loss + penalty(loss)).backward()``.

        Args:
            loss: as for :meth:`penalty`.

        Returns:
            ``(value, grad)``: a scalar tensor, and a tensor shaped like ``gates.log_alpha``
            (None while the gates are frozen).

        Raises:
            InputError: ``loss`` is not a single number.

        Example::

            value, grad = sm.penalty_terms(loss.detach())
            sm.gates.log_alpha.grad += grad
        """
        scale = self._pressure_scale(loss)
        # A number folds into the coefficients below; a tensor (the first step, before the
        # unit is fixed) multiplies the results. Every term is folded into as few operator
        # calls as it takes: on a small model each call costs more than its arithmetic.
        unit = scale if isinstance(scale, float) else 1.0
        with torch.no_grad():
            keep = self.gates.prob_nonzero()
            size_value: float | Tensor = 0.0
            size_slope = 0.0  # d size term / d cost
            if self.controller is not None or self.lam is not None:
                dense = max(self._budget_dense, 1.0)
                if self.controller is not None:
                    # The budget is on what compaction keeps (deterministic gate > 0), which
                    # can be more than the expected count while gates sit half-open: the
                    # constraint sees the kept fraction's value, with the expected fraction's
                    # gradient.
                    realized = self._realized_fraction(keep.dtype)
                    size_value, size_slope = self.controller.value_and_slope(realized)
                    # what the next step() ascends on (a cache: calling penalty() again in
                    # the same step, e.g. under gradient accumulation, writes the same value)
                    self._pending_fraction = realized if self.training else None
                else:
                    assert self.lam is not None  # no controller: the lam branch of the test
                    size_value = self.lam * self.cost.total(keep, self.budget_on) / dense
                    size_slope = self.lam
                size_slope = size_slope * unit / dense
            strength = 0.0
            if self.feature_penalty > 0 and self._has_feature_gates:
                weights = self._feature_weights(keep.dtype)
                strength = self.feature_penalty * self._feature_ramp() * unit
            if strength:
                value = torch.dot(keep, weights).mul_(strength).add_(size_value * unit)
            elif isinstance(size_value, Tensor):
                value = size_value * unit
            else:
                value = keep.new_tensor(size_value * unit)
            grad = None
            if not self.gates.frozen:
                # d penalty / d keep: the cost's marginal and the feature weights, in one call
                if size_slope:
                    slope = self.cost.marginal(keep, self.budget_on, alpha=size_slope,
                                               add=weights if strength else None,
                                               beta=strength)
                elif strength:
                    slope = weights * strength
                else:
                    slope = torch.zeros_like(keep)
                # times d keep / d log alpha, keep = sigmoid(log alpha - c): one call
                # (0 where shut: keep is 0 there)
                grad = torch.ops.aten.sigmoid_backward(slope, keep)
            if isinstance(scale, Tensor):
                value = value * scale
                grad = None if grad is None else grad * scale
        return value, grad

    #: share of training over which the feature pressure ramps up from 0 (measured: see
    #: docs/architecture.md, "Feature selection has its own pressure")
    FEATURE_WARMUP = 0.1

    def _feature_ramp(self) -> float:
        """0 -> 1 over the first ``FEATURE_WARMUP`` of training: a column the network has not
        learned to use yet has no gradient to defend it, and a closed gate gets none."""
        if self.FEATURE_WARMUP <= 0:
            return 1.0
        if self.controller is not None:
            progress = self.controller.current_progress()
        else:
            progress = self._progress if self._progress is not None else 1.0
        return min(1.0, progress / self.FEATURE_WARMUP)

    def _pressure_scale(self, loss: Tensor | float | None) -> Tensor | float | None:
        """The unit of the pressure: the mean task loss of the first
        ``LOSS_CALIBRATION_STEPS`` steps (see penalty)."""
        if isinstance(loss, Tensor) and loss.numel() != 1:
            raise InputError(
                f"penalty(loss) takes the task loss as one number, got a tensor of shape "
                f"{tuple(loss.shape)}. Reduce it first (loss.mean() or loss.sum()), as you "
                "would before backward().")
        if loss is None or self._loss_scale is not None:
            return self._loss_scale  # fixed after the first steps: no work per step
        if isinstance(loss, Tensor):
            size = loss.detach().reshape(()).to(self.gates.log_alpha.dtype).abs()
        else:
            size = torch.tensor(abs(number(loss, "loss", "the task loss")),
                                dtype=self.gates.log_alpha.dtype)
        size = torch.nan_to_num(size.to(self.gates.log_alpha.device), nan=0.0, posinf=0.0)
        if self.training:
            self._pending_loss = size
        total = size if self._loss_sum is None else self._loss_sum + size
        return (total / (self._loss_count + 1)).clamp_min(torch.finfo(size.dtype).tiny)

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
        """The kept fraction the budget sees, refreshed every ``REALIZED_EVERY`` optimiser
        steps (a pure read between steps: the refresh depends on the step count only)."""
        due = self._realized_calls % self.REALIZED_EVERY == 0
        if self._realized is None or (due and self._refreshed_at != self._realized_calls) \
                or not self.training:
            with torch.no_grad():
                kept = (self.gates.deterministic() > 0).to(dtype)
                self._realized = self.cost.total(kept, self.budget_on) / max(
                    self._budget_dense, 1.0)
            self._realized_value = float(self._realized)  # one device read per refresh
            self._refreshed_at = self._realized_calls
        return self._realized_value

    def step(self) -> None:
        """Move the budget controller once per optimiser step (like an LR scheduler's).

        Call it after ``optimizer.step()``; :func:`lumos.training.train` does. The multipliers
        take their ascent step on the kept fraction the last :meth:`penalty` saw, and the step
        count that paces the kept-fraction refresh advances. :meth:`penalty` itself never
        changes state, so gradient accumulation, ``no_sync`` or logging the penalty do not
        speed the controller up. Optimisers that hold the gates also call it by themselves
        after each ``optimizer.step()`` (a hook), until the first explicit call.
        """
        first = not self._explicit_steps
        self._explicit_steps = True
        if first and self._auto_stepped:  # the hook already stepped for this optimiser step
            self._auto_stepped = False
            return
        self._advance()

    def _optimizer_stepped(self) -> None:
        """The hook: an optimiser holding these gates stepped."""
        if self._explicit_steps:
            return
        self._advance()
        self._auto_stepped = True

    def load_gate_state(self, state: dict) -> None:
        """Load ``state`` (from ``self.gates.state_dict()``) into the gates alone, keeping every
        weight: the tolerance walk reopens an earlier structure without discarding the epochs
        its weights trained since."""
        self.gates.load_state_dict(state)
        self._realized = None

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, with a :class:`CheckpointError` naming what differs
        when the state comes from another model or other ``sparsify`` settings."""
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state_dict and isinstance(own[k], Tensor)
                  and isinstance(state_dict[k], Tensor) and state_dict[k].shape != own[k].shape]
        if shapes or (strict and (missing or unexpected)):
            parts = [f"{len(shapes)} shape(s) differ ({'; '.join(shapes[:3])})"] if shapes else []
            if strict and missing:
                parts.append(f"{len(missing)} key(s) missing ({', '.join(missing[:3])})")
            if strict and unexpected:
                parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
            raise CheckpointError(
                f"this state dict is not of this sparse model: {'; '.join(parts)}. It was saved "
                "from another architecture or with other sparsify settings (gated features, "
                "keep=, example inputs); sparsify the same model the same way, then load it."
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def __setstate__(self, state: dict) -> None:  # unpickled or deep-copied: hook it up too
        super().__setstate__(state)
        _register(self)

    def _advance(self) -> None:
        if self._pending_loss is not None and self._loss_scale is None:
            size, self._pending_loss = self._pending_loss, None
            self._loss_sum = size if self._loss_sum is None else self._loss_sum + size
            self._loss_count += 1
            if self._loss_count >= self.LOSS_CALIBRATION_STEPS:  # one host read per run
                total = self._loss_sum
                if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                    # one unit for every process (each saw its own batches): the gates take
                    # the same steps, and a checkpoint (rank 0's) resumes every rank exactly
                    total = total.clone()
                    dist.all_reduce(total)
                    total = total / dist.get_world_size()
                self._loss_scale = max(float(total) / self._loss_count,
                                       torch.finfo(torch.float32).tiny)
        pending = self._pending_fraction
        if pending is None:
            return  # no penalty was taken since the last step: nothing to ascend on
        if self.controller is not None:
            self.controller.ascend(pending)
        self._realized_calls += 1
        self._pending_fraction = None
        self._steps_taken += 1

    def get_extra_state(self) -> dict:
        # the cached kept fraction and its refresh count travel with the weights, so a run
        # resumed from a checkpoint refreshes on the steps the uninterrupted run did
        return {"realized": self._realized, "realized_calls": self._realized_calls,
                "loss_scale": self._loss_scale, "loss_count": self._loss_count,
                "loss_sum": None if self._loss_sum is None else float(self._loss_sum),
                "latency_weights": self.latency_weights,
                "width_multiple": self.measured_width_multiple}

    def set_extra_state(self, state: dict) -> None:
        realized = state.get("realized")
        self._realized = None if realized is None else realized.to(self.gates.log_alpha.device)
        if realized is not None:
            self._realized_value = float(realized)
        self._realized_calls = int(state.get("realized_calls", 0))
        scale, total = state.get("loss_scale"), state.get("loss_sum")
        self._loss_scale = None if scale is None else float(scale)
        self._loss_count = int(state.get("loss_count", 0))
        self._loss_sum = None if total is None else torch.tensor(
            float(total), dtype=self.gates.log_alpha.dtype, device=self.gates.log_alpha.device)
        self._pending_loss = None
        if state.get("width_multiple") is not None:  # what the first run measured
            self.measured_width_multiple = int(state["width_multiple"])
        weights = state.get("latency_weights")
        if weights is not None:  # what the first run measured, not this machine's times
            self._use_latency_weights(dict(weights))
            self._budget_dense = self.dense_cost(self.budget_on)

    def set_progress(self, fraction: float) -> None:
        """Tell the budget schedule how far training is (0 = start, 1 = end)."""
        fraction = number(fraction, "progress", "a fraction of training in [0, 1]")
        if not 0.0 <= fraction <= 1.0 or not math.isfinite(fraction):
            raise ConfigurationError(f"progress must lie in [0, 1], got {fraction}.")
        opts = self.gate_options
        self._progress = float(fraction)
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
        ``budget`` (default: the model's) of the dense parameters (or FLOPs: ``budget_on``);
        returns how many were shut.

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
        protected = self._keep_a_path_open(kept)
        parts = (self.gates, self.cost, self._budget_dense, self._nonempty_groups, kept,
                 self.feature_mask | protected, budget, self.budget_on)
        if projection.kept_fraction(self.cost, kept, self._budget_dense,
                                    self.budget_on) <= budget:
            if not fill:
                return self._round_widths(protected)
            reopened = projection.reopen_within(*parts)
            if reopened:
                self._realized = None
            return self._round_widths(protected) - reopened
        shut, reached = projection.shut_to_budget(*parts)
        self.gates.shut_gates(torch.nonzero(shut).flatten())
        self._realized = None
        if reached > budget + 1e-9 and not self._warned_unreachable:
            self._warned_unreachable = True
            warnings.warn(self.unreachable_message(budget, reached), LumosWarning, stacklevel=2)
        return int(shut.sum()) + self._round_widths(protected)

    #: group kinds that are a matmul's width (``GateOptions.width_multiple`` rounds them)
    WIDTH_KINDS = ("neuron", "channel", "hidden", "embedding", "rank")

    def _round_widths(self, protected: Tensor) -> int:
        """Shut the weakest open gates of every width group wider than
        ``gate_options.width_multiple`` down to a multiple of it; returns how many. Only ever
        shuts, so a budget that held still holds; ``protected`` gates (a path kept open)
        stay, and a group whose protected gates are more than the multiple below keeps them."""
        multiple = self.width_multiple()
        if multiple <= 1:
            return 0
        kept = self.kept_mask()
        log_alpha = self.gates.log_alpha.detach()
        shut = torch.zeros_like(kept)
        for group in self.graph_info.groups:
            if group.kind not in self.WIDTH_KINDS or group.size <= multiple:
                continue
            sl = slice(group.offset, group.offset + group.size)
            open_ = torch.nonzero(kept[sl]).flatten()
            extra = len(open_) % multiple
            if len(open_) <= multiple or extra == 0:
                continue
            candidates = open_[~protected[sl][open_]]
            weakest = candidates[torch.argsort(log_alpha[sl][candidates])][:extra]
            shut[group.offset + weakest] = True
        if bool(shut.any()):
            self.gates.shut_gates(torch.nonzero(shut).flatten())
            self._realized = None
        return int(shut.sum())

    def width_multiple(self) -> int:
        """The multiple widths are cut to: ``gate_options.width_multiple``, or for ``"auto"``
        what :mod:`lumos.widths` measures on the model's device (once; every process of a
        distributed run uses rank 0's)."""
        multiple = self.gate_options.width_multiple
        if multiple != "auto":
            return int(multiple)
        if self.measured_width_multiple is None:
            dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()),
                         torch.float32)
            measured = [measured_width_multiple(self._device(), dtype)]
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.broadcast_object_list(measured, src=0)
            self.measured_width_multiple = int(measured[0])
        return self.measured_width_multiple

    def _essential_groups(self) -> list:
        return [g for g in self.graph_info.groups
                if getattr(g, "essential", False) and g.kind != "feature"]

    def _keep_a_path_open(self, kept: Tensor) -> Tensor:
        """One gate of every group that is the only way from the inputs to the output, never
        shut by the projection (its strongest kept gate; reopened if training closed them
        all): closing them all would leave a model whose output ignores its inputs."""
        protected = torch.zeros_like(kept)
        log_alpha = self.gates.log_alpha.detach()
        # open, not just kept: a conv keeps one inert channel (gate 0) when all close
        is_open = (self.gates.deterministic().detach() > 0) & kept
        for group in self._essential_groups():
            sl = slice(group.offset, group.offset + group.size)
            open_here = torch.nonzero(is_open[sl]).flatten()
            if len(open_here):
                best = group.offset + int(open_here[torch.argmax(log_alpha[sl][open_here])])
            else:
                best = group.offset + int(torch.argmax(log_alpha[sl]))
                with torch.no_grad():
                    self.gates.log_alpha[best] = projection.log_alpha_for_keep_probability(
                        projection.REOPEN_KEEP_PROBABILITY, self.gates.cfg)
                    self.gates.shut[best] = False
                kept[best] = True
                self._realized = None
            protected[best] = True
        return protected

    def unreachable_message(self, budget: float, reached: float) -> str:
        """Why ``budget`` cannot be met: what is kept whole, and which layers hold the size."""
        pinned = [s for s in self.graph_info.pinned_spaces()
                  if s.pinned is not None and not s.pinned.startswith("model output")]
        origins = [f"'{s.origin}'" for s in pinned]
        if pinned:
            origins[0] += f": {pinned[0].pinned}"
        with torch.no_grad():
            floor = self._keep_alive(
                self._with_a_path(self.kept_mask() & self.feature_mask)).double()
            sizes = self.cost.by_label(floor, self.budget_on)
        dense = max(self._budget_dense, 1.0)
        largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
        holders = [f"'{label}' ({value / dense:.1%})" for label, value in largest if value > 0]
        return projection.unreachable_message(origins, budget, reached, holders, self.budget_on)

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
        return projection.keep_alive(kept, self._nonempty_groups, self.gates.log_alpha)

    def smallest_fraction(self) -> float:
        """The smallest kept fraction (of ``budget_on``) the budget can reach: every
        neuron/channel/head gate closed (one inert channel where torch needs one), the current
        features kept."""
        keep = self._keep_alive(self._with_a_path(self.kept_mask() & self.feature_mask))
        return projection.kept_fraction(self.cost, keep, self._budget_dense, self.budget_on)

    def _with_a_path(self, kept: Tensor) -> Tensor:
        """``kept`` plus the strongest gate of every essential group left without one (what
        the projection keeps open, see :meth:`_keep_a_path_open`)."""
        kept = kept.clone()
        log_alpha = self.gates.log_alpha.detach()
        is_open = (self.gates.deterministic().detach() > 0) & kept
        for group in self._essential_groups():
            sl = slice(group.offset, group.offset + group.size)
            if not bool(is_open[sl].any()):
                kept[group.offset + int(torch.argmax(log_alpha[sl]))] = True
        return kept

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

    def kept_fraction(self, kind: str | None = None) -> float:
        """Fraction of the dense parameters or FLOPs (``kind``; default: what the budget
        measures, ``budget_on``) that compaction would keep now.

        The one place "kept / dense" is computed: training history, tolerance mode and run
        summaries all read it, so they cannot disagree.
        """
        kind = self.budget_on if kind is None else kind
        return projection.kept_fraction(self.cost, self.kept_mask(), self.dense_cost(kind), kind)

    def compacted_counts(self) -> dict[str, float]:
        """Parameters and FLOPs (and the estimated latency in nanoseconds, when it was
        measured: ``budget_on="latency"``) that compaction will leave, from the cost model."""
        keep = self.kept_mask().double()
        kinds = ("params", "flops") + (("latency",) if self.latency_weights is not None else ())
        return {k: float(self.cost.total(keep, k)) for k in kinds}

    def compact(self, inputs: str = "full", verify: bool = True) -> fx.GraphModule:
        """A plain PyTorch module without the closed channels (see :mod:`lumos.compaction`).

        Args:
            inputs: ``"full"`` keeps the call signature (the model picks its kept features
                itself); ``"selected"`` takes only the kept features, in the order of
                :meth:`selected_features`.
            verify: run the compacted and the gated model (eval mode, no grad) on the
                example inputs and raise if they differ beyond float tolerance.

        Returns:
            A ``torch.fx.GraphModule`` of the model's own (smaller) layers, in eval mode.

        Raises:
            ConfigurationError: an unknown ``inputs`` mode.
            CompactionError: ``verify`` found the compacted model differs from the gated one
                (names the first node where they part).
        """
        self._refuse_non_finite()
        self._enforce_a_budget_training_never_settled()
        self._warn_if_an_input_closed()
        small = compaction.compact(self, inputs=inputs)
        if verify:
            verification.verify(self, small, compaction.example_for(self, inputs))
        return small

    def _unsettled_budget(self) -> str | None:
        """Why the budget was never enforced by training, or None when it was."""
        c = self.controller
        if c is None or c.settled or c.budget >= 1.0 or self._steps_taken == 0:
            return None  # (an untrained model compacts to itself: nothing to enforce yet)
        if c.progress < 0:
            return ("training never called sm.set_progress(step / total_steps), so LUMOS did "
                    "not know when training settles and never enforced the budget")
        return (f"training stopped at progress {c.progress:.2f}, before the budget is enforced "
                f"at {c.settle:.2f}")

    def _enforce_a_budget_training_never_settled(self) -> None:
        why = self._unsettled_budget()
        if why is None:
            return
        before = self.kept_fraction()
        self.enforce_budget()
        assert self.controller is not None
        self.controller.settled = True  # enforced: later compacts are quiet
        warnings.warn(
            f"budget={self.budget}: {why}. compact() enforced it now (kept {before:.1%} -> "
            f"{self.kept_fraction():.1%} of {projection.MEASURES[self.budget_on]}) with no "
            "training after it, so the "
            "model may have lost accuracy: call sm.set_progress(step / total_steps) every step "
            "(or use lumos.training.train), and compact after training ends.",
            LumosWarning, stacklevel=3)

    def _refuse_non_finite(self) -> None:
        """A diverged model (NaN/Inf weights or gates) is not handed over as a result."""
        bad = [name for name, p in self.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            shown = ", ".join(f"'{b}'" for b in bad[:4]) + (" ..." if len(bad) > 4 else "")
            raise NonFiniteError(
                f"the sparse model's parameters hold NaN/Inf ({shown}): training diverged, so "
                "there is no model to compact. Check the data and targets for NaN/Inf "
                "(torch.isfinite), lower the learning rate, or clip gradients "
                "(torch.nn.utils.clip_grad_norm_), then train again."
            )

    def _warn_if_an_input_closed(self) -> None:
        open_ = self.gates.deterministic().detach() > 0
        for group in self._essential_groups():
            if not bool(open_[group.offset:group.offset + group.size].any()):
                warnings.warn(
                    f"every channel of '{group.name}' closed, and every path from the inputs "
                    "to the output goes through it: the compacted model's output no longer "
                    "depends on its inputs. Use budget= (LUMOS then keeps one open), a smaller "
                    "lam, or train longer.", LumosWarning, stacklevel=3)
        for name, (_, gates) in self._feature_gates().items():
            if gates is not None and not bool(open_[gates].any()):
                warnings.warn(
                    f"every feature of input '{name}' closed: the compacted model ignores it "
                    "(where the next layer needs an input channel, one column stays with weight "
                    "0). If the input matters, train longer or lower feature_penalty.",
                    LumosWarning, stacklevel=3)

    def report(self) -> str:
        """Widths per layer, features kept, parameters and FLOPs dense -> compacted."""
        from .reporting import report

        why = self._unsettled_budget()
        text = report(self)
        if why is not None:
            text += (f"\n\nwarning: budget={self.budget} not enforced yet: {why}; compact() "
                     "will enforce it without fine-tuning. Call sm.set_progress(step / total).")
        return text

    def extra_repr(self) -> str:
        mode = f"budget={self.budget}" if self.budget is not None else f"lam={self.lam}"
        return f"groups={len(self.graph_info.groups)}, gates={self.gates.num_gates}, {mode}"


