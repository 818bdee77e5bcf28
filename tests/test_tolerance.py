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
