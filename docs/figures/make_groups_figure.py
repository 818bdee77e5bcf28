"""Regenerate docs/figures/coordinator_groups.png: python docs/figures/make_groups_figure.py"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lumos
from lumos.plots import plot_groups


class SkipNet(nn.Module):
    """Residual stream + concatenated skip + a transformer-style FFN: every coupling kind."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(4, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.res = nn.Conv2d(16, 16, 3, padding=1)
        self.branch = nn.Conv2d(16, 8, 3, padding=1)
        self.fuse = nn.Conv2d(24, 16, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = h + F.relu(self.res(h))                      # residual: one shared group
        h = torch.cat([h, F.relu(self.branch(h))], 1)    # concat: pieces keep their groups
        h = F.relu(self.fuse(h)).mean(dim=(2, 3))
        return self.head(h)


if __name__ == "__main__":
    sm = lumos.sparsify(SkipNet(), torch.randn(2, 4, 16, 16), budget=0.5)
    out = Path(__file__).with_name("coordinator_groups.png")
    plot_groups(sm, out, "Channel groups of a residual + concatenation CNN")
    print(out)
