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


@pytest.mark.parametrize("flow", ["source_to_target", "target_to_source"])
def test_cfconv_substitute_equals_the_layer(flow):
    from torch_geometric.nn.models.schnet import CFConv

    from lumos.topology.rules_graph import _cfconv_forward

    torch.manual_seed(0)
    x, edge_index, edge_attr = _graph()
    filters = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 5))
    conv = CFConv(6, 4, 5, filters, cutoff=2.0)
    conv.flow = flow
    weight = torch.rand(edge_index.shape[1])
    torch.testing.assert_close(_cfconv_forward(conv, x, edge_index, weight, edge_attr),
                               conv(x, edge_index, weight, edge_attr), rtol=1e-6, atol=1e-6)


class _Readout(torch.nn.Module):
    """An aggregation module as the readout: its class overrides ``__call__`` (data-dependent
    ``int(index.max()) + 1``), which fx cannot trace and ``torch.load`` re-traces."""

    def __init__(self, aggr: str) -> None:
        super().__init__()
        self.lin1, self.lin2 = torch.nn.Linear(6, 16), torch.nn.Linear(16, 3)
        self.readout = pyg_nn.aggr.SumAggregation() if aggr == "sum" else \
            pyg_nn.aggr.MaxAggregation()

    def forward(self, x, batch):
        return self.lin2(self.readout(torch.relu(self.lin1(x)), batch, dim=0))


@pytest.mark.parametrize("aggr", ["sum", "max"])
def test_an_aggregation_module_is_one_gated_layer_and_the_results_reload(aggr, tmp_path):
    import lumos

    torch.manual_seed(0)
    x, batch = torch.randn(9, 6), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    sm = lumos.sparsify(_Readout(aggr), (x, batch), budget=0.5)
    (hidden,) = [g for g in sm.graph_info.groups if g.kind == "neuron"]
    assert hidden.name == "lin1" and hidden.size == 16
    with torch.no_grad():
        sm.gates.log_alpha[hidden.offset:hidden.offset + 8] = -10.0
    sm.eval()
    small = sm.compact()
    assert small.get_submodule("lin1").out_features == 8
    with torch.no_grad():
        torch.testing.assert_close(small(x, batch), sm(x, batch))
        other = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1, 1])  # another batch: two graphs
        torch.testing.assert_close(small(x, other), sm(x, other))
    torch.save(small, tmp_path / "small.pt")
    torch.save(sm, tmp_path / "sm.pt")
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "small.pt", weights_only=False)(x, batch),
                                   small(x, batch))
        torch.testing.assert_close(torch.load(tmp_path / "sm.pt", weights_only=False)(x, batch),
                                   sm(x, batch))


@pytest.mark.parametrize("options", [
    dict(edge_dim=3), dict(edge_dim=3, train_eps=True, eps=0.3), dict(edge_dim=None),
], ids=["edge-lin", "train-eps", "no-lin"])
def test_gine_substitute_equals_the_layer(options):
    from lumos.topology.rules_graph import _gine_forward

    torch.manual_seed(0)
    x, edge_index, edge_attr = _graph()
    if options["edge_dim"] is None:
        edge_attr = torch.randn(edge_index.shape[1], 6)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    conv = pyg_nn.GINEConv(mlp, **options).eval()
    torch.testing.assert_close(_gine_forward(conv, x, edge_index, edge_attr),
                               conv(x, edge_index, edge_attr), rtol=1e-6, atol=1e-6)
