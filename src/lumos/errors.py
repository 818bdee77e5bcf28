"""Exceptions raised by LUMOS.

Every error a user can trigger is a :class:`LumosError` whose message names the problem and the
way out, so nobody has to read a traceback from inside torch to know what to do.
"""

from __future__ import annotations


class LumosError(Exception):
    """Base class of every error LUMOS raises on purpose."""


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
