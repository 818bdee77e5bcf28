"""``budget_on="latency"``: layer times measured once on the device weight the FLOP terms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lumos
import lumos.latency as latency_module
import lumos.sparse_model as sparse_model_module
from lumos.training import train


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 1))


def _fixed_times(times: dict[str, float]):
    """A stand-in for ``layer_seconds`` that returns given times for the paths asked."""
    def fake(model, run, paths, device, repeats=latency_module.REPEATS):
        return {p: times[p] for p in paths if p in times}
    return fake


def test_the_latency_cost_is_each_layers_measured_time_scaled_by_its_kept_flops(monkeypatch):
    times = {"0": 4e-3, "2": 2e-3, "5": 1e-3, "9": 1e-6}
    monkeypatch.setattr(sparse_model_module, "layer_seconds", _fixed_times(times))
    x = torch.randn(2, 3, 16, 16)
    sm = lumos.sparsify(_cnn(), x, budget=0.5, budget_on="latency", features=False)
    # dense: the sum of the measured layer times, in nanoseconds
    assert sm.dense_cost("latency") == pytest.approx(1e9 * sum(times.values()), rel=1e-9)
    # any keep vector: each layer's FLOPs fraction times its time
    keep = torch.rand(sm.gates.num_gates, dtype=torch.float64)
    flops_dense = sm.cost.by_label(torch.ones_like(keep), "flops")
    flops_kept = sm.cost.by_label(keep, "flops")
    expected = sum(1e9 * times[label] * flops_kept[label] / flops_dense[label]
                   for label in flops_dense)
    assert float(sm.cost.total(keep, "latency")) == pytest.approx(expected, rel=1e-9)
    # the penalty's gradient reads the same kind
    assert torch.allclose(sm.cost.marginal(keep, "latency"),
                          torch.autograd.functional.jacobian(
                              lambda k: sm.cost.total(k, "latency"), keep), rtol=1e-6)


def test_a_latency_budget_is_met_by_the_compacted_model_and_reported(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(32, 3, 16, 16)
    y = x.mean(dim=(1, 2, 3)).unsqueeze(1)
    sm = lumos.sparsify(_cnn(), x[:4], budget=0.3, budget_on="latency", features=False)
    assert sm.latency_weights is not None and all(w > 0 for w in sm.latency_weights.values())
    train(sm, (x, y), epochs=10, lr=3e-3, progress=False)
    assert sm.kept_fraction() <= 0.3 + 1e-9  # the budget's own measure: latency
    assert sm.kept_fraction("latency") == sm.kept_fraction()
    small = sm.eval().compact()  # verifies compacted == gated
    with torch.no_grad():
        torch.testing.assert_close(small(x[:4]), sm(x[:4]), rtol=1e-4, atol=1e-5)
    text = sm.report()
    assert "latency (estimated" in text and "budget 30%" in text.split("latency (")[1]
    assert "budget" not in text.split("params:")[1].split("\n")[0]


def test_latency_is_measured_once_per_process_and_travels_with_the_state_dict(monkeypatch):
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(0)
    first = lumos.sparsify(_cnn(), x, budget=0.5, budget_on="latency", features=False)
    torch.manual_seed(0)
    again = lumos.sparsify(_cnn(), x, budget=0.5, budget_on="latency", features=False)
    assert again.latency_weights == first.latency_weights  # the cached times, not new ones
    # on another machine the times differ; a resumed run budgets what the first measured
    monkeypatch.setattr(sparse_model_module, "layer_seconds",
                        _fixed_times({"0": 1.0, "2": 1.0, "5": 1.0, "9": 1.0}))
    torch.manual_seed(0)
    elsewhere = lumos.sparsify(_cnn(), x, budget=0.5, budget_on="latency", features=False)
    assert elsewhere.latency_weights != first.latency_weights
    elsewhere.load_state_dict(first.state_dict())
    assert elsewhere.latency_weights == first.latency_weights
    assert elsewhere.dense_cost("latency") == pytest.approx(first.dense_cost("latency"))
    assert elsewhere.kept_fraction() == pytest.approx(first.kept_fraction())


def test_a_layer_time_excludes_the_timed_layers_inside_it():
    inclusive = {"block": 5.0, "block.conv": 3.0, "block.conv.inner": 1.0, "head": 2.0}
    assert latency_module._exclusive(inclusive) == {
        "block": 2.0, "block.conv": 2.0, "block.conv.inner": 1.0, "head": 2.0}


def test_layer_seconds_times_each_call_of_a_layer():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            return self.lin(self.lin(x))

    model, x = Twice(), torch.randn(4, 8)
    seconds = latency_module.layer_seconds(model, lambda: model(x), ["lin"],
                                           torch.device("cpu"), repeats=3)
    assert set(seconds) == {"lin"} and seconds["lin"] > 0


def test_an_unknown_budget_measure_names_the_three():
    with pytest.raises(lumos.ConfigurationError, match="'latency'"):
        lumos.sparsify(_cnn(), torch.randn(2, 3, 16, 16), budget=0.5, budget_on="time")
