"""A Transformer encoder on sequences: prune attention heads and FFN width, find which
per-step features matter.

    python examples/attention_sequences.py [--smoke]

Your data: sequences as a float tensor (samples x steps x features). Here: the target is the
average over time of feature 0 times the next step's feature 1; features 2-4 are noise. The
residual stream passes through LayerNorm, so LUMOS keeps it whole (report() says so) and prunes
heads and the FFN; heads that close become a smaller plain-PyTorch attention.
"""

import argparse

import torch
from torch import nn

import lumos
from lumos.training import train


def make_sequences(n: int, steps: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, steps, 5, generator=g)
    y = (x[:, :-1, 0] * x[:, 1:, 1]).mean(dim=1, keepdim=True) * 3
    return x, y


class Net(nn.Module):
    def __init__(self, d_in: int = 5, d_model: int = 32, heads: int = 4, layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(d_in, d_model)
        self.position = nn.Linear(1, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x):
        steps = torch.linspace(0, 1, x.shape[1]).view(1, -1, 1).expand(x.shape[0], -1, 1)
        h = self.embed(x) + self.position(steps)
        return self.head(self.encoder(h).mean(dim=1))


def main(smoke: bool = False) -> dict:
    x, y = make_sequences(512 if smoke else 6000, seed=0)
    x_val, y_val = make_sequences(256 if smoke else 1000, seed=1)
    torch.manual_seed(0)
    model = Net()
    sm = lumos.sparsify(model, x[:8], budget=0.5, features=["x"])
    train(sm, (x, y), epochs=4 if smoke else 40, lr=2e-3, batch_size=64)

    small = sm.compact()
    with torch.no_grad():
        r2 = lumos.metrics.r2(small(x_val), y_val)
    print(sm.report())
    print(f"validation R² {r2:.4f}; kept features: {sm.selected_features()['x']}")
    if smoke:  # seconds of training on a few hundred samples: a check, not a result
        print("(smoke size: this checks that the example runs; far too little data and "
              "training for a meaningful R² or feature set. Run it without --smoke for the "
              "documented result: docs/results/examples.md)")
    return {"r2": r2, "small": small, "features": sm.selected_features()["x"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few seconds on a laptop")
    main(parser.parse_args().smoke)
