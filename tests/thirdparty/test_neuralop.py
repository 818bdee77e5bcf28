"""neuraloperator's own ``SpectralConv`` (dense, Tucker, CP, separable; several layers in one
module): channels gated, compaction exact for random gate states, the compacted model a
smaller ``SpectralConv`` of the same class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lumos
from lumos.testing import assert_compacts_exactly
from thirdparty.zoo import _stub_wandb

pytest.importorskip("tltorch")
_stub_wandb()  # neuraloperator 0.3.0 imports wandb, unused by its layers
SpectralConv = pytest.importorskip("neuralop.layers.spectral_convolution").SpectralConv


class Operator(nn.Module):
    """lift -> spectral conv layer 0 (+ skip) -> layer 1 of the same module -> project."""

    def __init__(self, factorization: str | None, separable: bool, width: int = 6) -> None:
        super().__init__()
        self.lift = nn.Conv2d(2, width, 1)
        self.conv = SpectralConv(width, width, (4, 4), n_layers=2, separable=separable,
                                 factorization=factorization, rank=0.8,
                                 implementation="factorized" if factorization else "reconstructed")
        self.skips = nn.ModuleList([nn.Conv2d(width, width, 1) for _ in range(2)])
        self.project = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        h = self.lift(x)
        for i in range(2):
            h = torch.nn.functional.gelu(self.conv(h, i) + self.skips[i](h))
        return self.project(h)


@pytest.mark.parametrize("factorization,separable", [
    (None, False), ("tucker", False), ("cp", False)])
def test_spectral_conv_is_gated_and_compacts_exactly(factorization, separable):
    torch.manual_seed(0)
    model = Operator(factorization, separable)
    x = torch.randn(3, 2, 8, 8)
    check = assert_compacts_exactly(model, x, batch_sizes=(1,), check_counts=factorization is None)
    sm = check.sparse_model
    assert "lift" in {g.name for g in sm.graph_info.groups}, sm.report()
    small = sm.eval().compact()
    conv = small.get_submodule("conv")
    assert type(conv) is SpectralConv
    assert conv.in_channels == conv.out_channels <= 6
    assert lumos.count_params(small) == sm.compacted_counts()["params"]


def test_a_tensor_train_weight_keeps_the_layer_whole_and_says_why():
    torch.manual_seed(0)
    model = Operator("tt", False)
    sm = lumos.sparsify(model, torch.randn(2, 2, 8, 8), budget=0.5)
    assert "ComplexTTTensor weight: kept whole" in sm.report()
    assert "lift" not in {g.name for g in sm.graph_info.groups}
    assert_compacts_exactly(sm, torch.randn(2, 2, 8, 8), check_counts=False)


@pytest.mark.parametrize("factorization", ["tucker", "cp"])
def test_factorized_ranks_are_units_cut_from_the_core_and_the_factors(factorization):
    """Most of a factorized layer is its core (CP: its rank-wide factors): the ranks are
    gated, and compaction cuts them from the core and the factors' columns."""
    torch.manual_seed(0)
    sm = lumos.sparsify(Operator(factorization, False), torch.randn(3, 2, 8, 8), budget=0.5)
    ranks = [g for g in sm.graph_info.groups if g.kind == "rank"]
    assert len(ranks) == (8 if factorization == "tucker" else 2)  # 4 (1) per layer, 2 layers
    with torch.no_grad():
        for group in ranks:  # close half of every rank
            sm.gates.log_alpha[group.offset:group.offset + group.size // 2] = -10.0
    small = sm.eval().compact()
    x = torch.randn(4, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(small(x), sm(x), rtol=1e-4, atol=1e-5)
    for before, after in zip(sm.model.get_submodule("conv").weight, small.conv.weight):
        if factorization == "tucker":
            assert after.rank == tuple(r - r // 2 for r in before.rank)
            assert tuple(after.core.shape) == after.rank
        else:
            assert after.rank == before.rank - before.rank // 2 == after.weights.shape[0]
        assert [f.shape[1] for f in after.factors] == (
            list(after.rank) if factorization == "tucker" else [after.rank] * 4)
    assert lumos.count_params(small) == sm.compacted_counts()["params"]
    assert lumos.count_params(small) < lumos.count_params(sm.model) * 0.7
