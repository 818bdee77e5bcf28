"""How small can a dense Darcy FNO be and stay within the tolerance? The evidence behind the
size the tolerance walk keeps on Darcy.

    python -m benchmarks.fno_frontier [--variants 32x8 24x8 32x6] [--tolerance 0.01]
                                      [--seed 0] [--cache-dir DIR] [--out DIR]

Each variant ``WIDTHxMODES`` is the Darcy workload's ``FNO2d`` (its four spectral layers,
lift and projection) built with that channel width and that many Fourier modes per axis,
initialised with the seed as the workload's model is, trained dense with the workload's full
recipe (same data order) and scored on the report half of the validation set, as
``benchmarks.suite`` scores it. The first variant is the reference (the workload's own model
is ``32x8``); a variant is within when its relative L2 is within ``--tolerance`` of the
reference's. A smaller variant that is not within says that no uniformly narrower (or
lower-mode) FNO trained this way reaches the tolerance, so a LUMOS model that keeps more of
the parameters is not leaving a known smaller model on the table.

Results: ``docs/results/fno_frontier.{json,md}``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from benchmarks.suite import (
    RESULTS,
    results_header,
    results_record,
    validation_loaders,
    write_results,
)
from lumos.measure import count_flops, count_params
from lumos.training import predict
from lumos.workloads import example_inputs, get_workload, train_recipe
from lumos.workloads.darcy import FNO2d

DEFAULT_VARIANTS = ["32x8", "24x8", "32x6"]


def parse_variant(text: str) -> tuple[int, int]:
    """``"24x8"`` -> (24, 8)."""
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise argparse.ArgumentTypeError(
            f"variant {text!r} is not WIDTHxMODES with both >= 1, e.g. 24x8")
    return int(match[1]), int(match[2])


def run_variant(width: int, modes: int, seed: int, cache_dir) -> dict:
    wl = get_workload("darcy")
    data = wl.data("full", seed=seed, cache_dir=cache_dir)
    recipe = wl.recipes["full"]
    _, val = validation_loaders(data, seed)
    torch.manual_seed(seed)  # as lumos.workloads.build_dense seeds the workload's model
    model = FNO2d(len(data.feature_names), 1, width=width, modes=modes)
    start = time.perf_counter()
    train_recipe(model, wl, data, recipe, seed=seed)
    pred, target = predict(model, val)
    return {"variant": f"{width}x{modes}", "width": width, "modes": modes,
            "params": count_params(model), "flops": count_flops(model, example_inputs(data)),
            "metric": wl.primary, "value": wl.metrics(pred, target)[wl.primary],
            "train_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fno_frontier",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", type=parse_variant, default=None,
                        metavar="WIDTHxMODES", help=f"default: {' '.join(DEFAULT_VARIANTS)}")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    variants = args.variants or [parse_variant(v) for v in DEFAULT_VARIANTS]
    rows = []
    for width, modes in variants:
        rows.append(run_variant(width, modes, args.seed, args.cache_dir))
        print(f"[fno_frontier] {rows[-1]['variant']}: {rows[-1]['value']:.5f}", flush=True)
    ref = rows[0]
    for row in rows:
        row["params_fraction"] = row["params"] / ref["params"]
        row["flops_fraction"] = row["flops"] / ref["flops"]
        row["change"] = (ref["value"] - row["value"]) / ref["value"]  # + better (lower L2)
        row["within"] = row["change"] >= -args.tolerance
    result = results_record("benchmarks.fno_frontier", rows)
    result["tolerance"], result["seed"] = args.tolerance, args.seed
    lines = results_header("Darcy FNO frontier: the smallest dense FNO within the tolerance",
                           result) + [
        "Each FNO trained dense with the Darcy workload's full recipe (seed "
        f"{args.seed}), relative L2 on the report half of the validation set; change against "
        f"the first row, + better; within: inside {100 * args.tolerance:g}% of it.", "",
        "| FNO (width x modes) | params | of the first | FLOPs of the first | rel. L2 | change "
        "| within |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['variant']} | {r['params']:,} | {100 * r['params_fraction']:.1f}% | "
              f"{100 * r['flops_fraction']:.1f}% | {r['value']:.5f} | {100 * r['change']:+.2f}% "
              f"| {'yes' if r['within'] else 'no'} |" for r in rows]
    write_results("fno_frontier", result, lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
