"""Gate ablations: which noise/temperature schedule and whether to freeze-and-fine-tune
(``--study gates``), which units to gate (``--study units``: an FNO's channels only, or
its channels and Fourier modes), and how open the structural gates start (``--study init``:
their initial keep probability; the feature gates start at 0.99 in every config, so feature
selection is not what changes).

    python -m benchmarks.ablation [--study gates|units|init] [--only NAME ...] [--size full]

For each workload: one dense model (the reference metric), then one LUMOS run per gate
configuration, all from the same initial weights, the same recipe and data order, and the same
budget. Records metric (compacted model), kept parameter and FLOP fractions and budget error,
irrelevant inputs dropped / true inputs kept, and training time. Results:
``docs/results/ablation.{json,md}`` (gates) and ``ablation_units.{json,md}`` (units);
``lumos.GateOptions`` defaults are chosen from them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from lumos import GateOptions, Schedule
from lumos.measure import count_flops, count_params
from lumos.training import predict
from lumos.workloads import (
    build_dense,
    feature_argument,
    get_workload,
    sparsify_features,
    train_recipe,
)

from .suite import RESULTS, _steady, machine_info

CONFIGS: dict[str, GateOptions] = {
    "stochastic": GateOptions(finetune=0.0),  # plain hard-concrete gating
    "narrowing": GateOptions(noise_interval=Schedule("cosine", 0.0, 0.45),
                             temperature=Schedule("linear", 2 / 3, 0.4), finetune=0.0),
    "widening": GateOptions(noise_interval=Schedule("cosine", 0.45, 0.0),
                            temperature=Schedule("linear", 1.0, 2 / 3), finetune=0.0),
    "deterministic": GateOptions(noise_interval=0.5, finetune=0.0),
}
FINETUNE = 0.1
DEFAULT_WORKLOADS = ["atomistic_energy", "cosmo_power_spectrum", "cfd_pressure", "darcy",
                     "boiling_point", "mesh_pde", "combustion"]
#: which units an FNO gates (GateOptions.fourier_modes): the first is the baseline
UNIT_CONFIGS: dict[str, GateOptions] = {
    "channels": GateOptions(fourier_modes=False),
    "channels+modes": GateOptions(fourier_modes=True),
}
#: how open the structural gates (neurons, channels, heads, modes) start. A gate that starts at
#: P(open) = 0.99 sits at its clamp's top (z = 1) only ~80% of the steps, so every unit is
#: scaled down at random on one step in five until its log alpha has grown: noise that cost the
#: Darcy FNO 4.4% rel. L2 with nothing cut (0.0183 against 0.0175 dense; 0.0164 at 0.999).
#: "keep 0.99" is the default; the last config keeps MLP neurons at 0.99 too, where the noise
#: helps feature selection (all units at 0.9999 left 5 of 12 noise columns open on Coulomb's law)
INIT_CONFIGS: dict[str, GateOptions] = {
    **{f"keep {p:g}": GateOptions(init_keep_probability={"feature": 0.99, "default": p})
       for p in (0.99, 0.999, 0.9999)},
    "keep 0.9999, neurons 0.99": GateOptions(
        init_keep_probability={"feature": 0.99, "neuron": 0.99, "default": 0.9999}),
}
#: per study: its configs, the baseline the others are compared with, default workloads
STUDIES = {
    "gates": ("stochastic", DEFAULT_WORKLOADS),
    "units": ("channels", ["darcy"]),
    "init": ("keep 0.99", [*DEFAULT_WORKLOADS, "burgers"]),
}
STUDY_CONFIGS = {"units": UNIT_CONFIGS, "init": INIT_CONFIGS}


def all_configs() -> dict[str, GateOptions]:
    out = {}
    for name, opts in CONFIGS.items():
        out[name] = opts
        out[f"{name}+finetune"] = replace(opts, finetune=FINETUNE)
    return out


def run_workload(name: str, size: str, budget: float, seed: int, epochs_scale: float,
                 configs: dict[str, GateOptions], cache_dir=None) -> list[dict]:
    wl = get_workload(name)
    data = wl.data(size, seed=seed, cache_dir=cache_dir)
    recipe = wl.recipes[size]
    epochs = max(2, round(recipe.epochs * epochs_scale))
    val = data.loader("val", 512, shuffle=False)

    def fit(model):
        return train_recipe(model, wl, data, recipe, seed=seed, epochs=epochs)

    dense = build_dense(wl, data, seed=seed)
    h_dense = fit(dense)
    pred, target = predict(dense, val)
    dense_metric = wl.metrics(pred, target)[wl.primary]
    dense_params = count_params(dense)
    one = data.example_batch("val", 1)[0]  # FLOPs per sample, as in the suite
    dense_flops = count_flops(dense, one)
    records = []
    for config, opts in configs.items():
        base = build_dense(wl, data, seed=seed)
        arg = feature_argument(base, data.feature_arg)
        sm = sparsify_features(base, data, budget=budget, gates=opts)
        start = time.perf_counter()
        history = fit(sm)
        wall = time.perf_counter() - start
        small = sm.compact()
        pred, _ = predict(small, val)
        metric = wl.metrics(pred, target)[wl.primary]
        kept_fraction = count_params(small) / dense_params
        flops_fraction = count_flops(small, one) / dense_flops
        kept = {data.feature_names.index(n) for n in sm.selected_features()[arg]}
        irrelevant, true = set(data.irrelevant_features), set(data.true_features)
        rel = (metric - dense_metric) / max(abs(dense_metric), 1e-12)
        records.append({
            "workload": name, "architecture": wl.architecture, "config": config,
            "size": size, "epochs": epochs, "epochs_scale": epochs_scale, "budget": budget,
            "seed": seed,
            "metric": wl.primary, "higher_is_better": wl.higher_is_better,
            "metric_dense": dense_metric, "metric_lumos": metric,
            "metric_relative_change": rel if wl.higher_is_better else -rel,  # + is better
            "kept_fraction": kept_fraction, "budget_error": kept_fraction - budget,
            "flops_fraction": flops_fraction,
            "irrelevant_dropped": len(irrelevant - kept) / max(len(irrelevant), 1),
            "true_kept": len(true & kept) / max(len(true), 1),
            "train_epoch_s": statistics.median(_steady(history.epoch_seconds)),
            "train_epoch_dense_s": statistics.median(_steady(h_dense.epoch_seconds)),
            "train_wall_s": wall,
        })
        r = records[-1]
        print(f"[ablation] {name} {config}: {wl.primary} {dense_metric:.4f} -> {metric:.4f} "
              f"kept {kept_fraction:.3f} noise dropped {r['irrelevant_dropped']:.2f} "
              f"true kept {r['true_kept']:.2f} {wall:.0f}s", flush=True)
    return records


def summarize(records: list[dict], baseline_config: str = "stochastic") -> dict[str, dict]:
    """Per config: means over workloads, the median metric change (one workload that every
    config finds hard must not decide alone), and wins against the baseline (plain
    hard-concrete gating, ``stochastic``, in the gates study) on the same workload."""
    baseline = {(r["workload"], r["budget"]): r["metric_relative_change"] for r in records
                if r["config"] == baseline_config}
    several = len({r["budget"] for r in records}) > 1

    def label(r: dict) -> str:
        return f"{r['config']} @ {r['budget']}" if several else r["config"]

    out = {}
    for config in dict.fromkeys(label(r) for r in records):
        rs = [r for r in records if label(r) == config]
        paired = [r for r in rs if (r["workload"], r["budget"]) in baseline]
        out[config] = {
            "mean_metric_relative_change": statistics.mean(r["metric_relative_change"]
                                                           for r in rs),
            "median_metric_relative_change": statistics.median(r["metric_relative_change"]
                                                               for r in rs),
            "better_than_baseline": sum(
                r["metric_relative_change"] > baseline[(r["workload"], r["budget"])]
                for r in paired),
            "worse_than_baseline": sum(
                r["metric_relative_change"] < baseline[(r["workload"], r["budget"])]
                for r in paired),
            "mean_flops_fraction": statistics.mean(r.get("flops_fraction", float("nan"))
                                                   for r in rs),
            "mean_abs_budget_error": statistics.mean(abs(r["budget_error"]) for r in rs),
            "max_budget_overshoot": max(r["budget_error"] for r in rs),
            "irrelevant_dropped": statistics.mean(r["irrelevant_dropped"] for r in rs),
            "true_kept": statistics.mean(r["true_kept"] for r in rs),
            "train_overhead": statistics.mean(r["train_epoch_s"] / r["train_epoch_dense_s"] - 1
                                              for r in rs),
            "workloads": len(rs),
        }
    return out


def write_markdown(records: list[dict], summary: dict, meta: dict, path: Path) -> None:
    title = {"gates": "Gate-training ablation", "units": "Unit ablation (what an FNO gates)",
             "init": "Initial gate ablation (how open the structural gates start)"}
    lines = [
        f"# {title[meta.get('study', 'gates')]}", "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']['cpu_model']}, {meta['machine']['cpu_count']} cores, "
        f"torch {meta['machine']['torch']}  ",
        f"Date: {meta['date']}; size: {meta['size']}; epochs x{meta['epochs_scale']}; "
        f"budget {meta['budget']}; seed {meta['seed']}", "",
        "Metric change is relative to the dense model, signed so that + is better.", "",
        f"| config | mean metric change | median | better / worse than {meta['baseline']} | "
        "FLOPs kept | mean abs budget error | max overshoot | irrelevant dropped | true kept | "
        "train overhead |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, s in summary.items():
        lines.append(
            f"| {config} | {100 * s['mean_metric_relative_change']:+.2f}% | "
            f"{100 * s['median_metric_relative_change']:+.2f}% | "
            f"{s['better_than_baseline']} / {s['worse_than_baseline']} | "
            f"{100 * s['mean_flops_fraction']:.1f}% | "
            f"{100 * s['mean_abs_budget_error']:.2f} pp | "
            f"{100 * s['max_budget_overshoot']:+.2f} pp | "
            f"{100 * s['irrelevant_dropped']:.1f}% | {100 * s['true_kept']:.1f}% | "
            f"{100 * s['train_overhead']:+.1f}% |"
        )
    lines += ["", "## Per workload", "",
              "| workload | config | budget | dense | LUMOS | change | kept | FLOPs kept | "
              "noise dropped | true kept |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        flops = r.get("flops_fraction")
        lines.append(
            f"| {r['workload']} | {r['config']} | {r['budget']} | {r['metric_dense']:.4f} | "
            f"{r['metric_lumos']:.4f} | {100 * r['metric_relative_change']:+.2f}% | "
            f"{100 * r['kept_fraction']:.1f}% | "
            f"{'-' if flops is None else f'{100 * flops:.1f}%'} | "
            f"{100 * r['irrelevant_dropped']:.0f}% | "
            f"{100 * r['true_kept']:.0f}% |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=tuple(STUDIES), default="gates")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=None)
    parser.add_argument("--configs", nargs="+", metavar="CONFIG", default=None)
    parser.add_argument("--size", choices=("smoke", "full"), default="full")
    parser.add_argument("--epochs-scale", type=float, default=1.0)
    parser.add_argument("--budget", type=float, nargs="+", default=[0.25],
                        help="kept fraction(s); several give one summary row per budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--rerun", nargs="+", metavar="CONFIG",
                        help="run these configs again even where OUT/ablation/ has them")
    args = parser.parse_args(argv)
    baseline, default_workloads = STUDIES[args.study]
    configs = all_configs() if args.study == "gates" else dict(STUDY_CONFIGS[args.study])
    if args.configs:
        configs = {k: v for k, v in configs.items() if k in args.configs}
    stem = "ablation" if args.study == "gates" else f"ablation_{args.study}"
    args.only = args.only or default_workloads
    per = args.out / stem
    per.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.ablation " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    records = []
    for name in args.only:
        path = per / f"{name}.json"
        previous = json.loads(path.read_text()) if path.exists() else []
        for budget in args.budget:
            same = [r for r in previous if r["size"] == args.size and r["budget"] == budget
                    and r["seed"] == args.seed
                    and r.get("epochs_scale", 1.0) == args.epochs_scale]
            done = {r["config"] for r in same} - set(args.rerun or [])
            todo = {k: v for k, v in configs.items() if k not in done}
            if todo:
                rs = run_workload(name, args.size, budget, args.seed, args.epochs_scale, todo,
                                  args.cache_dir)
                fresh = {r["config"] for r in rs}
                previous = [r for r in previous if not (r in same and r["config"] in fresh)]
                previous += rs
                same = [r for r in same if r["config"] not in fresh] + rs
                path.write_text(json.dumps(previous, indent=2))
            else:
                print(f"[ablation] {name} at budget {budget}: reused {path}", flush=True)
            records += sorted((r for r in same if r["config"] in configs),
                              key=lambda r: list(configs).index(r["config"]))
    summary = summarize(records, baseline)
    meta = {"command": command, "study": args.study, "baseline": baseline,
            "machine": machine_info(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "size": args.size,
            "epochs_scale": args.epochs_scale, "budget": ", ".join(map(str, args.budget)),
            "seed": args.seed}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "records": records}, indent=2))
    write_markdown(records, summary, meta, args.out / f"{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
