"""LUMOS traces some torch-geometric layers through a plain-torch copy of their forward (so
their inner MLPs and message channels are gated by the generic rules). Each copy must compute
exactly what the layer computes, for every configuration it accepts."""

from __future__ import annotations

import pytest
import torch

pyg_nn = pytest.importorskip("torch_geometric.nn")
from lumos.topology.rules_graph import (  # noqa: E402
    _edge_conv_forward,
    _gate_conv_forward,
    _pna_forward,
)


def _graph(n: int = 9, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (24,), generator=g)
    dst = torch.randint(0, n - 1, (24,), generator=g)  # node n-1 receives nothing
    return torch.randn(n, d, generator=g), torch.stack([src, dst]), torch.randn(24, 3, generator=g)


@pytest.mark.parametrize("options", [
    dict(aggregators=["mean", "min", "max", "std", "var", "sum"],
         scalers=["identity", "amplification", "attenuation", "linear", "inverse_linear"]),
    dict(aggregators=["mean", "max"], scalers=["identity"], towers=2, divide_input=False,
         pre_layers=2, post_layers=2),
    dict(aggregators=["std"], scalers=["amplification"], towers=3, divide_input=True),
    dict(aggregators=["sum", "min"], scalers=["linear", "attenuation"], edge_dim=3),
])
def test_pna_substitute_equals_the_layer(options):
    torch.manual_seed(0)
    x, edge_index, edge_attr = _graph()
    conv = pyg_nn.PNAConv(6, 6, deg=torch.tensor([1, 3, 4, 2]), **options).eval()
    extra = (edge_attr,) if "edge_dim" in options else ()
    torch.testing.assert_close(_pna_forward(conv, x, edge_index, *extra),
                               conv(x, edge_index, *extra), rtol=1e-6, atol=1e-6)


def test_pna_with_an_aggregator_it_cannot_read_is_refused_by_name():
    conv = pyg_nn.PNAConv(6, 6, ["softmax"], ["identity"], deg=torch.tensor([1, 3]))
    x, edge_index, _ = _graph()
    with pytest.raises(TypeError, match="SoftmaxAggregation"):
        _pna_forward(conv, x, edge_index)


@pytest.mark.parametrize("aggr", ["max", "mean", "add"])
def test_edge_conv_substitute_equals_the_layer(aggr):
    torch.manual_seed(0)
    x, edge_index, _ = _graph()
    conv = pyg_nn.EdgeConv(torch.nn.Sequential(torch.nn.Linear(12, 5), torch.nn.ReLU()), aggr)
    torch.testing.assert_close(_edge_conv_forward(conv, x, edge_index), conv(x, edge_index))


def test_gate_conv_substitute_equals_the_layer():
    from torch_geometric.nn.models.attentive_fp import GATEConv

    torch.manual_seed(0)
    x, edge_index, edge_attr = _graph()
    conv = GATEConv(6, 6, edge_dim=3).eval()
    torch.testing.assert_close(_gate_conv_forward(conv, x, edge_index, edge_attr),
                               conv(x, edge_index, edge_attr), rtol=1e-6, atol=1e-6)
