"""What the user decides (keep=), what strict=True refuses, and warnings that name the layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lumos


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 32), nn.Linear(32, 32)

    def forward(self, x):
        return torch.relu(self.b(torch.relu(self.a(x))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.mid, self.head = Encoder(), nn.Linear(32, 32), nn.Linear(32, 1)

    def forward(self, x):
        return self.head(torch.relu(self.mid(self.encoder(x))))


def test_keep_by_name_keeps_the_module_whole_and_reports_it():
    sm = lumos.sparsify(Net(), torch.randn(16, 6), budget=0.5, keep=["encoder"])
    names = [g.name for g in sm.graph_info.groups]
    assert "mid" in names and not any(n.startswith("encoder") for n in names)
    assert "kept whole at the user's request" in sm.report()
    with torch.no_grad():
        sm.gates.log_alpha[:] = 10.0
        sm.gates.log_alpha[-5:] = -10.0  # close some of mid's neurons
    small = sm.eval().compact()
    assert small.get_submodule("encoder.b").out_features == 32  # whole
    assert small.get_submodule("mid").out_features == 27


def test_keep_by_class_and_bad_names():
    sm = lumos.sparsify(Net(), torch.randn(16, 6), budget=0.5, keep=[Encoder])
    assert not any(g.name.startswith("encoder") for g in sm.graph_info.groups)
    with pytest.raises(lumos.ConfigurationError, match="'encoder.c'.*did you mean"):
        lumos.sparsify(Net(), torch.randn(16, 6), keep=["encoder.c"])
    with pytest.raises(lumos.ConfigurationError, match="module names or nn.Module classes"):
        lumos.sparsify(Net(), torch.randn(16, 6), keep=[3])


class TokenNet(nn.Module):
    """A class token concatenated along the token dim, then a LayerNorm-free head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.cls = nn.Parameter(torch.zeros(1, 1, 16))
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x):  # x: (N, T, 6)
        h = self.embed(x)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)
        return self.head(torch.relu(self.mix(h))[:, 0])


class FunctionalNorm(nn.Module):
    """``F.layer_norm`` in a forward: no layer LUMOS could rebuild, so its stream is pinned."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, x):
        return F.layer_norm(x, (self.width,))


def test_strict_refuses_every_unit_left_ungated_and_names_it():
    model = nn.Sequential(nn.Linear(6, 16), FunctionalNorm(16), nn.Linear(16, 1))
    lumos.sparsify(model, torch.randn(8, 6))  # not strict: kept whole, listed
    with pytest.raises(lumos.UnsupportedModelError, match=r"'0' \(neuron, 16\).*layer_norm"):
        lumos.sparsify(model, torch.randn(8, 6), strict=True)


def test_channels_a_rule_does_not_follow_are_pinned_and_listed_never_silently_ungated():
    x = torch.randn(4, 5, 6)
    sm = lumos.sparsify(TokenNet(), x, budget=0.5)
    lumos.testing.assert_compacts_exactly(sm, x)
    report = sm.report()
    pinned = {s.origin for s in sm.graph_info.pinned_spaces()}
    gated = {g.name for g in sm.graph_info.groups}
    # every layer's units are either gated or listed as kept whole
    for layer in ("embed", "mix"):
        assert layer in gated or layer in pinned or layer in report


def test_unreachable_budget_names_the_layers_that_hold_the_size():
    model = nn.Sequential(nn.Linear(6, 64), FunctionalNorm(64), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 1))
    with pytest.warns(lumos.LumosWarning, match=r"'0': function layer_norm normalises.*"
                      r"holding most of it: '0' \("):
        lumos.sparsify(model, torch.randn(8, 6), budget=0.05)
