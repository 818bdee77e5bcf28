"""A CNN on 2D fields: prune conv channels (BatchNorm and skip connections included) and find
which input channels matter.

    python examples/cnn_fields.py [--smoke]

Your data: a float tensor of fields (samples x channels x height x width) and a target. Here:
the target is the mean squared gradient of channel 0 (a Dirichlet energy); channels 1-3 are
noise. The compacted model is saved with torch.save and TorchScript and reloads without LUMOS.
"""

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lumos
from lumos.training import train


def make_fields(n: int, side: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    smooth = F.avg_pool2d(torch.randn(n, 1, side + 4, side + 4, generator=g), 5, stride=1)
    noise = torch.randn(n, 3, side, side, generator=g)
    x = torch.cat([smooth * 3, noise], dim=1)
    gx, gy = torch.diff(x[:, 0], dim=-1), torch.diff(x[:, 0], dim=-2)
    y = (gx.pow(2).mean(dim=(1, 2)) + gy.pow(2).mean(dim=(1, 2))).unsqueeze(1)
    return x, (y - y.mean()) / y.std()


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Net(nn.Module):
    def __init__(self, c_in: int = 4, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def main(smoke: bool = False) -> dict:
    x, y = make_fields(256 if smoke else 3000, 16, seed=0)
    x_val, y_val = make_fields(128 if smoke else 500, 16, seed=1)
    torch.manual_seed(0)
    model = Net()
    sm = lumos.sparsify(model, x[:8], budget=0.3,
                        feature_names=["field", "noise_a", "noise_b", "noise_c"])
    train(sm, (x, y), epochs=4 if smoke else 30, lr=2e-3, batch_size=32)

    small = sm.compact()
    with torch.no_grad():
        r2 = lumos.metrics.r2(small(x_val), y_val)
    print(sm.report())
    print(f"validation R² {r2:.4f}; kept input channels: {sm.selected_features()['x']}")
    if smoke:  # seconds of training on a few hundred samples: a check, not a result
        print("(smoke size: this checks that the example runs; far too little data and "
              "training for a meaningful R² or feature set. Run it without --smoke for the "
              "documented result: docs/results/examples.md)")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(small, Path(tmp) / "small.pt")  # reload: torch.load(..., weights_only=False)
        torch.jit.script(small).save(str(Path(tmp) / "small_ts.pt"))
    return {"r2": r2, "small": small, "features": sm.selected_features()["x"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few seconds on a laptop")
    main(parser.parse_args().smoke)
