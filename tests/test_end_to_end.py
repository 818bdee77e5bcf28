"""End-to-end training on small data: budgets are reached, features are found, the demo runs."""

from __future__ import annotations

import json

import pytest
import torch

import lumos
from lumos.cli import main
from lumos.demo import demo_mlp, run_demo
from lumos.training import train
from lumos.workloads.laws import make_law_data

pytestmark = pytest.mark.slow


def _law(name: str, n: int = 2048, seed: int = 1):
    data = make_law_data(name, n_samples=n, n_noise=12, seed=seed)
    return data, torch.from_numpy(data.X), torch.from_numpy(data.y)


@pytest.mark.parametrize("law", ["ideal_gas", "coulomb", "bernoulli", "planck", "kepler"])
@pytest.mark.parametrize("budget", [None, 0.2])
def test_noise_columns_close_and_true_variables_stay(law, budget):
    """Feature selection works with no size pressure at all and with a budget met early."""
    data, x, y = _law(law)
    torch.manual_seed(0)
    sm = lumos.sparsify(demo_mlp(x.shape[1], 128, 2), x[:8], budget=budget)
    train(sm, (x, y), epochs=30)
    kept = set(sm.selected_features()["input"])
    assert set(data.true_features) <= kept, f"lost true variables of {law}"
    assert not kept & set(data.noise_features), f"kept noise columns of {law}"


@pytest.mark.parametrize(
    ("width", "depth", "budget"), [(256, 2, 0.25), (256, 2, 0.5), (512, 3, 0.1)]
)
def test_budget_is_reached_within_three_points_without_lambda(width, depth, budget):
    data, x, y = _law("drag", n=4096, seed=0)
    torch.manual_seed(0)
    model = demo_mlp(x.shape[1], width, depth)
    sm = lumos.sparsify(model, x[:8], budget=budget)
    train(sm, (x, y), epochs=40)
    small = sm.compact()
    fraction = lumos.count_params(small) / lumos.count_params(model)
    assert abs(fraction - budget) <= 0.03, fraction
    assert fraction <= budget + 0.005  # a budget is an upper bound
    assert lumos.count_params(small) == pytest.approx(sm.compacted_counts()["params"])


def test_demo_reaches_its_budget_keeps_accuracy_and_finds_the_variables():
    r = run_demo(epochs=40)
    assert abs(r.params_lumos / r.params_dense - r.budget) <= 0.03
    assert r.flops_lumos < 0.4 * r.flops_dense
    assert r.r2_lumos > 0.97 and r.r2_dense > 0.97
    assert sorted(r.features_kept) == sorted(r.true_features)


def test_demo_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--epochs", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for row in ("R² (validation)", "parameters", "FLOPs / sample", "latency, batch 256",
                "latency, batch 1, fast export", "input features"):
        assert row in printed
    record = json.loads(out.read_text())
    # the fast export form of both models was made and timed at both batch sizes
    assert set(record["fast_lumos"]) == set(record["fast_dense"]) == {"batch 1", "batch 256"}
    assert record["params_lumos"] < record["params_dense"]
    assert record["speedup_b256"] > 0


def test_cli_reports_lumos_errors_without_a_traceback(capsys):
    assert main(["demo", "--budget", "1.5", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "budget" in err and "Traceback" not in err
