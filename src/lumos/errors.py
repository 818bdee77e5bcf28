"""Exceptions raised by LUMOS.

Every error a user can trigger is a :class:`LumosError` whose message names the problem and the
way out, so nobody has to read a traceback from inside torch to know what to do.
"""

from __future__ import annotations


class LumosError(Exception):
    """Base class of every error LUMOS raises on purpose.

    Catch it to handle any mistake LUMOS detected; the subclasses say which kind. Argument
    errors are also ``ValueError``s, so code that already catches those keeps working.

    Example:
        >>> import lumos
        >>> try:
        ...     lumos.Schedule("exponential")
        ... except lumos.LumosError as error:
        ...     print(type(error).__name__, "-", str(error)[:34])
        ConfigurationError - schedule kind must be one of ('con
        >>> issubclass(lumos.ConfigurationError, ValueError)
        True
    """


class ConfigurationError(LumosError, ValueError):
    """An argument of a LUMOS call is out of range or inconsistent with another one."""


class UntraceableModelError(LumosError):
    """torch.fx could not trace the model (data-dependent control flow, unsupported Python)."""


class UnsupportedModelError(LumosError):
    """The model contains a layer or op that LUMOS cannot gate exactly (raised in strict mode)."""


class InputError(LumosError, ValueError):
    """Inputs do not match what the model was sparsified with, or contain NaN/Inf."""


class CheckpointError(LumosError):
    """A checkpoint or saved run could not be read or written safely."""


class LumosWarning(UserWarning):
    """Something was left ungated or a target may be missed; training still proceeds."""


class CompactionError(LumosError):
    """The compacted model does not compute what the gated model computes (a LUMOS bug or a
    rule that is not exact); the message names the first node where they part."""


class NonFiniteError(LumosError, ArithmeticError):
    """Weights, gates or outputs hold NaN/Inf (training diverged): there is no model to hand
    over, and LUMOS says so instead of returning one."""


def conversion_hint(*values: object) -> str:
    """A sentence on how to turn numpy arrays or pandas tables among ``values`` into tensors
    (empty when there are none): the commonest way to hand LUMOS something not a tensor."""
    kinds = {type(v).__module__.split(".")[0] for v in values}
    if "pandas" in kinds:
        return (" It is a pandas object: convert it with torch.tensor(df.to_numpy(), "
                "dtype=torch.float32).")
    if "numpy" in kinds:
        return (" It is a numpy array: convert it with torch.from_numpy(x).float() (float32, "
                "as torch layers are; from_numpy alone keeps numpy's float64).")
    return ""
