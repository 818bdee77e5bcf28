"""The run configuration: :class:`RunConfig` is the schema (each field's type, default, help
text and range check), and everything that reads, validates, completes and writes one."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigurationError
from ..options import DEFAULT_FEATURE_PENALTY

DEFAULT_BUDGET = 0.25

#: a range check: the value -> None when it is fine, else the rule it breaks ("must be ...")
Check = Callable[[object], "str | None"]


def _at_least_one(value) -> str | None:
    return "must be >= 1" if value is not None and value < 1 else None


def _positive(value) -> str | None:
    ok = value is None or (value > 0 and math.isfinite(value))
    return None if ok else "must be a positive number"


def _non_negative(value) -> str | None:
    return "must be >= 0" if value is not None and value < 0 else None


def _size(value) -> str | None:
    from ..workloads.base import SIZES

    return None if value in SIZES else f"must be one of {list(SIZES)}"


def _budget(value) -> str | None:
    if value is None or 0.0 < value <= 1.0:
        return None
    return "must be a fraction in (0, 1] of the dense parameters, e.g. 0.25"


def _budget_on(value) -> str | None:
    return None if value in ("params", "flops", "latency") else \
        "must be 'params', 'flops' or 'latency'"


def _width_multiple(value) -> str | None:
    ok = value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                             and value >= 1)
    return None if ok else "must be a whole number >= 1 (1: any width) or 'auto' (measured)"


def _tolerance(value) -> str | None:
    if value is None or 0.0 < value < 1.0:
        return None
    return "must be a relative loss in (0, 1), e.g. 0.01 for 1%"


def _warmup(value) -> str | None:
    return None if 0.0 < value <= 1.0 else "must be a fraction in (0, 1]"


def _device(value) -> str | None:
    if value == "auto":
        return None
    try:
        torch.device(value)
    except RuntimeError:
        return "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"
    return None


_REQUIRED = object()


def _key(default, help: str, check: Check | None = None):
    """A config key: its default (``_REQUIRED``: none), help text and range check."""
    metadata = {"help": help, "check": check}
    if default is _REQUIRED:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    """A validated run configuration (see :data:`SCHEMA`); None means "the recipe's value".

    The fields are the schema: their order is the order of the config file, their annotation
    the accepted type, their metadata the help text and the range check.
    """

    workload: str = _key(_REQUIRED, "a built-in workload name (lumos workloads) or "
                         "'package.module:OBJECT'")
    size: str = _key("full", "'smoke' (seconds) or 'full' (the real problem)", _size)
    seed: int = _key(0, "seed of data generation, model initialisation, batch order and gates")
    budget: float | None = _key(None, "keep at most this fraction of the dense parameters "
                                "(0, 1]", _budget)
    budget_on: str = _key("params", "what budget measures: 'params' (parameter count), "
                          "'flops' (multiply-adds of a forward on the example inputs) or "
                          "'latency' (layer times measured once on the device)",
                          _budget_on)
    width_multiple: int | str = _key(1, "keep gated widths at multiples of this (1: any "
                                     "width; 'auto': the multiple this device runs fastest, "
                                     "measured once, lumos.widths)", _width_multiple)
    tolerance: float | None = _key(None, "instead of budget: smallest model within this "
                                   "relative loss of the dense validation metric", _tolerance)
    epochs: int | None = _key(None, "training epochs (default: the workload's recipe)",
                              _at_least_one)
    batch_size: int | None = _key(None, "batch size per process (default: the recipe)",
                                  _at_least_one)
    lr: float | None = _key(None, "learning rate of the weights (default: the recipe)",
                            _positive)
    weight_decay: float | None = _key(None, "weight decay of the weights (default: the recipe)",
                                      _non_negative)
    gate_lr: float | None = _key(None, "learning rate of the gates (default: max(50 * lr, "
                                 "0.05))", _positive)
    feature_penalty: float = _key(DEFAULT_FEATURE_PENALTY, "strength of the feature-selection "
                                  "pressure", _non_negative)
    warmup: float = _key(0.5, "fraction of training over which the budget target is reached",
                         _warmup)
    grad_clip: float | None = _key(None, "clip the gradient norm to this value", _positive)
    device: str = _key("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'", _device)
    threads: int | None = _key(None, "torch intra-op threads per process (default: torch's "
                               "choice)", _at_least_one)
    checkpoint_every: int = _key(0, "also checkpoint every this many steps inside an epoch (0: "
                                 "only after each epoch)", _non_negative)
    keep_checkpoints: int = _key(2, "how many of the newest checkpoints to keep", _at_least_one)
    dense_baseline: bool = _key(False, "also train the dense model with the same recipe, to "
                                "compare")
    record_gates: bool = _key(True, "record every gate's keep probability after each epoch")
    plots: bool = _key(True, "draw the PNG plots")
    cache_dir: str | None = _key(None, "where generated workload data are cached (default: "
                                 "$LUMOS_CACHE or ~/.cache/lumos)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: keys ``--resume`` may change: where and how the run computes and keeps its files, never
#: what it trains (moving a run to another machine, another cache, more threads)
RESUME_MAY_CHANGE = frozenset({"cache_dir", "device", "threads", "plots", "keep_checkpoints",
                               "checkpoint_every"})


def resume_compared(config: dict) -> dict:
    """The part of a configuration a resumed run must share with the run it continues."""
    return {k: v for k, v in config.items() if k not in RESUME_MAY_CHANGE}


#: keys of a run configuration: name -> (accepted type, help text), in file order; read off
#: :class:`RunConfig`'s fields (``"float|None"`` from the annotation ``float | None``)
SCHEMA: dict[str, tuple[str, str]] = {
    f.name: (str(f.type).replace(" ", ""), f.metadata["help"])
    for f in dataclasses.fields(RunConfig)
}
_CHECKS: dict[str, Check] = {
    f.name: f.metadata["check"] for f in dataclasses.fields(RunConfig) if f.metadata["check"]
}


# ---- validation --------------------------------------------------------------------------------
def _type_ok(value, kind: str) -> bool:
    for option in kind.split("|"):
        if option == "None" and value is None:
            return True
        if option == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option == "bool" and isinstance(value, bool):
            return True
        if option == "str" and isinstance(value, str):
            return True
    return False


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false",
               "str": "a string", "None": "null"}


def _describe(kind: str) -> str:
    return " or ".join(_TYPE_WORDS[k] for k in kind.split("|"))


def validate_config(raw: dict, source: str = "the configuration") -> RunConfig:
    """Check keys, types and ranges; every message names the key, the value and the fix."""
    unknown = [k for k in raw if k not in SCHEMA]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), SCHEMA, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigurationError(
            f"unknown key '{key}' in {source}{hint}; allowed keys: {', '.join(SCHEMA)}."
        )
    if "workload" not in raw or raw["workload"] in (None, ""):
        raise ConfigurationError(
            f"{source} has no 'workload': name a built-in workload (see `lumos workloads`) or "
            "'package.module:OBJECT' for your own lumos.workloads.Workload."
        )
    for key, value in raw.items():
        kind = SCHEMA[key][0]
        if not _type_ok(value, kind):
            raise ConfigurationError(
                f"'{key}' in {source} must be {_describe(kind)}, got {value!r} "
                f"({type(value).__name__}); {SCHEMA[key][1]}."
            )
    values = {k: (float(v) if SCHEMA[k][0].startswith("float") and v is not None else v)
              for k, v in raw.items()}
    config = RunConfig(**values)
    _check_ranges(config, source)
    return config


def _check_ranges(c: RunConfig, source: str) -> None:
    """Each key's own range check (in file order) and that budget and tolerance are not both
    given."""
    for key, check in _CHECKS.items():
        if key == "budget" and c.budget is not None and c.tolerance is not None:
            raise ConfigurationError(
                f"{source} gives both 'budget' and 'tolerance'; they are two ways to ask for a "
                "size: keep one of them."
            )
        rule = check(getattr(c, key))
        if rule is not None:
            raise ConfigurationError(f"'{key}' in {source} {rule}, got {getattr(c, key)!r}.")


# ---- reading, completing and writing -----------------------------------------------------------
def read_config_file(path: str | os.PathLike) -> dict:
    """The mapping in a YAML (or JSON) config file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(
            f"config file {path} not found; give an existing YAML file or a workload name "
            "(see `lumos workloads`)."
        )
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is a dependency
        raise ConfigurationError("YAML configs need pyyaml: pip install pyyaml.") from exc
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigurationError(f"config file {path} is not valid YAML{where}: "
                                 f"{getattr(exc, 'problem', exc)}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"config file {path} must hold a mapping of keys to values (key: value lines), "
            f"not a {type(data).__name__}."
        )
    return data


def load_config(source: str | os.PathLike | dict, **overrides) -> RunConfig:
    """A config from a YAML file, a workload name or a dict; non-None ``overrides`` win."""
    if isinstance(source, dict):
        raw, where = dict(source), "the configuration"
    elif str(source).endswith((".yaml", ".yml", ".json")) or Path(source).is_file():
        raw, where = read_config_file(source), f"config file {source}"
    else:
        raw, where = {"workload": str(source)}, "the command line"
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if "budget" in overrides and overrides["budget"] is not None:
        raw.pop("tolerance", None)
    if "tolerance" in overrides and overrides["tolerance"] is not None:
        raw.pop("budget", None)
    return validate_config(raw, where)


#: the keys a config may leave to the workload's recipe (None: the recipe's value)
RECIPE_KEYS = ("epochs", "batch_size", "lr", "weight_decay")


def resolved(config: RunConfig, workload=None) -> RunConfig:
    """The config with the recipe's values filled in (what the run really used)."""
    from .catalog import resolve_workload

    workload = workload or resolve_workload(config.workload)
    recipe = workload.recipes[config.size]
    filled = dataclasses.replace(config)
    for key in RECIPE_KEYS:
        if getattr(filled, key) is None:
            setattr(filled, key, getattr(recipe, key))
    if filled.budget is None and filled.tolerance is None:
        filled.budget = DEFAULT_BUDGET
    return filled


def recipe_of(config: RunConfig, workload=None):
    """The training recipe a resolved config describes (a :class:`~lumos.workloads.TrainRecipe`);
    the learning-rate schedule is the workload's recipe's (a config sets the rate, not its
    shape)."""
    from ..workloads import TrainRecipe
    from .catalog import resolve_workload

    workload = workload or resolve_workload(config.workload)
    schedule = workload.recipes[config.size].lr_schedule
    return TrainRecipe(**{key: getattr(config, key) for key in RECIPE_KEYS},
                       lr_schedule=schedule)


def write_config(config: RunConfig, path: Path) -> None:
    """The resolved config as YAML, each key under a comment with its help text."""
    import yaml

    from .. import __version__

    lines = [f"# LUMOS {__version__} run configuration (resolved: every default filled in)\n"]
    for key, value in config.to_dict().items():
        lines.append(f"# {SCHEMA[key][1]}\n")
        lines.append(yaml.safe_dump({key: value}, default_flow_style=False))
    from ..checkpoint import write_atomic

    write_atomic(path, "".join(lines))
