"""``lumos fit``: train a workload (or a YAML config) into a self-describing run directory.

A run directory holds everything needed to read, continue or ship the result::

    RUN_DIR/
      config.yaml       the resolved configuration (every default filled in)
      metrics.csv       one row per epoch (loss, penalty, kept fraction, validation metrics)
      metrics.json      history, final metrics (sparse, compacted, dense baseline), sizes,
                        feature ranking, per-group widths, gate trajectories
      report.txt        the human summary (``lumos report`` prints it)
      checkpoints/      resumable checkpoints (weights-only files + index.json with SHA-256)
      model/            compacted.pt (the plain compacted module, a full pickle) and
                        state_dict.pt (its weights, loadable with weights_only=True)
      plots/            gates.png, widths.png, features.png, metric_vs_params.png

The same entry point runs under ``torchrun``: every rank trains, rank 0 writes the files.
See ``docs/runs.md`` for the configuration schema.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import importlib
import importlib.util
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from . import distributed
from .errors import ConfigurationError, LumosError
from .sparse_model import DEFAULT_FEATURE_PENALTY

#: keys of a run configuration: name -> (accepted type, help text). Order = file order.
SCHEMA: dict[str, tuple[str, str]] = {
    "workload": ("str", "a built-in workload name (lumos workloads) or 'package.module:OBJECT'"),
    "size": ("str", "'smoke' (seconds) or 'full' (the real problem)"),
    "seed": ("int", "seed of data generation, model initialisation, batch order and gates"),
    "budget": ("float|None", "keep at most this fraction of the dense parameters (0, 1]"),
    "tolerance": ("float|None", "instead of budget: smallest model within this relative "
                  "loss of the dense validation metric"),
    "epochs": ("int|None", "training epochs (default: the workload's recipe)"),
    "batch_size": ("int|None", "batch size per process (default: the recipe)"),
    "lr": ("float|None", "learning rate of the weights (default: the recipe)"),
    "weight_decay": ("float|None", "weight decay of the weights (default: the recipe)"),
    "gate_lr": ("float|None", "learning rate of the gates (default: max(50 * lr, 0.05))"),
    "feature_penalty": ("float", "strength of the feature-selection pressure"),
    "warmup": ("float", "fraction of training over which the budget target is reached"),
    "grad_clip": ("float|None", "clip the gradient norm to this value"),
    "device": ("str", "'auto', 'cpu', 'cuda' or 'cuda:N'"),
    "threads": ("int|None", "torch intra-op threads per process (default: torch's choice)"),
    "checkpoint_every": ("int", "also checkpoint every this many steps inside an epoch (0: "
                         "only after each epoch)"),
    "keep_checkpoints": ("int", "how many of the newest checkpoints to keep"),
    "dense_baseline": ("bool", "also train the dense model with the same recipe, to compare"),
    "record_gates": ("bool", "record every gate's keep probability after each epoch"),
    "plots": ("bool", "draw the PNG plots"),
    "cache_dir": ("str|None", "where generated workload data are cached (default: "
                  "$LUMOS_CACHE or ~/.cache/lumos)"),
}

DEFAULT_BUDGET = 0.25


@dataclass
class RunConfig:
    """A validated run configuration (see :data:`SCHEMA`); None means "the recipe's value"."""

    workload: str
    size: str = "full"
    seed: int = 0
    budget: float | None = None
    tolerance: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    gate_lr: float | None = None
    feature_penalty: float = DEFAULT_FEATURE_PENALTY
    warmup: float = 0.5
    grad_clip: float | None = None
    device: str = "auto"
    threads: int | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    dense_baseline: bool = False
    record_gates: bool = True
    plots: bool = True
    cache_dir: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- configuration -----------------------------------------------------------------------------
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
    from .workloads.base import SIZES

    def bad(key: str, rule: str) -> ConfigurationError:
        return ConfigurationError(f"'{key}' in {source} {rule}, got {getattr(c, key)!r}.")

    if c.size not in SIZES:
        raise bad("size", f"must be one of {list(SIZES)}")
    if c.budget is not None and c.tolerance is not None:
        raise ConfigurationError(
            f"{source} gives both 'budget' and 'tolerance'; they are two ways to ask for a "
            "size: keep one of them."
        )
    if c.budget is not None and not 0.0 < c.budget <= 1.0:
        raise bad("budget", "must be a fraction in (0, 1] of the dense parameters, e.g. 0.25")
    if c.tolerance is not None and not 0.0 < c.tolerance < 1.0:
        raise bad("tolerance", "must be a relative loss in (0, 1), e.g. 0.01 for 1%")
    for key in ("epochs", "batch_size", "keep_checkpoints", "threads"):
        value = getattr(c, key)
        if value is not None and value < 1:
            raise bad(key, "must be >= 1")
    for key in ("lr", "gate_lr", "grad_clip"):
        value = getattr(c, key)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise bad(key, "must be a positive number")
    for key in ("weight_decay", "feature_penalty", "checkpoint_every"):
        value = getattr(c, key)
        if value is not None and value < 0:
            raise bad(key, "must be >= 0")
    if not 0.0 < c.warmup <= 1.0:
        raise bad("warmup", "must be a fraction in (0, 1]")
    if c.device != "auto":
        try:
            torch.device(c.device)
        except RuntimeError:
            raise bad("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'") from None


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


def resolve_workload(name: str):
    """A :class:`~lumos.workloads.Workload` from a built-in name or ``'module:attribute'``."""
    from .workloads import Workload, get_workload

    if ":" not in name:
        return get_workload(name)
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"workload '{name}': cannot import module '{module_name}' ({exc}); check that it "
            "is on PYTHONPATH."
        ) from None
    workload = getattr(module, attr, None)
    if not isinstance(workload, Workload):
        raise ConfigurationError(
            f"workload '{name}': '{attr}' in {module_name} must be a lumos.workloads.Workload, "
            f"got {type(workload).__name__}."
        )
    return workload


def resolved(config: RunConfig, workload=None) -> RunConfig:
    """The config with the recipe's values filled in (what the run really used)."""
    workload = workload or resolve_workload(config.workload)
    recipe = workload.recipes[config.size]
    filled = dataclasses.replace(config)
    for key in ("epochs", "batch_size", "lr", "weight_decay"):
        if getattr(filled, key) is None:
            setattr(filled, key, getattr(recipe, key))
    if filled.budget is None and filled.tolerance is None:
        filled.budget = DEFAULT_BUDGET
    return filled


def write_config(config: RunConfig, path: Path) -> None:
    import yaml

    from . import __version__

    lines = [f"# LUMOS {__version__} run configuration (resolved: every default filled in)\n"]
    for key, value in config.to_dict().items():
        lines.append(f"# {SCHEMA[key][1]}\n")
        lines.append(yaml.safe_dump({key: value}, default_flow_style=False))
    path.write_text("".join(lines))


# ---- run directory -----------------------------------------------------------------------------
def _prepare_run_dir(out: Path, resume: bool) -> None:
    """Create ``out`` or refuse it, before any data are generated or any step is trained."""
    has_run = (out / "checkpoints" / "index.json").exists()
    if has_run and not resume:
        raise ConfigurationError(
            f"{out} already holds a run; continue it with --resume, or choose a new folder "
            "with --out DIR."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        for sub in ("checkpoints", "model", "plots"):
            (out / sub).mkdir(exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"lumos")
        probe.unlink()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write to the output folder {out} ({exc.strerror or exc}); choose a "
            "writable folder with --out DIR."
        ) from None
    free = shutil.disk_usage(out).free
    if free < 50 * 1024 * 1024:
        raise ConfigurationError(
            f"only {free / 1e6:.1f} MB are free where {out} lives; a run needs room for its "
            "checkpoints and model: free some space or choose another folder with --out DIR."
        )


def _check_resume_config(out: Path, config: RunConfig) -> None:
    saved_path = out / "config.yaml"
    if not (saved_path.exists() and (out / "checkpoints" / "index.json").exists()):
        return
    saved = validate_config(read_config_file(saved_path), f"config file {saved_path}")
    if saved.to_dict() != config.to_dict():
        diff = [k for k in config.to_dict() if getattr(saved, k) != getattr(config, k)]
        raise ConfigurationError(
            f"--resume with a different configuration than the run in {out} "
            f"(differs in: {', '.join(diff)}); resume with the same settings, or start a new "
            "run with --out DIR."
        )


def _metrics_rows(history, primary_first: list[str]) -> list[dict]:
    rows = []
    for i, loss in enumerate(history.loss):
        row = {"epoch": i + 1, "loss": loss}
        for key in ("penalty", "kept_fraction", "realized_fraction", "target"):
            values = getattr(history, key)
            row[key] = values[i] if i < len(values) else ""
        row["seconds"] = history.epoch_seconds[i] if i < len(history.epoch_seconds) else ""
        if i < len(history.val):
            for k in primary_first:
                row[f"val_{k}"] = history.val[i].get(k, "")
        rows.append(row)
    return rows


def write_metrics_csv(path: Path, history, primary: str) -> None:
    keys = list(history.val[0]) if history.val else []
    keys = [primary] + [k for k in keys if k != primary] if primary in keys else keys
    rows = _metrics_rows(history, keys)
    columns = ["epoch", "loss", "penalty", "kept_fraction", "realized_fraction", "target",
               "seconds"] + [f"val_{k}" for k in keys]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _gate_trajectories(sm, history, feature_arg: str, names: list[str]) -> dict:
    """Per-feature keep probabilities and per-group mean / open count, epoch by epoch."""
    if not history.gate_probabilities:
        return {}
    probs = torch.tensor(history.gate_probabilities)  # epochs x gates
    out = {"epochs": list(range(1, probs.shape[0] + 1)), "features": {}, "groups": {}}
    for group in sm.graph_info.groups:
        sl = probs[:, group.offset : group.offset + group.size]
        if group.kind == "feature":
            continue
        out["groups"][group.name] = {
            "kind": group.kind,
            "size": group.size,
            "mean": sl.mean(1).tolist(),
            "open": (sl > 0.5).sum(1).tolist(),
        }
    space = sm.graph_info.feature_spaces.get(feature_arg)
    group = sm.graph_info.group_of(space) if space is not None else None
    if group is not None:
        for i in range(group.size):
            label = names[i] if i < len(names) else str(i)
            out["features"][label] = probs[:, group.offset + i].tolist()
    return out


def _compacted_metrics(model, data, workload, device) -> dict[str, float]:
    from .training import evaluate

    return evaluate(model, data.loader("val", 256, shuffle=False), workload.metrics, device)


@dataclass
class RunResult:
    """What ``fit_run`` leaves behind (paths) and its headline numbers."""

    run_dir: Path
    metrics: dict

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.txt"


def fit_run(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool | None = None,
) -> RunResult | None:
    """Train ``config`` into the run directory ``out``; returns the result on rank 0.

    Under ``torchrun`` every rank calls this; a restarted worker group (``--max-restarts``)
    resumes from the last checkpoint by itself.
    """
    ctx = distributed.init_from_env()
    out = Path(out)
    resume = bool(resume) or distributed.restart_count() > 0
    if config.tolerance is not None:
        return _fit_tolerance(config, out, resume, progress)
    workload = resolve_workload(config.workload)
    config = resolved(config, workload)
    if ctx.is_main:
        _prepare_run_dir(out, resume)
        if resume:
            _check_resume_config(out, config)
        write_config(config, out / "config.yaml")
    distributed.barrier()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = distributed.device_for(ctx, config.device)
    show = progress if ctx.is_main else False
    # rank 0 generates (or reads) the data first so the others read its cache
    data = workload.data(config.size, config.seed, config.cache_dir, show) if ctx.is_main else None
    distributed.barrier()
    if data is None:
        data = workload.data(config.size, config.seed, config.cache_dir, False)
    sm = build_sparse_model(config, workload, data)

    from .training import History, train

    train_loader = data.loader("train", config.batch_size, shuffle=True, seed=config.seed)
    val_loader = data.loader("val", 256, shuffle=False)

    def write_progress(epoch: int, history: History) -> None:
        if ctx.is_main:
            write_metrics_csv(out / "metrics.csv", history, workload.primary)

    start = time.perf_counter()
    history = train(
        sm, train_loader, epochs=config.epochs, loss_fn=workload.loss, lr=config.lr,
        gate_lr=config.gate_lr, weight_decay=config.weight_decay,
        batch_size=config.batch_size, seed=config.seed, val_data=val_loader,
        metrics=workload.metrics, on_epoch=write_progress, record_gates=config.record_gates,
        grad_clip=config.grad_clip, device=device, progress=show,
        checkpoint_dir=out / "checkpoints", checkpoint_every=config.checkpoint_every or None,
        keep_checkpoints=config.keep_checkpoints, resume=resume,
    )
    seconds = time.perf_counter() - start
    dense = _dense_baseline(config, workload, data, device, show) if config.dense_baseline else None
    result = None
    if ctx.is_main:
        result = _finish(out, config, workload, data, sm, seconds, dense, device,
                         ctx.world_size, history=history)
    distributed.barrier()
    return result


def build_sparse_model(config: RunConfig, workload, data):
    """The workload's model, seeded and sparsified exactly as ``config`` says."""
    from .sparse_model import sparsify

    torch.manual_seed(config.seed)
    model = workload.build_model(data)
    inputs, _ = data.example_batch("train", 8)
    arg = feature_argument(model, data)
    # a tolerance run walks its own budget on a model sparsified with budget 1.0
    budget = config.budget if config.tolerance is None else 1.0
    return sparsify(
        model, tuple(inputs), budget=budget, features=[arg],
        feature_names={arg: data.feature_names},
        feature_penalty=config.feature_penalty, warmup=config.warmup,
    )


def feature_argument(model: torch.nn.Module, data) -> str:
    """The name of the forward argument that carries the features (``nn.Sequential`` calls its
    single input ``input`` where the workload says ``x``)."""
    import inspect

    names = list(inspect.signature(model.forward).parameters)
    if data.feature_arg in names:
        return data.feature_arg
    inputs, _ = data.example_batch("train", 1)
    if len(inputs) == 1 and names:
        return names[0]
    raise ConfigurationError(
        f"the workload's feature argument '{data.feature_arg}' is not an argument of its "
        f"model's forward {names}; name it so in WorkloadData.feature_arg."
    )


def _dense_baseline(config, workload, data, device, show) -> dict:
    from .measure import count_params
    from .training import train

    torch.manual_seed(config.seed)
    dense = workload.build_model(data)
    train(dense, data.loader("train", config.batch_size, shuffle=True, seed=config.seed),
          epochs=config.epochs, loss_fn=workload.loss, lr=config.lr,
          weight_decay=config.weight_decay, batch_size=config.batch_size, seed=config.seed,
          grad_clip=config.grad_clip, device=device, progress=show)
    return {"metrics": _compacted_metrics(dense, data, workload, device),
            "params": count_params(dense)}


def _finish(out, config, workload, data, sm, seconds, dense, device, world, *, history=None,
            curve=None, extra=None) -> RunResult:
    """Compact, measure and write every file of a finished run (rank 0 only)."""
    from .measure import count_flops, count_params
    from .reporting import report, summary

    sm.eval()
    small = sm.compact()
    sparse_metrics = _compacted_metrics(sm, data, workload, device)
    compact_metrics = _compacted_metrics(small, data, workload, device)
    info = summary(sm)
    inputs, _ = data.example_batch("val", 1)
    inputs = tuple(t.to(device) for t in inputs)
    arg = next(iter(sm.feature_names), data.feature_arg)
    scores = sm.feature_scores().get(arg)
    kept = set(sm.selected_features().get(arg, []))
    names = data.feature_names
    primary = workload.primary
    dense_params = float(info["params"]["dense"])
    if curve is None and history is not None:
        curve = [
            {"epoch": i + 1, "params": dense_params * frac, "metric": history.val[i][primary]}
            for i, frac in enumerate(history.realized_fraction) if i < len(history.val)
        ]
    history_dict = history.to_dict() if history is not None else {}
    history_dict.pop("gate_probabilities", None)
    metrics = {
        "workload": workload.name,
        "size": config.size,
        "primary": primary,
        "higher_is_better": workload.higher_is_better,
        "budget": config.budget,
        "tolerance": config.tolerance,
        "world_size": world,
        "epochs": config.epochs,
        "train_seconds": seconds,
        "history": history_dict,
        "final": {"sparse": sparse_metrics, "compacted": compact_metrics,
                  "dense": dense["metrics"] if dense else None},
        "params": {"dense": dense_params, "compacted": float(count_params(small)),
                   "dense_trained": dense["params"] if dense else None},
        "flops": {"dense": float(count_flops(workload.build_model(data).to(device).eval(),
                                             inputs)),
                  "compacted": float(count_flops(small, inputs))},
        "features": {
            "argument": arg,
            "names": names,
            "scores": scores.tolist() if scores is not None else [],
            "kept": [n for n in names if n in kept],
            "true": [names[i] for i in data.true_features],
            "irrelevant": [names[i] for i in data.irrelevant_features],
        },
        "groups": info["groups"],
        "ungated": info["ungated"],
        "curve": curve or [],
        "gate_trajectories": (_gate_trajectories(sm, history, arg, names)
                              if history is not None else {}),
        **(extra or {}),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if history is not None:
        write_metrics_csv(out / "metrics.csv", history, primary)
    _save_model(out / "model", small)
    (out / "report.txt").write_text(report(sm) + "\n\n" + format_summary(metrics) + "\n")
    if config.plots:
        from .plots import plot_run

        plot_run(metrics, out / "plots")
    return RunResult(out, metrics)


def _save_model(folder: Path, small: torch.nn.Module) -> None:
    folder.mkdir(exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in small.state_dict().items()}
    torch.save(state, folder / "state_dict.pt")
    try:
        torch.save(small.cpu(), folder / "compacted.pt")
    except Exception as exc:  # a layer that cannot be pickled: the weights are still there
        (folder / "compacted.txt").write_text(
            f"the compacted module could not be pickled ({exc}); use `lumos export` or "
            "state_dict.pt.\n"
        )


def format_summary(m: dict) -> str:
    """The headline numbers of a run, as printed by ``lumos fit`` and ``lumos report``."""
    primary = m["primary"]
    final = m["final"]
    p = m["params"]
    lines = [
        f"workload {m['workload']} ({m['size']}), {m['epochs']} epochs, "
        f"{m['world_size']} process(es), {m['train_seconds']:.1f} s",
        f"validation {primary}: compacted {final['compacted'][primary]:.4g}"
        + (f", dense baseline {final['dense'][primary]:.4g}" if final.get("dense") else ""),
        f"parameters: {p['dense']:.0f} -> {p['compacted']:.0f} "
        f"({100 * p['compacted'] / max(p['dense'], 1):.1f}%)",
        f"FLOPs/sample: {m['flops']['dense']:.0f} -> {m['flops']['compacted']:.0f}",
    ]
    walk = m.get("tolerance_result")
    if walk:
        lines.append(
            f"tolerance {100 * walk['tolerance']:g}% of the dense {primary} "
            f"{walk['reference']:.4g}: {'met' if walk['within'] else 'MISSED'} at "
            f"{100 * walk['kept_fraction']:.1f}% of the parameters"
        )
    f = m["features"]
    if f["names"]:
        true_kept = len(set(f["true"]) & set(f["kept"]))
        dropped = len(set(f["irrelevant"]) - set(f["kept"]))
        lines.append(
            f"features kept {len(f['kept'])}/{len(f['names'])}: true kept "
            f"{true_kept}/{len(f['true'])}, irrelevant dropped {dropped}/{len(f['irrelevant'])}"
        )
    return "\n".join(lines)


# ---- reading a run back ------------------------------------------------------------------------
def read_metrics(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not Path(run_dir).is_dir():
        raise ConfigurationError(f"run directory {run_dir} does not exist.")
    if not path.exists():
        raise ConfigurationError(
            f"{run_dir} holds no finished run (no metrics.json); finish it with "
            f"`lumos fit {Path(run_dir) / 'config.yaml'} --out {run_dir} --resume`."
        )
    return json.loads(path.read_text())


def report_run(run_dir: str | os.PathLike, plots: bool = True) -> str:
    """The text summary of a finished run; redraws its plots from metrics.json."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    if plots:
        from .plots import plot_run

        plot_run(metrics, run_dir / "plots")
    text = (run_dir / "report.txt").read_text() if (run_dir / "report.txt").exists() else ""
    return text.rstrip() or format_summary(metrics)


def load_run(run_dir: str | os.PathLike):
    """Rebuild a finished run's SparseModel from its config and last checkpoint.

    Returns ``(config, workload, data, sparse_model)``; the weights come from a weights-only
    checkpoint, never from a pickle. The data are read from the cache (or regenerated).
    """
    from .checkpoint import CheckpointManager

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise ConfigurationError(f"{run_dir} is not a LUMOS run directory (no config.yaml).")
    config = validate_config(read_config_file(config_path), f"config file {config_path}")
    workload = resolve_workload(config.workload)
    state = CheckpointManager(run_dir / "checkpoints").load()
    if state is None:
        raise ConfigurationError(f"{run_dir} has no checkpoint yet; run `lumos fit` first.")
    if not state["position"]["finished"]:
        raise ConfigurationError(
            f"the run in {run_dir} has not finished; continue it with "
            f"`lumos fit {config_path} --out {run_dir} --resume`."
        )
    data = workload.data(config.size, config.seed, config.cache_dir, False)
    sm = build_sparse_model(config, workload, data)
    sm.load_state_dict(state["model"])
    sm.set_progress(1.0)
    return config, workload, data, sm.eval()


def _fit_tolerance(config: RunConfig, out: Path, resume: bool, progress) -> RunResult | None:
    """``tolerance:`` runs: :func:`lumos.tolerance.fit_within_tolerance` walks the budget down
    in one process; the run directory is written as for a budget run (no mid-run resume)."""
    if importlib.util.find_spec("lumos.tolerance") is None:
        raise ConfigurationError(
            "tolerance mode is not available in this version; give budget: (a kept "
            "parameter fraction) instead."
        )
    from .tolerance import fit_within_tolerance

    ctx = distributed.current()
    if ctx.distributed:
        raise ConfigurationError(
            "tolerance mode runs in one process; launch it without torchrun, or give "
            "budget: to train on several processes."
        )
    if resume:
        raise ConfigurationError(
            "a tolerance run cannot be resumed; start it again in a new folder (--out DIR)."
        )
    workload = resolve_workload(config.workload)
    config = resolved(config, workload)
    _prepare_run_dir(out, resume=False)
    write_config(config, out / "config.yaml")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = distributed.device_for(ctx, config.device)
    if device.type != "cpu":
        raise ConfigurationError("tolerance mode runs on the CPU for now; give device: cpu.")
    data = workload.data(config.size, config.seed, config.cache_dir, progress)
    torch.manual_seed(config.seed)
    model = workload.build_model(data)
    arg = feature_argument(model, data)
    inputs, _ = data.example_batch("train", 8)
    start = time.perf_counter()
    result = fit_within_tolerance(
        model, tuple(inputs), data.loader("train", config.batch_size, shuffle=True,
                                          seed=config.seed),
        data.loader("val", 256, shuffle=False), metrics=workload.metrics,
        primary=workload.primary, higher_is_better=workload.higher_is_better,
        epochs=config.epochs, tolerance=config.tolerance, loss_fn=workload.loss, lr=config.lr,
        weight_decay=config.weight_decay, batch_size=config.batch_size, seed=config.seed,
        features=[arg], feature_names={arg: data.feature_names},
        feature_penalty=config.feature_penalty,
    )
    seconds = time.perf_counter() - start
    sm = result.model
    from .checkpoint import CheckpointManager

    CheckpointManager(out / "checkpoints", config.keep_checkpoints).save(
        {"model": sm.state_dict(), "position": {"finished": True, "epoch": config.epochs},
         "run": {"tolerance": config.tolerance}}, config.epochs)
    dense_params = float(sm.dense_params)
    curve = [{"epoch": p.epoch + 1, "params": dense_params * p.kept_fraction,
              "metric": p.metric, "phase": p.phase, "within": p.within} for p in result.walk]
    dense = {"metrics": {workload.primary: result.reference}, "params": None}
    return _finish(out, config, workload, data, sm, seconds, dense, device, 1, curve=curve,
                   extra={"tolerance_result": result.to_dict()})


def workload_table() -> list[dict]:
    """Every built-in workload with its architecture, metric, recipes and availability."""
    from .workloads import get_workload, workload_names

    rows = []
    for name in workload_names():
        try:
            wl = get_workload(name)
        except (ImportError, LumosError) as exc:  # pragma: no cover - broken install
            rows.append({"name": name, "error": str(exc)})
            continue
        try:
            wl.check_available()
            missing = ""
        except LumosError as exc:
            missing = str(exc)
        rows.append({
            "name": name,
            "architecture": wl.architecture,
            "task": wl.task,
            "metric": wl.primary + (" (higher is better)" if wl.higher_is_better else ""),
            "recipes": {size: {f.name: getattr(r, f.name) for f in fields(r)}
                        for size, r in wl.recipes.items()},
            "title": wl.title,
            "unavailable": missing,
        })
    return rows
