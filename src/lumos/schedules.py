"""Schedules over training progress (0 = start, 1 = end) for gate hyper-parameters.

Used for the hard-concrete noise interval ``b`` (uniform draw from ``[b, 1 - b]``) and the
temperature ``beta``. Progress is what ``SparseModel.set_progress`` receives, so a schedule is
the same whether the loop counts steps or epochs, and the same on every DDP rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigurationError

KINDS = ("constant", "linear", "cosine", "step")


@dataclass(frozen=True)
class Schedule:
    """``start`` -> ``end`` between progress ``begin`` and ``finish``; flat outside.

    ``kind``: ``constant`` (always ``start``), ``linear``, ``cosine`` (half cosine, slow at
    both ends) or ``step`` (``start`` until ``finish``, then ``end``).

    Example:
        >>> from lumos import Schedule
        >>> b = Schedule("linear", start=0.0, end=0.4, begin=0.5)
        >>> [b(p) for p in (0.0, 0.5, 0.75, 1.0)]
        [0.0, 0.0, 0.2, 0.4]
        >>> Schedule("step", 1.0, 0.5, finish=0.9)(0.95)
        0.5
        >>> Schedule.of(2 / 3)
        Schedule(kind='constant', start=0.6666666666666666, end=None, begin=0.0, finish=1.0)
    """

    kind: str = "constant"
    start: float = 0.0
    end: float | None = None
    begin: float = 0.0
    finish: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigurationError(f"schedule kind must be one of {KINDS}, got {self.kind!r}.")
        if not 0.0 <= self.begin <= self.finish <= 1.0:
            raise ConfigurationError(
                f"schedule needs 0 <= begin <= finish <= 1, got begin={self.begin}, "
                f"finish={self.finish}."
            )
        for v in (self.start, self.end):
            if v is not None and not math.isfinite(v):
                raise ConfigurationError(f"schedule values must be finite, got {v}.")

    def __call__(self, progress: float) -> float:
        end = self.start if self.end is None else self.end
        if self.kind == "constant":
            return self.start
        if self.kind == "step":
            return self.start if progress < self.finish else end
        span = self.finish - self.begin
        t = 1.0 if span == 0 else min(1.0, max(0.0, (progress - self.begin) / span))
        if self.kind == "cosine":
            t = 0.5 * (1.0 - math.cos(math.pi * t))
        return self.start + (end - self.start) * t

    @staticmethod
    def of(value: float | Schedule) -> Schedule:
        """A number is a constant schedule; a ``Schedule`` is returned as it is.

        Example:
            >>> Schedule.of(0.1)(0.5)
            0.1
        """
        if isinstance(value, Schedule):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return Schedule("constant", float(value))
        raise ConfigurationError(
            f"expected a number or a lumos.Schedule, got {type(value).__name__}."
        )
