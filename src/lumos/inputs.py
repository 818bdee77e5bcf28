"""The model's inputs: binding a call to the traced signature, checking it, naming features.

``sparsify`` reads the example inputs once (which arguments carry features, along which dim,
under which names); the ``SparseModel`` checks every later call against what it learned here,
so a batch with the wrong columns, dtype or NaNs gets an :class:`~lumos.InputError` that names
the input and the fix instead of a shape error from deep inside torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import ConfigurationError, InputError, conversion_hint


def as_call(example_inputs) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a call from a tensor, a tuple/list of positionals or a dict."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise ConfigurationError(
        f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword "
        f"inputs, got {type(example_inputs).__name__}.{conversion_hint(example_inputs)}"
    )


def check_finite(name: str, value, when: str) -> None:
    """Raise :class:`InputError` when a floating tensor holds NaN or Inf.

    This runs on every forward of a SparseModel, so it first reads one sum (a NaN or Inf
    anywhere makes it non-finite; one pass over the input, where ``isfinite(x).all()`` makes
    five: 1.5 ms a step on the CT images) and checks element-wise only when the sum is not
    finite, which an overflowing sum of finite values also is.
    """
    if isinstance(value, Tensor) and value.is_floating_point() and value.numel() and \
            not bool(torch.isfinite(value.sum(dtype=_sum_dtype(value.dtype)))) and \
            not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise InputError(
            f"input '{name}' of the {when} contains {bad} NaN/Inf value(s). LUMOS cannot learn "
            "gates from non-finite data: drop or impute those rows (e.g. torch.nan_to_num, or "
            "filter with torch.isfinite(x).all(dim=-1)) before passing them."
        )


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are summed in float32, so an ordinary batch does not overflow."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


#: values that can only steer Python (never flow as data): traced as constants
CONSTANT_TYPES = (bool, str, type(None), torch.dtype)


def traced_constants(signature: inspect.Signature, values: dict) -> dict:
    """Arguments traced as constants: every None, flag, mode name or dtype (``mask=None``,
    ``is_causal=False``), so ``if flag:`` follows the example's branch. Numbers stay inputs:
    they may be data (a scale, a size); Python that branches or loops on them is traced on
    their example value with a run-time guard (:mod:`lumos.topology.known_values`)."""
    out = {}
    for name, value in values.items():
        param = signature.parameters[name]
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if isinstance(value, CONSTANT_TYPES):
            out[name] = value
    return out


def bind_example(model: torch.nn.Module, example_inputs) -> tuple[inspect.Signature, dict]:
    """The forward signature of ``model`` and the example's value for each argument."""
    args, kwargs = as_call(example_inputs)
    signature = inspect.signature(model.forward)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InputError(
            f"example_inputs do not match {type(model).__name__}.forward{signature}: {exc}."
        ) from None
    bound.apply_defaults()
    for name, value in bound.arguments.items():
        check_finite(name, value, "example inputs")
    tensors = {n: v for n, v in bound.arguments.items() if isinstance(v, Tensor)}
    if tensors and all(v.numel() == 0 for v in tensors.values()):
        shapes = ", ".join(f"'{n}' {tuple(v.shape)}" for n, v in tensors.items())
        raise InputError(
            f"the example inputs hold no values ({shapes}): LUMOS runs the model on them to "
            "read its layers and the sizes its forward computes. Pass a few real samples, "
            "shaped as real batches.")
    return signature, dict(bound.arguments)


def feature_arguments(features: bool | str | Sequence[str] | None, names: list[str]) -> set[str]:
    """Which forward arguments ``features=`` asks to gate."""
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


def feature_names_for(feature_names, feature_inputs: dict[str, int],
                      values: dict[str, object]) -> dict[str, list[str]]:
    """``feature_names=`` (a list for the one gated input, or a dict) checked and normalised."""
    if feature_names is None:
        return {}
    if isinstance(feature_names, str) or (isinstance(feature_names, dict) and any(
            isinstance(v, str) for v in feature_names.values())):
        raise ConfigurationError(
            f"feature_names={feature_names!r} is a string; pass one name per column, e.g. "
            "feature_names=['rho', 'v', 'Cd'] (a string would be split into letters)."
        )
    if not isinstance(feature_names, dict):
        if len(feature_inputs) != 1:
            raise ConfigurationError(
                "feature_names given as a list but the model has "
                f"{len(feature_inputs)} gated inputs {list(feature_inputs)}; pass a dict "
                "{argument name: [names]}."
            )
        feature_names = {next(iter(feature_inputs)): feature_names}
    out = {}
    for arg, names in feature_names.items():
        if arg not in feature_inputs:
            raise ConfigurationError(
                f"feature_names given for '{arg}', which is not a gated input "
                f"(gated: {list(feature_inputs)})."
            )
        names = [str(n) for n in names]
        value = values[arg]
        assert isinstance(value, Tensor)
        size = value.shape[feature_inputs[arg]]
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


@dataclass
class InputSpec:
    """What a sparse model's calls must look like, learned from the example inputs.

    ``feature_dims``: per gated input, ``(dim, number of features)``; ``constants``: arguments
    traced as constants (None, or a flag left at its default), which later calls must repeat.
    """

    signature: inspect.Signature
    example_args: tuple
    feature_dims: dict[str, tuple[int, int]] = field(default_factory=dict)
    constants: dict[str, object] = field(default_factory=dict)
    #: ``*args`` / ``**kwargs`` of the forward: empty in the example, so empty in every call
    variadic: tuple[str, ...] = ()

    @property
    def absent(self) -> tuple[str, ...]:
        """Optional arguments that were None in the example."""
        return tuple(k for k, v in self.constants.items() if v is None)

    def bind(self, args: tuple, kwargs: dict, training: bool) -> list:
        """The call's values in graph order, checked against the example."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InputError(
                f"the inputs do not match the model's forward signature {self.signature}: {exc}."
            ) from None
        bound.apply_defaults()
        for name in self.variadic:
            if bound.arguments.get(name):
                raise InputError(
                    f"the call passes values through the forward's variadic '{name}', which "
                    "were empty in example_inputs; the sparse model was traced without them."
                )
        values = [v for k, v in bound.arguments.items() if k not in self.variadic]
        for name, constant in self.constants.items():
            value = bound.arguments[name]
            if value is not constant and not (type(value) is type(constant)
                                              and value == constant):
                if constant is None:
                    raise InputError(
                        f"argument '{name}' was None in example_inputs, so the sparse model was "
                        f"built for {name}=None; to use it, sparsify with example_inputs that "
                        f"include '{name}'."
                    )
                raise InputError(
                    f"argument '{name}' was left at {constant!r} in example_inputs, so the "
                    f"sparse model was traced for {name}={constant!r} and got {value!r}; "
                    f"sparsify with example_inputs that pass {name}={value!r} (a dict of "
                    "keyword inputs), one sparse model per setting."
                )
        for name, (dim, size) in self.feature_dims.items():
            value = bound.arguments.get(name)
            if not isinstance(value, Tensor):
                raise InputError(f"input '{name}' must be a tensor, got {type(value).__name__}."
                                 + conversion_hint(value))
            if value.dim() < -dim or value.shape[dim] != size:
                raise InputError(
                    f"input '{name}' has shape {tuple(value.shape)} but the model was sparsified "
                    f"with {size} features along dim {dim}; pass inputs with the same feature "
                    "columns (in the same order) as example_inputs."
                )
            check_finite(name, value, "training batch" if training else "call")
        return values

    def dtype_mismatch(self, values: list, weight_dtype: torch.dtype) -> str | None:
        """Why a failed call failed, if an input's dtype differs from the example's."""
        for name, value, example in zip(self.signature.parameters, values, self.example_args):
            if isinstance(value, Tensor) and isinstance(example, Tensor) and \
                    value.dtype != example.dtype and value.dtype != weight_dtype:
                return (f"input '{name}' has dtype {value.dtype} but the model was sparsified "
                        f"with {example.dtype} example inputs and its weights are "
                        f"{weight_dtype}; convert it, e.g. {name}.to({example.dtype}).")
        return None
