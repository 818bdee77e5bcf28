"""The LUMOS benchmark suite: dense vs. LUMOS on every SciML workload, measured in one process.

    python -m benchmarks.suite [--smoke] [--only NAME ...] [--budget 0.25] [--seed 0]

For each workload the dense model and the LUMOS model start from the same initial weights and
are trained with the same recipe (epochs, optimiser, learning rate, seed, data order). Then, in
the same process: the task metric of the dense and of the *compacted* model; parameters and
FLOPs per sample; CPU inference latency at batch 1 and 256 (dense and compacted timed in
alternating rounds, median); peak tensor memory of inference; training time per epoch;
energy where the machine exposes RAPL (else recorded as unavailable); and the feature ground
truth (noise dropped, true kept). Results: ``docs/results/suite.json`` and ``suite.md`` with
PNG plots. Each workload's record is also kept in ``docs/results/suite/`` so an interrupted run
resumes with ``--resume``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import lumos
from lumos.measure import count_flops, count_params, energy_joules, latency, peak_memory
from lumos.tolerance import COMPARISONS, DECISION_RULES, fit_within_tolerance
from lumos.training import predict, train
from lumos.workloads import (
    build_dense,
    build_sparse,
    example_inputs,
    feature_argument,
    feature_options,
    get_workload,
    sparsify_features,
    train_recipe,
    workload_names,
)

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def machine_info() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lumos": lumos.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": _cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_model": _cpu_model(),
        "code": CODE_REVISION,
    }


def code_revision() -> str:
    """The git commit the benchmark runs from (``+dirty`` with uncommitted changes to anything
    but ``docs/results``: a benchmark that resumes from records an earlier one just wrote runs
    the committed code all the same)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)docs/results"],
                               cwd=root, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


#: read when the benchmark starts: the code this process loaded, whatever is committed later
CODE_REVISION = code_revision()


def results_record(module: str, rows: list) -> dict:
    """What a small benchmark writes: the exact command, the machine, the date, its rows."""
    command = f"python -m {module} " + " ".join(map(shlex.quote, sys.argv[1:]))
    return {"command": command.strip(), "machine": machine_info(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}


def results_header(title: str, result: dict, threads_note: str = "") -> list[str]:
    """The markdown title, command and machine lines of a ``results_record`` (the torch
    threads it ran with, then ``threads_note``)."""
    m = result["machine"]
    n = m["torch_threads"]
    threads = f"{n} torch thread{'' if n == 1 else 's'}" + (f" {threads_note}" if threads_note
                                                            else "")
    return [f"# {title}", "", f"Command: `{result['command']}`  ",
            f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, {threads}, torch "
            f"{m['torch']}; {result['date']}; code {m['code']}", ""]


def write_results(name: str, result: dict, lines: list[str], folder: Path | None = None) -> None:
    """``NAME.json`` (the record) and ``NAME.md`` (``lines``) in ``folder`` (default:
    ``docs/results``)."""
    folder = RESULTS if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2))
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def chosen_workloads(parser: argparse.ArgumentParser, only: list[str] | None) -> list[str]:
    """The workloads ``--only`` names (all by default); an unknown name is a usage error."""
    names = only or workload_names()
    unknown = [n for n in names if n not in workload_names()]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; available: {workload_names()}")
    return names


def paired_latency(dense, small, inputs, rounds: int = 5, budget_s: float = 0.4) -> tuple:
    """Median latencies of two models timed in alternating rounds (drift hits both alike).

    Denormal floats are kept out of the timing (for both models): weights that weight
    decay shrank towards 0 can hold denormals, which the CPU multiplies tens of times slower
    (the dense alloy MLP, 2,166 denormal weights: 49 ms at batch 256, 0.8 ms flushed), and
    that would credit compaction with a speed-up that is really a floating-point artefact.
    ``torch.set_flush_denormal`` sets the calling thread only: intra-op worker threads made
    before it keep multiplying denormals (measured at 2 threads: 18 ms either way; 1 thread:
    36 ms -> 0.27 ms). So copies of both models with their denormal weights set to 0 are
    timed, with flushing on for what the forward itself makes.
    """
    # copied before flushing: with flushing on, a denormal reads as 0 and is not found
    dense, small = without_denormals(dense), without_denormals(small)
    flushing = torch.set_flush_denormal(True)
    try:
        return _paired_latency(dense, small, inputs, rounds, budget_s)
    finally:
        if flushing:
            torch.set_flush_denormal(False)


def without_denormals(model):
    """A copy of ``model`` whose denormal parameters and buffers are 0 (a change below
    1.2e-38 per value in float32: the outputs do not move)."""
    if not isinstance(model, torch.nn.Module):
        return model
    model = copy.deepcopy(model)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.masked_fill_((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny), 0.0)
    return model


def _paired_latency(dense, small, inputs, rounds: int, budget_s: float) -> tuple:
    probe = latency(dense, inputs, repeats=3, warmup=2)
    repeats = max(5, min(500, int(budget_s / rounds / max(probe, 1e-6))))
    d, s = [], []
    for _ in range(rounds):
        d.append(latency(dense, inputs, repeats=repeats, warmup=2))
        s.append(latency(small, inputs, repeats=repeats, warmup=2))
    return statistics.median(d), statistics.median(s)


def paired_epoch_times(dense, sparse, make_loader, loss_fn, lr: float, weight_decay: float,
                       rounds: int = 7) -> tuple[float, float]:
    """Median seconds of one short training epoch (``lumos.training.train``: data loading,
    forward, penalty, backward, optimiser step) of a dense model and a SparseModel on the same
    batches, timed in alternating rounds in this process.

    The epoch times of two whole runs taken minutes apart on a shared machine differ by tens
    of percent for the same model; alternating short rounds expose both to the same
    conditions, which is what a ratio needs.
    """
    from lumos.training import make_optimizer

    def runner(model):
        opt = make_optimizer(model, lr, None, weight_decay)

        def run() -> float:
            history = train(model, make_loader(), epochs=1, loss_fn=loss_fn, optimizer=opt,
                            progress=False, progress_range=(0.5, 0.5))
            return history.epoch_seconds[0]
        return run

    run_dense, run_sparse = runner(dense), runner(sparse)
    run_dense(), run_sparse()  # warm-up: allocator, optimiser state
    d, s = [], []
    for _ in range(rounds):
        d.append(run_dense())
        s.append(run_sparse())
    return statistics.median(d), statistics.median(s)


def validation_loaders(data, seed: int) -> tuple[DataLoader, DataLoader]:
    """The validation set's two halves: the *selection* half a tolerance walk and the
    best-epoch choice read, and the *report* half every table scores on."""
    select, report = data.halve_val(seed)
    return (DataLoader(select, batch_size=512, collate_fn=select.collate),
            DataLoader(report, batch_size=512, collate_fn=report.collate))


def run_workload(name: str, size: str, budget: float | None, seed: int, cache_dir=None,
                 tolerance: float | None = None, budget_on: str = "params",
                 decide_on: str = "settled", fourier_modes: bool = True,
                 compare_to: str = "paced", gate_step_every: int = 1) -> dict:
    wl = get_workload(name)
    t0 = time.perf_counter()
    data = wl.data(size, seed=seed, cache_dir=cache_dir)
    generation_s = time.perf_counter() - t0
    recipe = wl.recipes[size]
    example = example_inputs(data)

    dense = build_dense(wl, data, seed=seed)
    base = build_dense(wl, data, seed=seed)
    arg = feature_argument(base, data.feature_arg)

    def fit(model):
        return train_recipe(model, wl, data, recipe, seed=seed)

    # selection (tolerance mode) on one half of the validation set, every reported metric on
    # the other half
    select, val = validation_loaders(data, seed)
    # the dense model's validation curve (selection half): the evidence that its recipe
    # converged, so that the comparison is against a finished model
    h_dense = train_recipe(dense, wl, data, recipe, seed=seed, val_data=select,
                           metrics=wl.metrics)
    dense_curve = [v[wl.primary] for v in h_dense.val]
    pred_dense, target = predict(dense, val)
    m_dense = wl.metrics(pred_dense, target)
    walk = None
    gates = lumos.GateOptions(fourier_modes=fourier_modes, gate_step_every=gate_step_every)
    if tolerance is None:
        sm = sparsify_features(base, data, budget=budget, budget_on=budget_on, gates=gates)
        h_lumos = fit(sm)
        epoch_lumos = statistics.median(_steady(h_lumos.epoch_seconds))
    else:
        start = time.perf_counter()
        result = fit_within_tolerance(
            base, example, data.loader("train", recipe.batch_size, shuffle=True, seed=seed),
            select, metrics=wl.metrics, primary=wl.primary,
            higher_is_better=wl.higher_is_better, epochs=recipe.epochs, tolerance=tolerance,
            reference=dense_curve, dense=dense, compare_to=compare_to,
            loss_fn=wl.loss, lr=recipe.lr, weight_decay=recipe.weight_decay, seed=seed,
            lr_schedule=recipe.lr_schedule, budget_on=budget_on, decide_on=decide_on, gates=gates,
            **feature_options(base, data),
        )
        sm, walk = result.model, result.to_dict()
        epoch_lumos = statistics.median(_steady([p.train_seconds for p in result.walk]))
        walk["wall_s"] = time.perf_counter() - start  # with a validation after every epoch
    small = sm.compact()
    pred_small, _ = predict(small, val)
    with torch.no_grad():
        pred_gated, _ = predict(sm, val)
    m_lumos = wl.metrics(pred_small, target)
    compaction_error = float((pred_small - pred_gated).abs().max()
                             / pred_gated.abs().max().clamp_min(1e-12))

    # training cost, dense vs. LUMOS, on the same batches in alternating rounds (fresh models:
    # the cost of a step does not depend on the weights; the SparseModel is mid-training, so
    # every gate trains and the budget term is active)
    n_timing = min(len(data.train), 16 * recipe.batch_size)
    timing_split = data.train.subset(torch.arange(n_timing))

    def timing_loader():
        return DataLoader(timing_split, batch_size=recipe.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(seed),
                          collate_fn=timing_split.collate)

    timing_sparse = build_sparse(wl, data, budget=budget or 0.25, seed=seed)
    step_dense, step_lumos = paired_epoch_times(build_dense(wl, data, seed=seed), timing_sparse,
                                                timing_loader, wl.loss, recipe.lr,
                                                recipe.weight_decay)

    one = data.example_batch("val", 1)[0]
    big = data.example_batch("val", 256)[0]
    batch_big = len(data.val) if len(data.val) < 256 else 256
    p_dense, p_lumos = count_params(dense), count_params(small)
    f_dense, f_lumos = count_flops(dense, one), count_flops(small, one)
    lat1 = paired_latency(dense, small, one)
    lat256 = paired_latency(dense, small, big)
    energy = energy_joules(lambda: dense(*big)), energy_joules(lambda: small(*big))

    selected = set(sm.selected_features()[arg])
    names = data.feature_names
    kept = {names.index(n) for n in selected}
    irrelevant = set(data.irrelevant_features)
    true = set(data.true_features)
    primary = wl.primary
    rel = (m_lumos[primary] - m_dense[primary]) / max(abs(m_dense[primary]), 1e-12)
    epoch_dense = statistics.median(_steady(h_dense.epoch_seconds))
    return {
        "workload": name,
        "title": wl.title,
        "architecture": wl.architecture,
        "size": size,
        "budget": budget if tolerance is None else None,
        "budget_on": budget_on,
        "tolerance": tolerance,
        "decide_on": decide_on if tolerance is not None else None,
        "compare_to": compare_to if tolerance is not None else None,
        "fourier_modes": fourier_modes,
        "gate_step_every": gate_step_every,
        "tolerance_walk": walk,
        "seed": seed,
        "epochs": recipe.epochs,
        "train_samples": len(data.train),
        "val_samples": len(data.val),
        "report_samples": len(val.dataset),
        "generation_s": generation_s,
        "metric": primary,
        "higher_is_better": wl.higher_is_better,
        "metric_dense": m_dense[primary],
        "metric_lumos": m_lumos[primary],
        "metric_relative_change": rel,
        "metric_within_1pct": (rel >= -0.01) if wl.higher_is_better else (rel <= 0.01),
        "metrics_dense": m_dense,
        "metrics_lumos": m_lumos,
        "dense_val_curve": dense_curve,
        "dense_last_change": last_change(dense_curve, wl.higher_is_better),
        "compaction_max_rel_error": compaction_error,
        "params_dense": p_dense,
        "params_lumos": p_lumos,
        "param_reduction": 1 - p_lumos / p_dense,
        "flops_dense": f_dense,
        "flops_lumos": f_lumos,
        "flop_reduction": 1 - f_lumos / max(f_dense, 1),
        "flop_ratio": f_dense / max(f_lumos, 1),
        "latency_b1_dense_s": lat1[0],
        "latency_b1_lumos_s": lat1[1],
        "speedup_b1": lat1[0] / lat1[1],
        "batch_big": batch_big,
        "latency_b256_dense_s": lat256[0],
        "latency_b256_lumos_s": lat256[1],
        "speedup_b256": lat256[0] / lat256[1],
        "speedup_b256_over_flop_ratio": (lat256[0] / lat256[1]) / (f_dense / max(f_lumos, 1)),
        "peak_memory_b256_dense_bytes": peak_memory(dense, big),
        "peak_memory_b256_lumos_bytes": peak_memory(small, big),
        "train_epoch_dense_s": epoch_dense,
        "train_epoch_lumos_s": epoch_lumos,
        "train_overhead_epochs": epoch_lumos / epoch_dense - 1,
        "train_paired_epoch_dense_s": step_dense,
        "train_paired_epoch_lumos_s": step_lumos,
        "train_paired_batches": math.ceil(n_timing / recipe.batch_size),
        "train_overhead": step_lumos / step_dense - 1,
        "energy_b256_dense_j": energy[0],
        "energy_b256_lumos_j": energy[1],
        "energy_note": "RAPL" if energy[0] is not None else "unavailable on this machine",
        "features_total": len(names),
        "features_irrelevant": len(irrelevant),
        "features_irrelevant_dropped": len(irrelevant - kept),
        "features_true": len(true),
        "features_true_kept": len(true & kept),
        "features_kept": sorted(selected),
        "layer_report": sm.report(),
    }


def last_change(curve: list[float], higher_is_better: bool) -> float | None:
    """How much a validation curve still moved at its end: the mean of its last tenth (at
    least 2 epochs) against the tenth before, relative, + for still improving. Near 0: the
    recipe converged."""
    k = max(2, round(0.1 * len(curve)))
    if len(curve) < 2 * k:
        return None
    last, before = statistics.mean(curve[-k:]), statistics.mean(curve[-2 * k:-k])
    change = (last - before) / max(abs(last), 1e-12)
    return change if higher_is_better else -change


def _steady(epoch_seconds: list[float]) -> list[float]:
    """Epoch times without the first (one-time warm-up costs), when there are several."""
    return epoch_seconds[1:] if len(epoch_seconds) > 2 else epoch_seconds


def _dense_answer(record: dict) -> str:
    """' *(dense)*' where the tolerance walk returned the dense model (nothing smaller held)."""
    walk = record.get("tolerance_walk") or {}
    return " *(dense)*" if walk.get("returned") == "dense" else ""


def _fmt_pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_markdown(records: list[dict], meta: dict, path: Path) -> None:
    lines = [
        "# LUMOS benchmark suite: dense vs. LUMOS (same recipe, same process)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']['cpu_model']}, {meta['machine']['cpu_count']} cores, "
        f"{meta['machine']['torch_threads']} torch threads, torch {meta['machine']['torch']}, "
        f"Python {meta['machine']['python']}  ",
        f"Date: {meta['date']}; size: {meta['size']}; "
        + (f"budget: {meta['budget']}" if meta["tolerance"] is None
           else f"tolerance: {meta['tolerance']} (smallest model within it; cuts judged "
                f"{meta.get('decide_on') or 'last'} against the dense model "
                + {"matched": "at the same epoch)", "paced": "finished, missed only when "
                   "behind its pace)"}.get(meta.get("compare_to"), "finished)"))
        + f" on {meta.get('budget_on', 'params')}; "
        + (f"gate noise on one training step in {meta['gate_step_every']}; "
           if meta.get("gate_step_every", 1) != 1 else "")
        + f"seed: {meta['seed']}",
    ]
    sources = sorted({(r.get("command", "?"), r.get("machine", {}).get("code", "?"))
                      for r in records})
    if sources != [(meta["command"], meta["machine"].get("code", "?"))]:
        lines[-1] += "  "
        lines.append("Records measured by (reused with `--resume`):")
        lines += [f"- `{cmd}` (code {code})" for cmd, code in sources]
    lines += [
        "",
        "| workload | arch | metric | dense | LUMOS | change (+ better) | params kept | "
        "FLOPs kept | speed-up b1 | speed-up b256 | b256 / FLOP ratio | train overhead | "
        "irrelevant dropped | true kept | dense last-epochs change |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        converged = r.get("dense_last_change")
        lines.append(
            f"| {r['workload']} | {r['architecture']} | {r['metric']} | "
            f"{r['metric_dense']:.4f} | {r['metric_lumos']:.4f} | "
            f"{100 * signed_better(r):+.2f}% | "
            f"{_fmt_pct(1 - r['param_reduction'])}{_dense_answer(r)} | "
            f"{_fmt_pct(1 - r['flop_reduction'])} | {r['speedup_b1']:.2f}x | "
            f"{r['speedup_b256']:.2f}x | "
            f"{r['speedup_b256_over_flop_ratio']:.2f} | {100 * r['train_overhead']:+.1f}% | "
            f"{r['features_irrelevant_dropped']}/{r['features_irrelevant']} | "
            f"{r['features_true_kept']}/{r['features_true']} | "
            f"{'-' if converged is None else f'{100 * converged:+.2f}%'} |"
        )
    if records:
        a = averages(records)
        lines += [
            "",
            "## Averages",
            "",
            f"- parameter reduction: **{_fmt_pct(a['param_reduction'])}**",
            f"- FLOP reduction: **{_fmt_pct(a['flop_reduction'])}**",
            f"- inference speed-up: **{a['speedup_b1']:.2f}x** at batch 1, "
            f"**{a['speedup_b256']:.2f}x** at batch 256 (geometric means)",
            f"- training overhead: **{100 * a['train_overhead']:+.1f}%** (dense and LUMOS "
            "training epochs of up to 16 batches on the same data, timed in alternating "
            "rounds; the steady epoch times of the two full runs give "
            f"{100 * a['train_overhead_epochs']:+.1f}%)",
            f"- metric within 1% of dense (or better): **{a['within_1pct']}/{len(records)}**",
            f"- irrelevant inputs dropped: **{_fmt_pct(a['irrelevant_dropped'])}**; "
            f"true inputs kept: **{_fmt_pct(a['true_kept'])}**",
            f"- energy: {records[0]['energy_note']}",
            "",
            "",
            "*(dense)*: no model the tolerance walk trained ended within the tolerance on the "
            "selection half, so the walk returned the dense model, every unit kept (less the "
            "inputs the walk dropped where it stays within without them; "
            "`fit_within_tolerance(dense=...)`).",
            "",
            "Dense last-epochs change: the dense model's validation metric (selection half) "
            "over its last tenth of epochs against the tenth before, + still improving; near "
            "0 the recipe converged.",
            "",
            "![reduction](suite_reduction.png) ![speed-up](suite_speedup.png)",
        ]
    path.write_text("\n".join(lines) + "\n")


def signed_better(record: dict) -> float:
    """Relative metric change signed so that + means LUMOS is better (errors fall, scores rise)."""
    change = record["metric_relative_change"]
    return change if record["higher_is_better"] else -change


def averages(records: list[dict]) -> dict:
    def geo(key: str) -> float:
        return math.exp(statistics.mean(math.log(r[key]) for r in records))

    irrelevant = sum(r["features_irrelevant"] for r in records)
    true = sum(r["features_true"] for r in records)
    return {
        "param_reduction": statistics.mean(r["param_reduction"] for r in records),
        "flop_reduction": statistics.mean(r["flop_reduction"] for r in records),
        "speedup_b1": geo("speedup_b1"),
        "speedup_b256": geo("speedup_b256"),
        "train_overhead": statistics.mean(r["train_overhead"] for r in records),
        "train_overhead_epochs": statistics.mean(r["train_overhead_epochs"] for r in records),
        "within_1pct": sum(bool(r["metric_within_1pct"]) for r in records),
        "irrelevant_dropped": sum(r["features_irrelevant_dropped"] for r in records)
        / max(irrelevant, 1),
        "true_kept": sum(r["features_true_kept"] for r in records) / max(true, 1),
    }


def plot(records: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["workload"] for r in records]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.bar(x - 0.2, [100 * r["param_reduction"] for r in records], 0.4, label="parameters")
    ax.bar(x + 0.2, [100 * r["flop_reduction"] for r in records], 0.4, label="FLOPs")
    ax.set_xticks(x, names, rotation=35, ha="right")
    ax.set_ylabel("reduction vs. dense (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("LUMOS: parameter and FLOP reduction per workload")
    fig.tight_layout()
    fig.savefig(out / "suite_reduction.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(11, 4))
    ax.bar(x - 0.2, [r["speedup_b1"] for r in records], 0.4, label="batch 1")
    ax.bar(x + 0.2, [r["speedup_b256"] for r in records], 0.4, label="batch 256")
    ax.plot(x, [r["flop_ratio"] for r in records], "k_", markersize=18, mew=2,
            label="FLOP ratio (limit)")
    ax.axhline(1.0, color="0.5", lw=0.8)
    ax.set_xticks(x, names, rotation=35, ha="right")
    ax.set_ylabel("CPU inference speed-up (x)")
    ax.legend()
    ax.set_title("Compacted vs. dense inference latency (measured in the same run)")
    fig.tight_layout()
    fig.savefig(out / "suite_speedup.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="smoke sizes (quick check)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these workloads")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--budget", type=float, default=None, help="kept fraction (default 0.25)")
    mode.add_argument("--tolerance", type=float, default=None,
                      help="smallest model within this relative metric tolerance instead")
    parser.add_argument("--budget-on", choices=("params", "flops"), default="params",
                        help="what --budget (or the tolerance walk) measures")
    parser.add_argument("--decide-on", choices=DECISION_RULES, default="settled",
                        help="how the tolerance walk judges a cut (lumos.tolerance)")
    parser.add_argument("--compare-to", choices=COMPARISONS, default="paced",
                        help="what the tolerance walk judges a cut against (lumos.tolerance)")
    parser.add_argument("--channels-only", action="store_true",
                        help="GateOptions(fourier_modes=False): an FNO gates channels only")
    parser.add_argument("--gate-step-every", type=int, default=1, metavar="K",
                        help="GateOptions(gate_step_every=K): gate noise on one training step "
                             "in K, the deterministic gates on the others (default 1: every "
                             "step)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--resume", action="store_true",
                        help="reuse per-workload records already in OUT/suite/")
    args = parser.parse_args(argv)
    if args.budget is None and args.tolerance is None:
        args.budget = 0.25
    size = "smoke" if args.smoke else "full"
    names = chosen_workloads(parser, args.only)
    stem = "suite" if size == "full" else "suite_smoke"
    per = args.out / stem
    per.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.suite " + " ".join(shlex.quote(a) for a in (argv or
                                                                               sys.argv[1:]))
    records = []
    for name in names:
        record_path = per / f"{name}.json"
        if args.resume and record_path.exists():
            record = json.loads(record_path.read_text())
            key = (record["budget"], record.get("tolerance"), record["seed"], record["size"],
                   record.get("budget_on", "params"), record.get("decide_on"),
                   record.get("fourier_modes", False), record.get("compare_to", "final"),
                   record.get("gate_step_every", 1))
            decide_on = args.decide_on if args.tolerance is not None else None
            compare_to = args.compare_to if args.tolerance is not None else None
            if key == (args.budget, args.tolerance, args.seed, size, args.budget_on, decide_on,
                       not args.channels_only, compare_to,
                       args.gate_step_every):
                records.append(record)
                print(f"[suite] {name}: reused {record_path}", flush=True)
                continue
        start = time.perf_counter()
        record = run_workload(name, size, args.budget, args.seed, args.cache_dir, args.tolerance,
                              args.budget_on, args.decide_on, not args.channels_only,
                              args.compare_to, args.gate_step_every)
        record["wall_s"] = time.perf_counter() - start
        record["command"] = command
        record["machine"] = machine_info()
        record_path.write_text(json.dumps(record, indent=2))
        records.append(record)
        print(
            f"[suite] {name}: {record['metric']} {record['metric_dense']:.4f} -> "
            f"{record['metric_lumos']:.4f}, params -{100 * record['param_reduction']:.0f}%, "
            f"FLOPs -{100 * record['flop_reduction']:.0f}%, speed-up b256 "
            f"{record['speedup_b256']:.2f}x, overhead {100 * record['train_overhead']:+.0f}%, "
            f"{record['wall_s']:.0f}s",
            flush=True,
        )
    meta = {
        "command": command,
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "size": size,
        "budget": args.budget,
        "budget_on": args.budget_on,
        "tolerance": args.tolerance,
        "decide_on": args.decide_on if args.tolerance is not None else None,
        "compare_to": args.compare_to if args.tolerance is not None else None,
        "fourier_modes": not args.channels_only,
        "gate_step_every": args.gate_step_every,
        "seed": args.seed,
    }
    summary = {"meta": meta, "averages": averages(records) if records else {},
               "records": records}
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    write_markdown(records, meta, args.out / f"{stem}.md")
    if records and size == "full":
        plot(records, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
