"""Tolerance mode: the smallest model within a relative tolerance of the dense metric."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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
    with pytest.raises(lumos.ConfigurationError, match="dense must be the trained dense"):
        fit_within_tolerance(model, train_data[0][:4], train_data, val_data, epochs=4,
                             dense="model.pt", **kwargs)


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
    trained = [p for p in result.walk if p.phase != "dense"]  # (a dense answer comes last)
    phases = [p.phase for p in trained]
    assert [p.epoch for p in trained] == list(range(13))
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


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=1, max_size=30), st.booleans())
def test_the_dense_pace_is_its_best_so_far_and_never_asks_more_than_its_end(
        curve, higher_is_better):
    from lumos.tolerance import _pace

    bars = _pace(curve, len(curve), higher_is_better)
    assert bars[-1] == curve[-1]  # the final judgement is the finished dense model
    sign = 1.0 if higher_is_better else -1.0  # sign * metric: higher is better
    for epoch, bar in enumerate(bars):
        assert sign * bar <= sign * curve[-1]  # never stricter than the finished model
        assert sign * bar <= max(sign * v for v in curve[:epoch + 1])  # nor than dense so far
        assert epoch == 0 or sign * bar >= sign * bars[epoch - 1]  # the bar only rises
    assert _pace(0.5, 4, higher_is_better) == [0.5] * 4


def test_a_reference_curve_of_the_wrong_length_or_not_finite_is_refused():
    train_data, val_data, _ = _data()
    kwargs = dict(metrics=lambda p, t: {"r2": r2(p, t)}, primary="r2", higher_is_better=True,
                  epochs=5)
    model = demo_mlp(train_data[0].shape[1], 16, 1)
    with pytest.raises(lumos.ConfigurationError, match="3 values but the walk trains 5"):
        fit_within_tolerance(model, train_data[0][:4], train_data, val_data,
                             reference=[0.9, 0.95, 0.97], **kwargs)
    with pytest.raises(lumos.ConfigurationError, match="not finite"):
        fit_within_tolerance(model, train_data[0][:4], train_data, val_data,
                             reference=[0.9, 0.95, 0.97, 0.98, float("nan")], **kwargs)
    with pytest.raises(lumos.ConfigurationError, match="compare_to must be one of"):
        fit_within_tolerance(model, train_data[0][:4], train_data, val_data, reference=0.9,
                             compare_to="best", **kwargs)


@pytest.mark.parametrize("compare_to", ["matched", "paced"])
def test_a_walk_on_the_dense_curve_judges_each_epoch_against_its_pace(compare_to):
    """'matched' holds and misses against the dense model's pace at each epoch; 'paced' holds
    against the finished model and misses only behind the pace; the result is always judged
    against the finished model."""
    train_data, val_data, _ = _data()
    torch.manual_seed(0)
    curve = [0.2, 0.5, 0.4, 0.7, 0.8, 0.75, 0.85, 0.9, 0.95, 0.97, 0.96, 0.98]
    result = fit_within_tolerance(
        demo_mlp(train_data[0].shape[1], 32, 2), train_data[0][:8], train_data, val_data,
        metrics=lambda p, t: {"r2": r2(p, t)}, primary="r2", higher_is_better=True,
        epochs=len(curve), reference=curve, lr=2e-3, batch_size=512, interval_rounds=0,
        compare_to=compare_to)
    pace = [min(max(curve[:e + 1]), curve[-1]) for e in range(len(curve))]
    if compare_to == "matched":
        assert [p.reference for p in result.walk] == pace
        assert all(p.pace is None for p in result.walk)
    else:
        assert all(p.reference == curve[-1] for p in result.walk)
        assert [p.pace for p in result.walk] == pace
    for p in result.walk:
        assert p.within == within_tolerance(p.metric, p.reference, 0.01, True)
    assert result.reference == curve[-1] and result.to_dict()["compare_to"] == compare_to
    assert result.within == within_tolerance(result.metric, curve[-1], 0.01, True)


def test_a_paced_walk_trains_on_at_a_cut_that_keeps_pace_and_steps_back_from_one_behind():
    """With every cut between the pace and the finished model ('keeping pace'), the walk never
    steps back: its first cut trains on to the end. With every cut behind the pace, it steps
    back to larger structures."""
    train_data, val_data, _ = _data()

    def walk(offset):
        torch.manual_seed(0)
        curve = [0.5] * 13 + [0.9]  # a dense model that jumps at the end
        return fit_within_tolerance(
            demo_mlp(train_data[0].shape[1], 32, 2), train_data[0][:8], train_data, val_data,
            metrics=lambda p, t: {"r2": 0.5 + offset}, primary="r2", higher_is_better=True,
            epochs=14, reference=curve, lr=2e-3, batch_size=512, interval_rounds=0,
            compare_to="paced", patience=0)

    on_pace = [p.kept_fraction for p in walk(0.0).walk if p.phase == "walk"]
    assert len(set(on_pace)) == 1  # one structure, trained on
    behind = [p.kept_fraction for p in walk(-0.1).walk if p.phase == "walk"]
    assert max(behind) > min(behind)  # it stepped back at least once


def _walk_that_never_holds(hidden: int, layers: int, epochs: int):
    """A paced walk whose every reading is far behind a dense pace of 1.0."""
    train_data, val_data, _ = _data()
    torch.manual_seed(0)
    return fit_within_tolerance(
        demo_mlp(train_data[0].shape[1], hidden, layers), train_data[0][:8],
        train_data, val_data, metrics=lambda p, t: {"r2": r2(p, t) - 10.0}, primary="r2",
        higher_is_better=True, reference=[1.0] * epochs, epochs=epochs, tolerance=0.01,
        lr=2e-3, batch_size=512, interval_rounds=0, compare_to="paced")


def test_a_walk_where_no_cut_holds_ends_at_the_warm_structure_not_at_its_first_miss():
    """Nothing is ever within the tolerance: the walk must not return the first cut it tried
    (which the user would read as the answer), but the largest model, compactable quietly,
    and every epoch of the recipe is still trained."""
    result = _walk_that_never_holds(32, 2, 14)
    warm = [p for p in result.walk if p.phase == "warm"]
    walked = [p for p in result.walk if p.phase == "walk"]
    assert walked and min(p.kept_fraction for p in walked) < warm[-1].kept_fraction - 0.05
    assert not result.within
    sm = result.model  # every unit is back (the warm epochs shut none), features as judged
    assert bool((sm.kept_mask() | sm.feature_mask).all())
    assert result.kept_fraction > max(p.kept_fraction for p in walked)
    # the model returned is the one fine-tuned to the last epoch, not an earlier snapshot
    assert result.walk[-1].phase == "finetune"
    assert result.metric == pytest.approx(result.walk[-1].metric, abs=1e-9)
    assert [p.epoch for p in result.walk] == list(range(14))
    with warnings.catch_warnings():
        warnings.simplefilter("error", lumos.LumosWarning)
        small = result.model.compact()
    assert lumos.count_params(small) / result.model.dense_params == pytest.approx(
        result.kept_fraction)


def test_a_walk_that_could_only_repeat_a_failed_size_stops_and_trains_the_best_model():
    """Coarse units (here a hidden layer of 3 neurons): once the step back can only reach a
    size that already failed, further cuts would waste the epochs; they fine-tune instead."""
    result = _walk_that_never_holds(3, 1, 30)
    phases = [p.phase for p in result.walk]
    assert len(phases) == 30
    planned = max(1, round(0.15 * 30))
    assert phases.count("finetune") > planned  # the walk ended early
    sizes = [round(p.kept_fraction, 9) for p in result.walk if p.phase == "walk"]
    runs = [size for i, size in enumerate(sizes) if i == 0 or sizes[i - 1] != size]
    assert len(runs) == len(set(runs))  # no size that failed was walked to again


def test_a_walk_whose_cuts_all_fail_gives_up_after_two_and_trains_the_warm_structure():
    """Every failed cut leaves its mark on the weights the walk returns to; after GIVE_UP_AFTER
    of them with none held, the rest of the run trains the warm structure."""
    from lumos.tolerance import GIVE_UP_AFTER

    result = _walk_that_never_holds(64, 2, 40)
    judged = [p for p in result.walk if p.phase == "walk"]
    budgets = [round(p.budget, 9) for p in judged]
    tried = [b for i, b in enumerate(budgets) if i == 0 or budgets[i - 1] != b]
    assert len(tried) == GIVE_UP_AFTER == 2
    assert len(judged) == 2 * GIVE_UP_AFTER  # patience 1: two misses per size
    tail = result.walk[judged[-1].epoch + 1:]
    assert tail and all(p.phase == "finetune" for p in tail)
    assert bool((result.model.kept_mask() | result.model.feature_mask).all())


@pytest.mark.parametrize("compare_to", ["final", "paced", "matched"])
def test_the_walk_plot_draws_each_rule(tmp_path, compare_to):
    from lumos.plots import plot_tolerance_walk

    walk = [{"epoch": e, "budget": 1.0, "kept_fraction": 1.0 - 0.1 * e, "metric": 0.5 + 0.05 * e,
             "within": e > 3, "phase": "warm" if e < 2 else "walk", "low": None, "high": None,
             "reference": 0.8 if compare_to != "matched" else 0.5 + 0.04 * e,
             "pace": 0.5 + 0.04 * e if compare_to == "paced" else None} for e in range(8)]
    result = {"walk": walk, "reference": 0.8, "tolerance": 0.01, "within": True,
              "kept_fraction": 0.3, "decide_on": "settled", "compare_to": compare_to}
    path = plot_tolerance_walk(result, tmp_path / "walk.png", "r2", True)
    assert path.exists() and path.stat().st_size > 1000


def test_a_paced_walk_steps_back_only_after_misses_in_a_row():
    """A noisy cut that misses, keeps pace, misses, ... (never twice in a row) is not sent
    back with patience=1: a reading that keeps pace between two misses resets the count."""
    train_data, val_data, _ = _data()
    torch.manual_seed(0)
    epochs, warm = 20, round(0.25 * 20)
    calls = []

    def metrics(pred, target):
        calls.append(1)
        judged = (len(calls) - 1 - warm - 1) // 2  # 0, 1, 2, ... for the walk's readings
        return {"r2": 0.3 if len(calls) > warm and judged % 2 == 1 else 0.5}

    result = fit_within_tolerance(
        demo_mlp(train_data[0].shape[1], 32, 2), train_data[0][:8], train_data, val_data,
        metrics=metrics, primary="r2", higher_is_better=True, epochs=epochs,
        reference=[0.5] * (epochs - 1) + [0.9], lr=2e-3, batch_size=512, interval_rounds=0,
        compare_to="paced", patience=1)
    judged = [p for p in result.walk if p.phase == "walk"]
    assert [p.metric for p in judged][:4] == [0.5, 0.3, 0.5, 0.3]  # keep pace, miss, ...
    sizes = [p.kept_fraction for p in judged]
    assert all(b <= a + 1e-9 for a, b in zip(sizes, sizes[1:]))  # never sent back up


@pytest.mark.parametrize("every", [None, 1, 4])
def test_the_walk_splits_its_steps_as_the_gate_options_say(every):
    """The walk trains with the GateOptions it is given: gate noise on every step unless
    gate_step_every says otherwise."""
    train_data, val_data, _ = _data()
    torch.manual_seed(0)
    options = {} if every is None else {"gates": lumos.GateOptions(gate_step_every=every)}
    expected = every or 1
    result = fit_within_tolerance(
        demo_mlp(train_data[0].shape[1], 16, 1), train_data[0][:8], train_data, val_data,
        metrics=lambda p, t: {"r2": r2(p, t)}, primary="r2", higher_is_better=True,
        reference=[1.0] * 4, epochs=4, lr=2e-3, batch_size=512, interval_rounds=0, **options)
    gates = result.model.gates
    assert gates.split_every == expected
    assert (gates.split_steps > 0) == (expected > 1)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_the_best_model_is_the_smallest_then_the_better_at_the_same_size(higher_is_better):
    """Among fine-tune epochs of one structure the last is not the best: at the same size the
    better metric wins (CFD kept its later, worse epoch and ended -1.1% on the report half)."""
    from types import SimpleNamespace

    from lumos.tolerance import WalkPoint, _improves

    def point(kept, metric):
        return WalkPoint(0, kept, kept, metric, True, "finetune")

    good, worse = (0.98, 0.97) if higher_is_better else (0.02, 0.03)
    best = SimpleNamespace(point=point(0.3, good))
    assert _improves(point(0.3, good), None, higher_is_better)
    assert not _improves(point(0.3, worse), best, higher_is_better)  # same size, worse
    assert not _improves(point(0.3, good), best, higher_is_better)  # a tie keeps the first
    assert _improves(point(0.2, worse), best, higher_is_better)  # smaller wins
    assert not _improves(point(0.4, 2 * good), best, higher_is_better)  # larger never
    better = (0.99 if higher_is_better else 0.01)
    assert _improves(point(0.3 * (1 + 1e-12), better), best, higher_is_better)


def _trained_dense(train_data, hidden: int = 16):
    torch.manual_seed(0)
    dense = demo_mlp(train_data[0].shape[1], hidden, 2)
    lumos.training.train(dense, train_data, epochs=2, lr=2e-3, batch_size=512, progress=False)
    return dense.eval()


@pytest.mark.parametrize("with_curve", [False, True])
def test_when_nothing_smaller_is_within_the_walk_returns_the_dense_model(with_curve):
    """A metric only the dense model's own predictions meet (their distance to them, with no
    slack): every model the walk trains ends outside. The answer is the dense model, gates
    fixed open: within, equal to it before and after compaction, the user's model untouched."""
    train_data, val_data, _ = _data()
    dense = _trained_dense(train_data)
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    with torch.no_grad():
        own = dense(val_data[0])

    def metrics(pred, target):
        return {"gap": -float((pred - own).abs().max())}

    torch.manual_seed(0)
    result = fit_within_tolerance(
        demo_mlp(train_data[0].shape[1], 16, 2), train_data[0][:8], train_data, val_data,
        metrics=metrics, primary="gap", higher_is_better=True, epochs=8, tolerance=0.0,
        reference=[0.0] * 8 if with_curve else None, dense=dense, lr=2e-3, batch_size=512,
        interval_rounds=0)
    assert result.returned == "dense" and result.to_dict()["returned"] == "dense"
    assert result.within and result.metric == 0.0 and result.kept_fraction == 1.0
    phases = [p.phase for p in result.walk]
    assert phases[-1] == "dense" and "finetune" in phases
    # the walk's own models all missed, and so did the dense model without the inputs it
    # dropped (tried first when it dropped some): only the whole dense model is exact
    assert not any(p.within for p in result.walk[:-1])
    sm = result.model
    assert not sm.training
    with torch.no_grad():
        assert torch.equal(sm(val_data[0]), own)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lumos.LumosWarning)
        small = sm.compact()
    assert lumos.count_params(small) == lumos.count_params(dense)
    with torch.no_grad():
        torch.testing.assert_close(small(val_data[0]), own, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())
    # a run directory keeps the answer: the state reloads into the same frozen-open gates
    again = lumos.sparsify(_trained_dense(train_data), train_data[0][:8], budget=1.0)
    again.load_state_dict(sm.state_dict())
    again.eval()
    with torch.no_grad():
        assert torch.equal(again(val_data[0]), own)


def test_a_walk_that_ends_within_returns_its_own_model_even_with_a_dense_one():
    train_data, val_data, _ = _data()
    torch.manual_seed(0)
    result = fit_within_tolerance(
        demo_mlp(train_data[0].shape[1], 16, 2), train_data[0][:8], train_data, val_data,
        metrics=lambda p, t: {"r2": r2(p, t)}, primary="r2", higher_is_better=True, epochs=6,
        tolerance=0.5, reference=[0.0] * 6, dense=_trained_dense(train_data), lr=2e-3,
        batch_size=512, interval_rounds=0)
    assert result.within and result.returned == "walk"
    assert all(p.phase != "dense" for p in result.walk)


def test_without_a_reference_the_walk_falls_back_on_the_dense_model_it_trained(monkeypatch):
    """No ``reference``: the walk trains the dense model itself, and that model is the answer
    when nothing smaller is within. The metric here rewards only predictions equal to the
    dense model's final ones, recorded when the walk scores it."""
    import lumos.tolerance as tolerance_module

    train_data, val_data, _ = _data()
    seen = {}
    real_copy = tolerance_module.copy_model

    def copy_and_remember(model):
        copied = real_copy(model)
        seen.setdefault("dense", copied)  # the walk's first copy is the dense model it trains
        return copied

    monkeypatch.setattr(tolerance_module, "copy_model", copy_and_remember)

    def metrics(pred, target):
        with torch.no_grad():
            own = seen["dense"].eval()(val_data[0])
        return {"gap": -float((pred - own).abs().max())}

    torch.manual_seed(0)
    result = fit_within_tolerance(
        demo_mlp(train_data[0].shape[1], 16, 2), train_data[0][:8], train_data, val_data,
        metrics=metrics, primary="gap", higher_is_better=True, epochs=6, tolerance=0.0,
        lr=2e-3, batch_size=512, interval_rounds=0)
    assert result.returned == "dense" and result.within and result.metric == 0.0


def test_the_dense_answer_drops_the_inputs_the_walk_dropped_when_that_stays_within():
    """Validation rows whose noise columns are 0: the dense model without those inputs
    predicts exactly what it does with them, so that smaller answer is within a zero
    tolerance and is returned, its dropped columns compacted away; a true column it needs is
    never dropped."""
    train_data, val_data, data = _data()
    noise = [i for i in range(val_data[0].shape[1]) if i not in data.true_features]
    val_x = val_data[0].clone()
    val_x[:, noise] = 0.0
    dense = _trained_dense(train_data)
    with torch.no_grad():
        own = dense(val_x)

    torch.manual_seed(0)
    result = fit_within_tolerance(
        demo_mlp(train_data[0].shape[1], 16, 2), train_data[0][:8], train_data,
        (val_x, val_data[1]), metrics=lambda p, t: {"gap": -float((p - own).abs().max())},
        primary="gap", higher_is_better=True, epochs=16, tolerance=0.0, reference=[0.0] * 16,
        dense=dense, lr=2e-3, batch_size=512, interval_rounds=0, feature_penalty=0.5)
    sm = result.model
    dropped = [i for i, kept in enumerate(sm.kept_mask()[sm.feature_mask].tolist()) if not kept]
    assert result.returned == "dense" and result.within and result.metric == 0.0
    assert dropped and set(dropped) <= set(noise)  # the walk dropped noise; so does the answer
    assert result.kept_fraction < 1.0 and result.walk[-1].phase == "dense"
    small = sm.compact()
    with torch.no_grad():
        torch.testing.assert_close(small(val_x), own, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sm(val_x), own, rtol=0, atol=0)
