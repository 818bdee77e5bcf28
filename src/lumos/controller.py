"""Budget control: reach a parameter budget without anyone choosing lambda.

CoFiPruning-style Lagrangian. The target size is warmed up linearly from dense to ``budget``;
the penalty is ``l1 * gap + l2 * gap^2`` with ``gap = expected_fraction - target``, and the
multipliers follow gradient *ascent* on that Lagrangian (dL/dl1 = gap, dL/dl2 = gap^2), done
here in place so any user optimizer works unchanged. Both terms are one-sided: a budget is an
upper bound, so being smaller than asked is not punished and never pushes gates open — that
keeps feature gates free to close when the parameter budget is already met.
"""

from __future__ import annotations

from torch import Tensor, nn

from .errors import ConfigurationError


class BudgetController(nn.Module):
    """Lagrange multipliers and target schedule.

    The state is a handful of Python numbers carried in the module's extra state (so
    ``state_dict``/checkpoints resume it exactly), not tensors: it is read and written on
    every training step, where tensor ops and device reads would cost more than the maths,
    and it is identical on every DDP rank by construction (nothing to broadcast).
    """

    def __init__(
        self,
        budget: float,
        warmup: float = 0.5,
        multiplier_lr: float = 0.05,
        default_warmup_steps: int = 1000,
        settle: float = 0.9,
    ) -> None:
        super().__init__()
        if not 0.0 < warmup <= 1.0:
            raise ConfigurationError(f"budget warm-up must be a fraction in (0, 1], got {warmup}.")
        self.budget = float(budget)
        self.warmup = float(warmup)
        self.multiplier_lr = float(multiplier_lr)
        self.default_warmup_steps = int(default_warmup_steps)
        #: from this training progress on, the budget is enforced exactly (see SparseModel)
        self.settle = float(settle)
        self.lambda1 = 0.0
        self.lambda2 = 0.0
        self.steps = 0
        #: progress in [0, 1] set by the training loop; negative means "count steps instead"
        self.progress = -1.0
        self.settled = False

    _STATE = ("lambda1", "lambda2", "steps", "progress", "settled")

    def get_extra_state(self) -> dict:
        return {name: getattr(self, name) for name in self._STATE}

    def set_extra_state(self, state: dict) -> None:
        self.lambda1 = float(state["lambda1"])
        self.lambda2 = float(state["lambda2"])
        self.steps = int(state["steps"])
        self.progress = float(state["progress"])
        self.settled = bool(state["settled"])

    def current_progress(self) -> float:
        if self.progress >= 0:
            return min(self.progress, 1.0)
        return min(1.0, self.steps / (self.default_warmup_steps / self.warmup))

    def target(self) -> float:
        """Kept fraction aimed at now: 1 at the start, ``budget`` once warm-up is over."""
        ramp = min(1.0, self.current_progress() / self.warmup)
        return 1.0 - (1.0 - self.budget) * ramp

    def forward(self, fraction: Tensor) -> Tensor:
        """The Lagrangian term for a kept ``fraction``, differentiable in ``fraction``."""
        value, slope = self.value_and_slope(float(fraction))
        return (fraction - fraction.detach()) * slope + value

    def value_and_slope(self, fraction: float) -> tuple[float, float]:
        """The Lagrangian term and its derivative in ``fraction``, for a penalty that applies
        its gradient directly. A pure query: the multipliers move only in :meth:`ascend`."""
        gap = float(fraction) - self.target()
        over = max(gap, 0.0)
        l1, l2 = self.lambda1, self.lambda2
        value = l1 * over + l2 * over * over
        slope = l1 + 2.0 * l2 * over if gap > 0 else 0.0
        return value, slope

    def ascend(self, fraction: float) -> None:
        """One step of gradient ascent on the multipliers for the kept ``fraction`` the last
        penalty saw (once per optimiser step): they grow while over target and shrink back
        (never below 0) while under it, so they do not stay stale."""
        gap = float(fraction) - self.target()
        self.lambda1 = max(self.lambda1 + self.multiplier_lr * gap, 0.0)
        self.lambda2 = max(self.lambda2 + self.multiplier_lr * gap * abs(gap), 0.0)
        self.steps += 1
