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

    def current_progress(self) -> float:
        p = float(self.progress)
        if p >= 0:
            return min(p, 1.0)
        return min(1.0, int(self.steps) / (self.default_warmup_steps / self.warmup))

    def target(self) -> float:
        """Kept fraction aimed at now: 1 at the start, ``budget`` once warm-up is over."""
        ramp = min(1.0, self.current_progress() / self.warmup)
        return 1.0 - (1.0 - self.budget) * ramp

    def forward(self, fraction: Tensor) -> Tensor:
        gap = fraction - self.target()
        over = torch.relu(gap)
        # Clones: the in-place ascent below must not touch tensors saved for backward.
        loss = self.lambda1.clone() * over + self.lambda2.clone() * over.pow(2)
        if self.training:
            with torch.no_grad():
                # Projected ascent: the multipliers grow while over target and shrink back
                # (never below 0) while under it, so they do not stay stale.
                g = gap.detach().to(self.lambda1.dtype)
                self.lambda1.add_(self.multiplier_lr * g).clamp_(min=0.0)
                self.lambda2.add_(self.multiplier_lr * g * g.abs()).clamp_(min=0.0)
                self.steps.add_(1)
        return loss
