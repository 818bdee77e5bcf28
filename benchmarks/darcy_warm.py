"""Why the gated Darcy FNO trails its dense self: the first epochs with every unit kept.

    python -m benchmarks.darcy_warm [--epochs 4] [--configs dense default ...]
                                    [--seed 0] [--cache-dir DIR] [--out DIR]

The tolerance walk on Darcy never holds a cut and ends with every unit kept, 1.7% behind the
dense model (``docs/results/suite.md``). This measures where that comes from: the Darcy
workload's FNO trained for its first epochs exactly as the walk's warm phase trains it
(``sparsify(budget=1.0)``, the walk's controller settings, one ``train`` call per epoch on the
recipe's annealed schedule) under gate configurations, and dense, on the same data, order and
seed; relative L2 on the selection half of the validation set after each epoch.

Configurations: ``dense`` (no gates), ``default`` (noise on every step),
``deterministic`` (``noise_interval=0.5``: the gates at their median, no noise),
``split2``/``split4`` (noise on one step in 2 / 4, ``gate_step_every``), ``channels``
(``fourier_modes=False``), ``gate-lr-1`` (``gate_lr_scale=1`` instead of 50).

Results: ``docs/results/darcy_warm.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import lumos
from benchmarks.suite import (
    RESULTS,
    results_header,
    results_record,
    validation_loaders,
    write_results,
)
from lumos.training import make_optimizer, predict, train
from lumos.workloads import build_dense, example_inputs, feature_options, get_workload

CONFIGS: dict[str, dict | None] = {
    "dense": None,
    "default": {},
    "deterministic": {"noise_interval": 0.5},
    "split4": {"gate_step_every": 4},
    "split2": {"gate_step_every": 2},
    "channels": {"fourier_modes": False},
    "gate-lr-1": {"gate_lr_scale": 1.0},
}


def run_config(name: str, epochs: int, seed: int, cache_dir) -> dict:
    wl = get_workload("darcy")
    data = wl.data("full", seed=seed, cache_dir=cache_dir)
    recipe = wl.recipes["full"]
    select, _ = validation_loaders(data, seed)
    loader = data.loader("train", recipe.batch_size, shuffle=True, seed=seed)
    model = build_dense(wl, data, seed=seed)
    options = CONFIGS[name]
    if options is None:
        net = model
    else:
        gates = dataclasses.replace(lumos.GateOptions(finetune=0.0), **options)
        net = lumos.sparsify(model, example_inputs(data), budget=1.0, gates=gates,
                             **feature_options(model, data))
        net.controller.warmup = 1e-9  # as fit_within_tolerance sets them for its walk
        net.controller.settle = math.inf
        net.controller.budget = 1.0
        net.enforce_budget(1.0)
    optimizer = make_optimizer(net, recipe.lr, None, recipe.weight_decay)
    curve, start = [], time.perf_counter()
    for epoch in range(epochs):
        train(net, loader, epochs=1, optimizer=optimizer, loss_fn=wl.loss, lr=recipe.lr,
              weight_decay=recipe.weight_decay, batch_size=recipe.batch_size, seed=seed,
              progress=False, lr_schedule=recipe.lr_schedule,
              progress_range=(epoch / recipe.epochs, (epoch + 1) / recipe.epochs))
        pred, target = predict(net, select)
        curve.append(float(wl.metrics(pred, target)[wl.primary]))
    return {"config": name, "options": options, "curve": curve,
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.darcy_warm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    for name in args.configs:
        rows.append(run_config(name, args.epochs, args.seed, args.cache_dir))
        curve = ", ".join(f"{v:.4f}" for v in rows[-1]["curve"])
        print(f"[darcy_warm] {name}: {curve}", flush=True)
    result = results_record("benchmarks.darcy_warm", rows)
    result["epochs"], result["seed"] = args.epochs, args.seed
    lines = results_header("Darcy FNO, first epochs with every unit kept: dense vs. gated",
                           result)
    lines += [
        "The Darcy workload's FNO trained as the tolerance walk's warm phase trains it "
        "(`sparsify(budget=1.0)`, one epoch at a time on the recipe's annealed schedule), "
        f"seed {args.seed}; relative L2 on the selection half of the validation set after "
        "each epoch (lower is better).", "",
        "| configuration | options | " + " | ".join(f"epoch {e}" for e in range(args.epochs))
        + " |",
        "|---|---|" + "---|" * args.epochs,
    ]
    for r in rows:
        options = "no gates" if r["options"] is None else (
            ", ".join(f"`{k}={v}`" for k, v in r["options"].items()) or "LUMOS defaults")
        lines.append(f"| {r['config']} | {options} | "
                     + " | ".join(f"{v:.4f}" for v in r["curve"]) + " |")
    write_results("darcy_warm", result, lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
