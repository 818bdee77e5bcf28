"""Stochastic depth from a third-party package (MONAI's ``drop_connect``) follows the mode.

The function branches on its ``training`` argument; LUMOS keeps it as one graph node (its
channels pass through), so a model that uses it is gated, drops samples in train mode and is
the identity in eval mode, in the gated and the compacted model alike.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lumos
from lumos.testing import assert_compacts_exactly

efficientnet = pytest.importorskip("monai.networks.nets.efficientnet")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 8, 3, padding=1)
        self.block = efficientnet.MBConvBlock(2, 8, 8, 3, 1, [8, 8], expand_ratio=2,
                                              se_ratio=0.25, drop_connect_rate=0.5)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def test_drop_connect_is_one_node_and_the_block_is_gated():
    torch.manual_seed(0)
    x = torch.randn(6, 2, 8, 8)
    check = assert_compacts_exactly(Block(), x, batch_sizes=(1, 3))
    sm = check.sparse_model
    calls = [n for n in sm.model.graph.nodes if n.target is efficientnet.drop_connect]
    assert len(calls) == 1
    gated = {g.name for g in sm.graph_info.groups}
    assert "stem" in gated and "block._expand_conv" in gated, sm.report()


def test_drop_connect_drops_in_train_mode_only():
    torch.manual_seed(0)
    x = torch.randn(16, 2, 8, 8)
    model = Block()
    sm = lumos.sparsify(model, x, budget=0.5)
    sm.train()
    assert not torch.equal(sm(x), sm(x))  # samples dropped at random
    sm.eval()
    with torch.no_grad():
        first = sm(x)
        torch.testing.assert_close(sm(x), first, rtol=0, atol=0)
        small = sm.compact()
        torch.testing.assert_close(small(x), first, rtol=1e-4, atol=1e-5)
        small.train()
        model.train()
        assert not torch.equal(small(x), small(x))  # the compacted model drops in training too
