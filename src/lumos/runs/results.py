"""A finished run's results: the compacted model measured against the dense one, the numbers
of ``metrics.json``, the files of the run directory, and the headline summary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import write_atomic
from .config import RunConfig
from .directory import save_model, write_metrics_csv


@dataclass
class RunResult:
    """What ``fit_run`` leaves behind (paths) and its headline numbers."""

    run_dir: Path
    metrics: dict

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.txt"


def validation_metrics(model, data, workload, device) -> dict[str, float]:
    """The workload's metrics of ``model`` on the whole validation split."""
    from ..training import evaluate

    return evaluate(model, data.loader("val", 256, shuffle=False), workload.metrics, device)


def gate_trajectories(sm, history, feature_arg: str, names: list[str]) -> dict:
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


def finish_run(out: Path, config: RunConfig, workload, data, sm, seconds: float, dense,
               device, world: int, *, history=None, curve=None, extra=None,
               gate_history=None) -> RunResult:
    """Compact, measure and write every file of a finished run (rank 0 only).

    ``dense``: the dense baseline's ``{"metrics", "params"}`` (or None); ``curve``: metric vs.
    parameters (default: one point per epoch of ``history``); ``extra``: more metrics.json
    entries; ``gate_history``: where the gate trajectories come from when not from
    ``history`` (anything with ``gate_probabilities``: a tolerance walk).
    """
    from ..reporting import report

    sm.eval()
    small = sm.compact()
    metrics = _run_metrics(config, workload, data, sm, small, seconds, dense, device, world,
                           history=history, curve=curve, extra=extra,
                           gate_history=gate_history if gate_history is not None else history)
    # every file replaced atomically (a full disk leaves the previous one), metrics.json --
    # what marks the run finished -- last
    metrics["model"] = save_model(out / "model", small)
    if history is not None:
        write_metrics_csv(out / "metrics.csv", history, workload.primary)
    write_atomic(out / "report.txt", report(sm) + "\n\n" + format_summary(metrics) + "\n")
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=1))
    if config.plots:
        from ..plots import plot_run

        plot_run(metrics, out / "plots")
    return RunResult(out, metrics)


def _run_metrics(config: RunConfig, workload, data, sm, small, seconds: float, dense, device,
                 world: int, *, history, curve, extra, gate_history) -> dict:
    """The contents of ``metrics.json``."""
    from ..measure import count_flops, count_params
    from ..reporting import summary

    sparse_metrics = validation_metrics(sm, data, workload, device)
    compact_metrics = validation_metrics(small, data, workload, device)
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
    return {
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
        "gate_trajectories": (gate_trajectories(sm, gate_history, arg, names)
                              if gate_history is not None else {}),
        **(extra or {}),
    }


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
            + (" (no smaller model was within: the dense model)"
               if walk.get("returned") == "dense" else "")
        )
    f = m["features"]
    if f["names"]:
        true_kept = len(set(f["true"]) & set(f["kept"]))
        dropped = len(set(f["irrelevant"]) - set(f["kept"]))
        lines.append(
            f"features kept {len(f['kept'])}/{len(f['names'])}: true kept "
            f"{true_kept}/{len(f['true'])}, irrelevant dropped {dropped}/{len(f['irrelevant'])}"
        )
    if m.get("model"):
        lines.append(m["model"])
    return "\n".join(lines)
