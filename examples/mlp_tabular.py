"""Tabular regression with an MLP: find the physical variables, shrink the network.

    python examples/mlp_tabular.py [--smoke]

Your data: a float tensor X (samples x columns) and a target y. Here: the ideal-gas law
P = nRT/V with 8 planted noise columns, so you can check what LUMOS keeps.
"""

import argparse

import torch
from torch import nn

import lumos
from lumos.training import train
from lumos.workloads.laws import make_law_data, train_val_split


def main(smoke: bool = False) -> dict:
    data = make_law_data("ideal_gas", n_samples=1000 if smoke else 8000, n_noise=8, seed=0)
    tr, va = train_val_split(data, 0.2, seed=0)
    x, y = torch.from_numpy(tr.X), torch.from_numpy(tr.y)
    x_val, y_val = torch.from_numpy(va.X), torch.from_numpy(va.y)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(x.shape[1], 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                          nn.Linear(128, 1))
    sm = lumos.sparsify(model, x[:8], budget=0.2, feature_names=data.feature_names)
    train(sm, (x, y), epochs=15 if smoke else 60, lr=2e-3, batch_size=64)

    small = sm.compact()  # a plain nn.Module: takes all 11 columns, uses the kept ones
    with torch.no_grad():
        r2 = lumos.metrics.r2(small(x_val), y_val)
    print(sm.report())
    print(f"validation R² {r2:.4f}; kept features: {sm.selected_features()['input']}")
    if smoke:  # seconds of training on a few hundred samples: a check, not a result
        print("(smoke size: this checks that the example runs; far too little data and "
              "training for a meaningful R² or feature set. Run it without --smoke for the "
              "documented result: docs/results/examples.md)")
    print(f"parameters {lumos.count_params(model):,} -> {lumos.count_params(small):,}")
    return {"r2": r2, "features": sm.selected_features()["input"], "small": small}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few seconds on a laptop")
    main(parser.parse_args().smoke)
