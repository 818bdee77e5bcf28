"""The budget curve of a workload: its metric at each kept fraction, from the dense model down.

    python -m benchmarks.budget_curve [--only NAME ...] [--budgets 1.0 0.85 0.7 0.5 0.25]
                                      [--size full] [--seed 0] [--cache-dir DIR]
                                      [--gates KEY=VALUE ...] [--out DIR]

What is measured (GitHub issue 18: "no workload above 60% kept unless the note shows why no
smaller model within tolerance exists, for example the tolerance curve of budgets"). The
tolerance walk stops at the smallest model it finds within tolerance; where it stops high, the
question is whether a smaller one exists at all. For each workload: the dense model trained
with the workload's recipe, then one LUMOS model per ``--budgets`` value (parameters, the
suite's gates and feature pressure, same recipe and seed), compacted. Budget 1.0 cuts nothing
by budget (only the feature pressure acts): the cost of training with gates at all. Each
model's metric on the half of the validation set the suite reports on (the tolerance walk
selects on the other half), its change against the dense model (signed, + better) and whether
it is within the 1% tolerance.

``--gates`` sets ``lumos.GateOptions`` fields for the LUMOS models (``finetune=0.3``,
``fourier_modes=False``, ``noise_interval=0.5``, ``gate_lr_scale=10``): what a gate setting
costs the curve. Results: ``docs/results/budget_curve.{json,md}`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

from torch.utils.data import DataLoader

from benchmarks.suite import chosen_workloads, results_header, results_record, write_results
from lumos import GateOptions
from lumos.errors import ConfigurationError
from lumos.measure import count_flops, count_params
from lumos.training import predict
from lumos.workloads import (
    build_dense,
    example_inputs,
    get_workload,
    sparsify_features,
    train_recipe,
)

TOLERANCE = 0.01


def _change(metric: float, dense: float, higher_is_better: bool) -> float:
    """Relative change against the dense metric, signed so that + is better."""
    sign = 1.0 if higher_is_better else -1.0
    return sign * (metric - dense) / abs(dense)


def parse_gates(pairs: list[str]) -> dict:
    """``["finetune=0.3", "fourier_modes=False"]`` -> GateOptions keywords (values as Python
    literals)."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"--gates takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"--gates {pair!r}: {text!r} is not a Python literal") from None
    return out


def workload_rows(name: str, size: str, budgets: list[float], seed: int, cache_dir,
                  gates: dict | None = None) -> dict:
    wl = get_workload(name)
    data = wl.data(size, seed=seed, cache_dir=cache_dir)
    recipe = wl.recipes[size]
    _, report = data.halve_val(seed)
    val = DataLoader(report, batch_size=512, collate_fn=report.collate)
    example = example_inputs(data)

    def metric(model) -> float:
        return float(wl.metrics(*predict(model, val))[wl.primary])

    start = time.perf_counter()
    dense = build_dense(wl, data, seed=seed)
    train_recipe(dense, wl, data, recipe, seed=seed)
    m_dense = metric(dense)
    record = {"workload": name, "size": size, "seed": seed, "gates": gates or {},
              "primary": wl.primary,
              "higher_is_better": wl.higher_is_better, "epochs": recipe.epochs,
              "dense": {"metric": m_dense, "params": count_params(dense),
                        "flops": count_flops(dense, example),
                        "train_s": time.perf_counter() - start}, "budgets": []}
    for budget in budgets:
        start = time.perf_counter()
        sm = sparsify_features(build_dense(wl, data, seed=seed), data, budget=budget,
                               gates=GateOptions(**(gates or {})))
        train_recipe(sm, wl, data, recipe, seed=seed)
        small = sm.eval().compact()
        m = metric(small)
        change = _change(m, m_dense, wl.higher_is_better)
        record["budgets"].append({
            "budget": budget, "metric": m, "change": change, "within": change >= -TOLERANCE,
            "params_kept": count_params(small) / record["dense"]["params"],
            "flops_kept": count_flops(small, example) / record["dense"]["flops"],
            "train_s": time.perf_counter() - start})
        print(f"[budget_curve] {name} @ {budget}: {wl.primary} {m:.4f} (dense {m_dense:.4f}, "
              f"{100 * change:+.2f}%)", flush=True)
    return record


def write_markdown(result: dict) -> list[str]:
    lines = results_header("Budget curves: the metric at each kept fraction", result,
                           threads_note="(the metric does not depend on it)")
    lines += ["Each workload: dense model and one LUMOS model per budget (parameters), same "
              "recipe and seed; metric on the reporting half of the validation set; change "
              "against dense, + better; *within*: within the 1% tolerance.", ""]
    for r in result["rows"]:
        d = r["dense"]
        gates = ", ".join(f"{k}={v!r}" for k, v in r.get("gates", {}).items())
        lines += [f"## {r['workload']} ({r['size']}, {r['epochs']} epochs"
                  + (f"; GateOptions({gates})" if gates else "") + ")", "",
                  f"Dense: {r['primary']} {d['metric']:.4f}, {d['params']:,} parameters.", "",
                  "| budget | params kept | FLOPs kept | metric | change | within 1% |",
                  "|---|---|---|---|---|---|"]
        for b in r["budgets"]:
            lines.append(f"| {b['budget']:.2f} | {100 * b['params_kept']:.1f}% | "
                         f"{100 * b['flops_kept']:.1f}% | {b['metric']:.4f} | "
                         f"{100 * b['change']:+.2f}% | {'yes' if b['within'] else 'no'} |")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.budget_curve",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", default=["darcy", "burgers"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[1.0, 0.85, 0.7, 0.5, 0.25])
    parser.add_argument("--size", choices=("smoke", "full"), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--gates", nargs="+", default=[], metavar="KEY=VALUE",
                        help="lumos.GateOptions fields for the LUMOS models")
    parser.add_argument("--out", type=Path, default=None,
                        help="write budget_curve.{json,md} here (default: docs/results)")
    args = parser.parse_args(argv)
    names = chosen_workloads(parser, args.only)
    bad = [b for b in args.budgets if not 0.0 < b <= 1.0]
    if bad:
        parser.error(f"--budgets must be fractions in (0, 1], got {bad}")
    try:
        gates = parse_gates(args.gates)
        GateOptions(**gates)
    except (ValueError, TypeError, ConfigurationError) as exc:
        parser.error(str(exc))
    rows = [workload_rows(n, args.size, args.budgets, args.seed, args.cache_dir, gates)
            for n in names]
    result = results_record("benchmarks.budget_curve", rows)
    write_results("budget_curve", result, write_markdown(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
