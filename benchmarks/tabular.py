"""Small tables: ``LumosRegressor`` with its defaults against the obvious baselines.

    python -m benchmarks.tabular [--quick]

scikit-learn's bundled ``load_diabetes`` (442 rows, 10 columns; 75/25 splits, seeds 0-4) and
``make_friedman1`` (2000 rows, 15 columns of which 5 matter, noise 0.5; seeds 0-2), each
against ``LassoCV`` and ``MLPRegressor(128, 128)`` (standardised inputs and target, its own
stopping rule). Test R², the features LUMOS keeps, the top of its ``feature_importances_``,
fit seconds and the epochs ``epochs="auto"`` chose. ``--quick``: two diabetes splits and one
Friedman seed. Writes ``docs/results/tabular.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch

from benchmarks.suite import results_header, results_record, write_results


def _sets(quick: bool):
    from sklearn.datasets import load_diabetes, make_friedman1
    from sklearn.model_selection import train_test_split

    X, y = load_diabetes(return_X_y=True)
    for seed in range(2 if quick else 5):
        yield ("diabetes", seed, *train_test_split(X, y, test_size=0.25, random_state=seed),
               None)
    for seed in range(1 if quick else 3):
        X, y = make_friedman1(n_samples=2000, n_features=15, noise=0.5, random_state=seed)
        yield ("friedman1", seed, *train_test_split(X, y, test_size=0.25, random_state=seed),
               [f"x{i}" for i in range(5)])


def _fit(name: str, X, y):
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import LassoCV
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lumos import LumosRegressor

    if name == "LassoCV":
        model = make_pipeline(StandardScaler(), LassoCV())
    elif name == "MLPRegressor":
        model = TransformedTargetRegressor(
            make_pipeline(StandardScaler(),
                          MLPRegressor(hidden_layer_sizes=(128, 128), max_iter=500,
                                       random_state=0)),
            transformer=StandardScaler())
    else:
        model = LumosRegressor(random_state=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)
    return model, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tabular", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two diabetes splits, one "
                        "Friedman seed (a smoke run; results are written all the same)")
    args = parser.parse_args(argv)
    from sklearn.metrics import r2_score

    torch.set_num_threads(1)
    rows = []
    for data, seed, X_train, X_test, y_train, y_test, true in _sets(args.quick):
        row: dict = {"data": data, "seed": seed, "true": true}
        for name in ("LUMOS", "LassoCV", "MLPRegressor"):
            model, seconds = _fit(name, X_train, y_train)
            row[name] = {"r2": float(r2_score(y_test, model.predict(X_test))),
                         "seconds": seconds}
            if name == "LUMOS":
                order = np.argsort(-model.feature_importances_)
                row[name].update(
                    kept=[str(f) for f in model.selected_features_],
                    top=[f"x{i}" for i in order[:5]],
                    importances=[round(float(v), 4) for v in model.feature_importances_],
                    epochs=int(model.epochs_), params=int(model.n_params_),
                    dense_params=int(model.n_params_dense_))
        rows.append(row)
        print(f"{data} {seed}: " + ", ".join(f"{n} {row[n]['r2']:.3f}"
                                             for n in ("LUMOS", "LassoCV", "MLPRegressor")),
              flush=True)
    result = results_record("benchmarks.tabular", rows)
    write_results("tabular", result, _markdown(result))
    return 0


def _markdown(result: dict) -> list[str]:
    lines = results_header(
        "Small tables: LumosRegressor (defaults) against LassoCV and MLPRegressor", result) + [
        "`LumosRegressor(random_state=0)` with every default (`epochs=\"auto\"`, budget 0.25); "
        "`LassoCV` and `MLPRegressor((128, 128), max_iter=500)` on standardised inputs (the "
        "MLP's target too). Test R² on 25% held out.", "",
        "| data | seed | LUMOS R² | LassoCV R² | MLPRegressor R² | LUMOS − Lasso | LUMOS kept "
        "| LUMOS top-5 importances | epochs | LUMOS params | fit s (LUMOS / Lasso / MLP) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lum, las, mlp = r["LUMOS"], r["LassoCV"], r["MLPRegressor"]
        lines.append(
            f"| {r['data']} | {r['seed']} | {lum['r2']:.3f} | {las['r2']:.3f} | {mlp['r2']:.3f} "
            f"| {lum['r2'] - las['r2']:+.3f} | {len(lum['kept'])}: {', '.join(lum['kept'])} "
            f"| {', '.join(lum['top'])} | {lum['epochs']} | {lum['params']} / "
            f"{lum['dense_params']} | {lum['seconds']:.1f} / {las['seconds']:.2f} / "
            f"{mlp['seconds']:.1f} |")
    for data in dict.fromkeys(r["data"] for r in result["rows"]):
        part = [r for r in result["rows"] if r["data"] == data]
        gap = [r["LUMOS"]["r2"] - r["LassoCV"]["r2"] for r in part]
        lines.append("")
        lines.append(f"{data}: mean R² LUMOS {np.mean([r['LUMOS']['r2'] for r in part]):.3f}, "
                     f"LassoCV {np.mean([r['LassoCV']['r2'] for r in part]):.3f}, "
                     f"MLPRegressor {np.mean([r['MLPRegressor']['r2'] for r in part]):.3f}; "
                     f"LUMOS − Lasso from {min(gap):+.3f} to {max(gap):+.3f}.")
    return lines


if __name__ == "__main__":
    sys.exit(main())
