"""Budget control: reach a parameter budget without anyone choosing lambda.

CoFiPruning-style Lagrangian. The target size is warmed up linearly from dense to ``budget``;
the penalty is ``l1 * gap + l2 * gap^2`` with ``gap = expected_fraction - target``, and the
multipliers follow gradient *ascent* on that Lagrangian (dL/dl1 = gap, dL/dl2 = gap^2), done
here in place so any user optimizer works unchanged. Both terms are one-sided: a budget is an
upper bound, so being smaller than asked is not punished and never pushes gates open — that
keeps feature gates free to close when the parameter budget is already met.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .errors import ConfigurationError


class BudgetController(nn.Module):
    """Lagrange multipliers and target schedule; state lives in buffers so checkpoints resume."""

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
        self.register_buffer("lambda1", torch.zeros(()))
        self.register_buffer("lambda2", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # progress in [0, 1] set by the training loop; negative means "count steps instead".
        self.register_buffer("progress", torch.full((), -1.0))
        self.register_buffer("settled", torch.zeros((), dtype=torch.bool))
        self._host: dict[str, tuple] = {}

    def host(self, name: str) -> float:
        """The value of scalar buffer ``name`` as a Python number, read from the device only
        when the buffer changed behind our back (a loaded state, a move): the controller runs
        every step, and a device read each time would stall a GPU's queue."""
        t = getattr(self, name)
        key = (t._version, t.data_ptr())
        cached = self._host.get(name)
        if cached is None or cached[0] != key:
            cached = self._host[name] = (key, t.item())
        return cached[1]

    def set_host(self, name: str, value: float) -> None:
        """Write scalar buffer ``name`` and remember its value as the buffer holds it (in its
        dtype: a resumed run reads the buffer, and must see the same number); no device read."""
        t = getattr(self, name)
        stored = torch.tensor(value, dtype=t.dtype).item()
        t.fill_(stored)
        self._host[name] = ((t._version, t.data_ptr()), stored)

    def current_progress(self) -> float:
        p = self.host("progress")
        if p >= 0:
            return min(p, 1.0)
        return min(1.0, self.host("steps") / (self.default_warmup_steps / self.warmup))

    def target(self) -> float:
        """Kept fraction aimed at now: 1 at the start, ``budget`` once warm-up is over."""
        ramp = min(1.0, self.current_progress() / self.warmup)
        return 1.0 - (1.0 - self.budget) * ramp

    def forward(self, fraction: Tensor) -> Tensor:
        """The Lagrangian term for a kept ``fraction``, differentiable in ``fraction``."""
        value, slope = self.value_and_slope(float(fraction))
        return (fraction - fraction.detach()) * slope + value

    @torch.no_grad()
    def value_and_slope(self, fraction: float) -> tuple[float, float]:
        """The Lagrangian term and its derivative in ``fraction`` (for a penalty that applies
        its gradient directly), after which the multipliers take their ascent step (in
        training mode). Plain floats: a handful of scalar operations on every training step,
        where tensor ops would cost microseconds each."""
        gap = float(fraction) - self.target()
        over = max(gap, 0.0)
        l1, l2 = self.host("lambda1"), self.host("lambda2")
        value = l1 * over + l2 * over * over
        slope = l1 + 2.0 * l2 * over if gap > 0 else 0.0
        if self.training:
            rate = self.multiplier_lr
            self.set_host("lambda1", max(l1 + rate * gap, 0.0))
            self.set_host("lambda2", max(l2 + rate * gap * abs(gap), 0.0))
            self.set_host("steps", self.host("steps") + 1)
        return value, slope
