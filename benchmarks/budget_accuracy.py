"""Budget accuracy without a lambda: where the compacted parameter count lands for a budget.

    python -m benchmarks.budget_accuracy

The demo MLP (2 x 256) and wider/deeper ones (3 x 512) on aerodynamic drag with 12 noise
columns, 4096 samples, 40 epochs, default gates, only ``budget=`` given (the setting of
``tests/test_end_to_end.py``). Writes ``docs/results/budget_accuracy.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import lumos
from benchmarks.suite import results_header, results_record, write_results
from lumos.demo import demo_mlp
from lumos.training import train
from lumos.workloads.laws import make_law_data

CASES = ((256, 2, 0.25), (256, 2, 0.5), (512, 3, 0.1), (512, 3, 0.25))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.budget_accuracy",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)  # no options: --help prints this and leaves the results alone
    torch.set_num_threads(1)
    data = make_law_data("drag", n_samples=4096, n_noise=12, seed=0)
    x, y = torch.from_numpy(data.X), torch.from_numpy(data.y)
    true = [data.feature_names[i] for i in data.true_features]
    rows = []
    for width, depth, budget in CASES:
        torch.manual_seed(0)
        model = demo_mlp(x.shape[1], width, depth)
        sm = lumos.sparsify(model, x[:8], budget=budget, feature_names=list(data.feature_names))
        start = time.perf_counter()
        train(sm, (x, y), epochs=40, progress=False)
        fraction = lumos.count_params(sm.compact()) / lumos.count_params(model)
        rows.append({"width": width, "depth": depth, "budget": budget, "kept": fraction,
                     "error_pp": 100 * (fraction - budget),
                     "features_kept": sm.selected_features()["input"], "true_features": true,
                     "train_seconds": time.perf_counter() - start})
        print(f"{depth}x{width} budget {budget}: {fraction:.4f}", flush=True)
    result = results_record("benchmarks.budget_accuracy", rows)
    lines = results_header("Budget accuracy (no lambda given)", result) + [
        "Aerodynamic drag + 12 noise columns, 4096 samples, 40 epochs, default gates.", "",
        "| MLP | budget | compacted / dense params | error | features kept | true |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['depth']} x {r['width']} | {r['budget']:.2f} | {r['kept']:.4f} | "
                     f"{r['error_pp']:+.2f} pp | {', '.join(r['features_kept'])} | "
                     f"{', '.join(r['true_features'])} |")
    write_results("budget_accuracy", result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
