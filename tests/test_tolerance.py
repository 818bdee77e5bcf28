"""Tolerance mode: the smallest model within a relative tolerance of the dense metric."""

from __future__ import annotations

import warnings

import pytest
import torch

import lumos
from lumos.demo import demo_mlp
from lumos.metrics import r2
from lumos.tolerance import fit_within_tolerance, within_tolerance
from lumos.workloads.laws import make_law_data, train_val_split


def _data(seed: int = 0):
    data = make_law_data("coulomb", n_samples=3000, n_noise=8, seed=seed)
    tr, va = train_val_split(data, 0.25, seed=seed)
    return (torch.from_numpy(tr.X), torch.from_numpy(tr.y)), (
        torch.from_numpy(va.X), torch.from_numpy(va.y)), data


def test_within_tolerance_directions():
    assert within_tolerance(0.99, 1.0, 0.01, True) and not within_tolerance(0.98, 1.0, 0.01, True)
    assert within_tolerance(0.101, 0.1, 0.01, False) and not within_tolerance(0.11, 0.1, 0.01,
                                                                              False)


@pytest.mark.slow
def test_walk_finds_a_small_model_inside_the_tolerance():
    train_data, val_data, data = _data()
    torch.manual_seed(0)
    points = []
    result = fit_within_tolerance(
        demo_mlp(train_data[0].shape[1], 128, 2), train_data[0][:8], train_data, val_data,
        metrics=lambda p, t: {"r2": r2(p, t)}, primary="r2", higher_is_better=True,
        epochs=16, tolerance=0.01, lr=2e-3, batch_size=256, on_epoch=points.append,
    )
    assert result.within
    assert result.kept_fraction < 0.5  # it walked well below dense
    assert [p.epoch for p in result.walk] == list(range(16)) and points == result.walk
    walked = [p.kept_fraction for p in result.walk if p.phase == "walk"]
    assert min(walked) < 0.5
    # the returned model is the one reported, and it compacts to that size, quietly: the
    # walk enforced its budgets itself (it warned "budget enforced at inf" before)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lumos.LumosWarning)
        small = result.model.compact()
    with torch.no_grad():
        assert r2(small(val_data[0]), val_data[1]) == pytest.approx(result.metric, abs=1e-6)
    assert lumos.count_params(small) / result.model.dense_params == pytest.approx(
        result.kept_fraction)
    kept = set(result.model.selected_features()["input"])
    assert set(data.true_features) <= kept


def test_a_walk_whose_best_model_came_early_compacts_quietly():
    """The walk restores its best snapshot, which can predate the end of training (and the
    progress at which a budget is enforced): compact() must not enforce it again and warn."""
    train_data, val_data, _ = _data()
    torch.manual_seed(0)
    calls = []

    def metrics(pred, target):
        calls.append(1)  # good for the first epochs only, then out of tolerance
        return {"r2": 1.0 if len(calls) <= 4 else 0.0}

    result = fit_within_tolerance(
        demo_mlp(train_data[0].shape[1], 32, 2), train_data[0][:8], train_data, val_data,
        metrics=metrics, primary="r2", higher_is_better=True, reference=1.0,
        epochs=10, tolerance=0.01, lr=2e-3, batch_size=512)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lumos.LumosWarning)
        result.model.compact()


def test_bad_tolerance_arguments_are_lumos_errors():
    train_data, val_data, _ = _data()
    model = demo_mlp(train_data[0].shape[1], 16, 1)
    kwargs = dict(metrics=lambda p, t: {"r2": r2(p, t)}, primary="r2", higher_is_better=True)
    with pytest.raises(lumos.ConfigurationError, match="tolerance"):
        fit_within_tolerance(model, train_data[0][:4], train_data, val_data, epochs=5,
                             tolerance=1.5, **kwargs)
    with pytest.raises(lumos.ConfigurationError, match="primary"):
        fit_within_tolerance(model, train_data[0][:4], train_data, val_data, epochs=3,
                             reference=0.9, metrics=lambda p, t: {"mse": 0.0}, primary="r2",
                             higher_is_better=True)


def test_a_settled_walk_judges_each_cut_after_an_epoch_with_its_gates_frozen(monkeypatch):
    """decide_on="settled": every judged point follows a 'cut' epoch at the same budget, was
    measured with the gates frozen, and every epoch of the recipe is still used."""
    train_data, val_data, _ = _data()
    torch.manual_seed(0)
    frozen_at_record: list[bool] = []
    calls = {"freeze": 0}
    original = lumos.gates.GateBank.freeze

    def freeze(self, kept):
        calls["freeze"] += 1
        original(self, kept)

    monkeypatch.setattr(lumos.gates.GateBank, "freeze", freeze)
    banks = []
    original_init = lumos.gates.GateBank.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        banks.append(self)

    monkeypatch.setattr(lumos.gates.GateBank, "__init__", init)
    result = fit_within_tolerance(
        demo_mlp(train_data[0].shape[1], 32, 2), train_data[0][:8], train_data, val_data,
        metrics=lambda p, t: {"r2": r2(p, t)}, primary="r2", higher_is_better=True,
        epochs=13, tolerance=0.01, lr=2e-3, batch_size=512, interval_rounds=50,
        on_epoch=lambda point: frozen_at_record.append(banks[-1].frozen))
    phases = [p.phase for p in result.walk]
    assert [p.epoch for p in result.walk] == list(range(13))
    judged = [i for i, phase in enumerate(phases) if phase == "walk"]
    assert judged and all(phases[i - 1] == "cut" for i in judged)
    assert all(result.walk[i].budget == result.walk[i - 1].budget for i in judged)
    assert all(frozen_at_record[i] for i in judged)  # judged on the frozen structure
    assert not any(frozen_at_record[i] for i, phase in enumerate(phases) if phase == "cut")
    assert calls["freeze"] >= len(judged)
    for point in result.walk:  # each point's bootstrap interval holds its metric
        assert point.low is not None and point.low <= point.metric + 1e-6
        assert point.high is not None and point.metric - 1e-6 <= point.high


def test_decide_on_last_judges_every_walk_epoch_and_bad_rules_are_refused():
    train_data, val_data, _ = _data()
    torch.manual_seed(0)
    result = fit_within_tolerance(
        demo_mlp(train_data[0].shape[1], 16, 1), train_data[0][:8], train_data, val_data,
        metrics=lambda p, t: {"r2": r2(p, t)}, primary="r2", higher_is_better=True,
        epochs=8, tolerance=0.05, lr=2e-3, batch_size=512, decide_on="last",
        interval_rounds=0)
    assert "cut" not in {p.phase for p in result.walk}
    assert all(p.low is None and p.high is None for p in result.walk)
    with pytest.raises(lumos.ConfigurationError, match="decide_on must be one of"):
        fit_within_tolerance(
            demo_mlp(train_data[0].shape[1], 16, 1), train_data[0][:8], train_data, val_data,
            metrics=lambda p, t: {"r2": r2(p, t)}, primary="r2", higher_is_better=True,
            epochs=8, decide_on="smoothed")


def test_the_bootstrap_interval_holds_the_metric_and_narrows_with_more_samples():
    from lumos.tolerance import bootstrap_interval

    torch.manual_seed(0)

    def widths(n):
        target = torch.randn(n, 1)
        pred = target + 0.5 * torch.randn(n, 1)
        low, high = bootstrap_interval(pred, target, r2, seed=1)
        assert low <= r2(pred, target) <= high
        return high - low

    assert widths(4000) < 0.5 * widths(100)
    assert bootstrap_interval(torch.zeros(5, 1), torch.zeros(5, 1), r2) == (None, None)
