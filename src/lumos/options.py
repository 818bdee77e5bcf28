"""``GateOptions``: the one object that says how gates are shaped, started and trained.

Before, three places configured gates (``HardConcreteConfig`` for the distribution,
``GateOptions`` for the schedules, and loose ``init_keep_probability=`` / ``warmup=``
keywords on ``sparsify``). A user now finds every gate setting here; the old keywords still
work for one release with a ``DeprecationWarning`` (:func:`merge_deprecated`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import ConfigurationError
from .gates import HardConcreteConfig, fully_open_keep_probability
from .schedules import Schedule

#: default strength of the feature-selection pressure (see ``sparsify``): on 13 closed-form
#: laws x 2 budgets x 2 seeds with 12 noise columns, 0.07 closed every noise column and kept
#: every true variable (0.05 kept a noise column once, 0.1 lost a weak true variable once).
DEFAULT_FEATURE_PENALTY = 0.07

_DEFAULT_BETA = HardConcreteConfig.beta
_DEFAULT_STRETCH = (HardConcreteConfig.gamma, HardConcreteConfig.zeta)


@dataclass(frozen=True)
class GateOptions:
    """How the gates are shaped, started and trained.

    The training defaults come from the ablation in ``docs/results/ablation.md``: plain
    hard-concrete noise (``b = 0``) and the paper's temperature, with the last 10% of training
    frozen and fine-tuned.

    Args:
        noise_interval: ``b`` of the uniform draw ``U(b, 1 - b)``; 0 is the plain
            hard-concrete gate, 0.5 a deterministic one; a number or a
            :class:`~lumos.Schedule` over training progress.
        temperature: the hard-concrete temperature beta (a number or a schedule); default 2/3.
        stretch: the stretch interval ``(gamma, zeta)`` with ``gamma < 0 < 1 < zeta``.
        log_alpha_range: clamp log alpha into this range before every step (None: no clamp).
        finetune: the last fraction of training runs with every gate frozen where it is
            (closed ones at 0, kept ones at their deterministic value; budget enforced first),
            without gate noise, so the surviving weights adapt to the final structure.
        gate_lr_scale: the default gate learning rate is ``max(gate_lr_scale * lr, 0.05)``.
        init_keep_probability: initial P(gate open), one number or per group kind
            (``{"feature": 0.9, "default": 0.99}``). At 0.99 a gate draws exactly 1 on ~80%
            of the steps, so early training scales each unit down at random one step in five.
            Where a model trains at a fixed ``budget=`` and that noise costs accuracy (the
            Darcy FNO, the Burgers transformer), starting the units more open
            (``{"feature": 0.99, "neuron": 0.99, "default": 0.9999}``) recovers much of it;
            it hurts the tolerance walk (its first cut ranks units the saturated gates have
            not learned) and, on neurons, feature selection.
            ``docs/results/ablation_init.md`` measures both.
        budget_warmup: fraction of training over which the budget target goes from dense to
            the budget.
        width_multiple: keep every neuron/channel width a multiple of this (1: any width).
            Wherever a ``budget=`` is enforced, each such group wider than it is cut to the
            multiple below by shutting its weakest open gates, so the budget still holds and
            compaction stays exact (a group narrower than it keeps its width). Vector units
            and GEMM kernels favour such widths: measured on this project's CPU, a Linear at
            256 rows ran 169 -> 86 in 51 us and 176 -> 88 in 42 us; 3x3 convolutions showed
            no gain. 8 suits most CPUs and float16 GPUs. ``"auto"``: the multiple this device
            favours, measured once when the model is sparsified (:mod:`lumos.widths`: Linear
            pairs timed at widths 64-191, each against its cut; 1 when no multiple saves 5%
            more time than the width it gives up); the sparse model records it, so a resumed
            run rounds the same way.
        gate_step_every: split steps. 1 (default) is the plain L0 method: every optimiser
            step draws gate noise. ``k > 1``: one step in ``k`` draws it (weights and gates
            learn from it); the other ``k - 1`` run the network on its deterministic gates,
            as evaluated and compacted, and train the weights alone. For models whose
            weights train behind their dense selves through gate noise (a precise PDE
            surrogate): in the tolerance walk the Darcy FNO missed every cut at 1 and kept
            80% of its parameters at 4, within 1% of dense. Not the default because the
            gates then learn on a quarter of the steps: over the 13-workload suite, 4 cut
            the Burgers transformer, CosmoFlow and CT less and dropped 77% of the planted
            noise inputs against 93% (``docs/results/ablation_split/tolerance_rules.md``).
            Any loop gets it: an optimiser step pre-hook drops the gates' gradient on
            deterministic steps and counts the steps.
        fourier_modes: gate the Fourier modes of spectral convs (``lumos.layers``): one gate
            per kept frequency row or column, cut by compaction, so an FNO can shed the modes
            it does not need as well as channels. False gates their channels only.

    Raises:
        ConfigurationError: for any value outside its range (named in the message).

    Example:
        >>> from lumos import GateOptions, Schedule
        >>> opts = GateOptions(noise_interval=Schedule("cosine", 0.0, 0.45), finetune=0.2)
        >>> opts.hard_concrete().beta == 2 / 3
        True
    """

    noise_interval: float | Schedule = 0.0
    temperature: float | Schedule = _DEFAULT_BETA
    stretch: tuple[float, float] = _DEFAULT_STRETCH
    log_alpha_range: tuple[float, float] | None = None
    finetune: float = 0.1
    gate_lr_scale: float = 50.0
    init_keep_probability: float | dict[str, float] = 0.99
    budget_warmup: float = 0.5
    width_multiple: int | str = 1
    fourier_modes: bool = True
    gate_step_every: int = 1

    def __post_init__(self) -> None:
        b = Schedule.of(self.noise_interval)
        for p in (0.0, 0.5, 1.0):
            if not 0.0 <= b(p) <= 0.5:
                raise ConfigurationError(
                    f"noise_interval must stay in [0, 0.5] (0: stochastic, 0.5: deterministic), "
                    f"got {b(p)} at progress {p}."
                )
        if self.temperature is None:  # the old "keep the gate config's" spelling
            object.__setattr__(self, "temperature", _DEFAULT_BETA)
        t = Schedule.of(self.temperature)
        if any(not (t(p) > 0 and math.isfinite(t(p))) for p in (0.0, 0.5, 1.0)):
            raise ConfigurationError("temperature must stay > 0.")
        gamma, zeta = self.stretch
        HardConcreteConfig(t(0.0), gamma, zeta)  # validates the stretch
        if self.log_alpha_range is not None:
            lo, hi = self.log_alpha_range
            if not lo < hi:
                raise ConfigurationError(f"log_alpha_range needs low < high, got {lo}, {hi}.")
        if not 0.0 <= self.finetune < 1.0:
            raise ConfigurationError(f"finetune must be a fraction in [0, 1), got {self.finetune}.")
        if not self.gate_lr_scale > 0:
            raise ConfigurationError(f"gate_lr_scale must be > 0, got {self.gate_lr_scale}.")
        probabilities = (list(self.init_keep_probability.values())
                         if isinstance(self.init_keep_probability, dict)
                         else [self.init_keep_probability])
        if not all(isinstance(p, (int, float)) and 0.0 < p < 1.0 for p in probabilities):
            raise ConfigurationError(
                f"init_keep_probability must lie in (0, 1), got {self.init_keep_probability!r}."
            )
        if not (isinstance(self.budget_warmup, (int, float)) and 0.0 < self.budget_warmup <= 1.0):
            raise ConfigurationError(
                f"budget_warmup must be a fraction in (0, 1], got {self.budget_warmup!r}."
            )
        if self.width_multiple != "auto" and (
                isinstance(self.width_multiple, bool) or not isinstance(self.width_multiple, int)
                or self.width_multiple < 1):
            raise ConfigurationError(
                f"width_multiple must be a whole number >= 1 (1: any width; 8 suits most "
                f"CPUs) or 'auto' (measured on the device), got {self.width_multiple!r}.")
        if (isinstance(self.gate_step_every, bool) or not isinstance(self.gate_step_every, int)
                or self.gate_step_every < 1):
            raise ConfigurationError(
                f"gate_step_every must be a whole number >= 1 (1: gate noise on every step; "
                f"4: one step in 4 draws it, the others train the weights on the deterministic "
                f"gates), got "
                f"{self.gate_step_every!r}.")
        if not isinstance(self.fourier_modes, bool):
            raise ConfigurationError(
                f"fourier_modes must be True or False, got {self.fourier_modes!r}.")

    def fixed_kinds(self) -> dict[str, str]:
        """Unit kinds these options keep whole, with the reason ``report()`` shows."""
        if self.fourier_modes:
            return {}
        return {"mode": "Fourier modes are not gated (GateOptions(fourier_modes=False))"}

    def hard_concrete(self, progress: float = 0.0) -> HardConcreteConfig:
        """The gate distribution at ``progress`` (temperature read from its schedule)."""
        gamma, zeta = self.stretch
        return HardConcreteConfig(Schedule.of(self.temperature)(progress), gamma, zeta)

    def __hash__(self) -> int:
        # a per-kind init dict would make the generated hash fail; options with one stay
        # usable as dict keys and in sets
        return hash(tuple(tuple(sorted(v.items())) if isinstance(v, dict) else v
                          for v in (getattr(self, f.name) for f in fields(self))))

    def starts_half_open(self) -> bool:
        """Whether the initial keep probability leaves deterministic gates below 1."""
        p = self.init_keep_probability
        lowest = min(p.values()) if isinstance(p, dict) else p
        return lowest < fully_open_keep_probability(self.hard_concrete())


_OLD_KEYWORDS = {"gate_config": "temperature/stretch", "init_keep_probability":
                 "init_keep_probability", "warmup": "budget_warmup"}


def merge_deprecated(
    gates: GateOptions | None,
    *,
    gate_config: HardConcreteConfig | None = None,
    init_keep_probability: float | dict[str, float] | None = None,
    warmup: float | None = None,
    stacklevel: int = 3,
) -> GateOptions:
    """``gates`` with the values of ``sparsify``'s deprecated keywords folded in.

    Raises:
        ConfigurationError: ``gates`` is not a :class:`GateOptions`, or a deprecated keyword
            repeats a setting ``gates`` also makes.
    """
    if gates is not None and not isinstance(gates, GateOptions):
        raise ConfigurationError(f"gates= takes a lumos.GateOptions, got {type(gates).__name__}.")
    if gate_config is not None and not isinstance(gate_config, HardConcreteConfig):
        raise ConfigurationError(
            f"gate_config= takes a lumos.HardConcreteConfig, got {type(gate_config).__name__}."
        )
    opts = gates or GateOptions()
    changes: dict[str, Any] = {}  # GateOptions field -> value
    if gate_config is not None:
        changes["temperature"] = gate_config.beta
        changes["stretch"] = (gate_config.gamma, gate_config.zeta)
    if init_keep_probability is not None:
        changes["init_keep_probability"] = init_keep_probability
    if warmup is not None:
        changes["budget_warmup"] = warmup
    if not changes:
        return opts
    given = [k for k, v in (("gate_config", gate_config),
                            ("init_keep_probability", init_keep_probability),
                            ("warmup", warmup)) if v is not None]
    warnings.warn(
        f"sparsify({', '.join(f'{k}=...' for k in given)}) is deprecated and will be removed "
        "in the next release; pass gates=lumos.GateOptions("
        + ", ".join(f"{_OLD_KEYWORDS[k]}=..." for k in given) + ") instead.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    if gates is not None:
        defaults = GateOptions()
        clash = [f.name for f in fields(GateOptions)
                 if f.name in changes and getattr(gates, f.name) != getattr(defaults, f.name)]
        if clash:
            raise ConfigurationError(
                f"{clash} set both in gates=GateOptions(...) and by a deprecated sparsify "
                "keyword; set them in GateOptions only."
            )
    return replace(opts, **changes)


def number(value: object, name: str, expected: str = "a number") -> float:
    """``value`` as a float when it is a real number (int, float, numpy scalar, 0-d tensor);
    a :class:`ConfigurationError` quoting it otherwise (``"0.1"``, ``True``, a list).

    Example:
        >>> import numpy as np
        >>> number(np.float32(0.25), "budget")
        0.25
    """
    def refuse() -> ConfigurationError:
        return ConfigurationError(
            f"{name} must be {expected}, got {value!r} (a {type(value).__name__}); pass a "
            f"number, e.g. {name}=0.25."
        )

    if isinstance(value, (bool, str, bytes)):
        raise refuse()
    try:
        import torch

        if isinstance(value, torch.Tensor):
            if value.numel() != 1 or value.is_complex():
                raise TypeError
            return float(value.item())
        return float(value)  # type: ignore[arg-type]  # numpy scalars, Fractions, Decimals
    except (TypeError, ValueError):
        raise refuse() from None
