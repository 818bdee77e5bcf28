"""The budget is an exact upper bound once training settles; closed groups stay buildable."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lumos
from lumos.training import train


def _mlp(d: int = 9, w: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(d, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 2))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    budget=st.floats(0.05, 0.95),
    seed=st.integers(0, 10_000),
    spread=st.floats(0.5, 6.0),
)
def test_settling_enforces_the_budget_and_never_shuts_features(budget, seed, spread):
    torch.manual_seed(seed)
    sm = lumos.sparsify(_mlp(), torch.randn(4, 9), budget=budget)
    with torch.no_grad():  # an arbitrary state the controller left behind
        sm.gates.log_alpha.normal_(1.0, spread)
    features_before = sm.selected_features()["input"]
    sm.set_progress(0.95)
    fraction = sm.compacted_counts()["params"] / sm.dense_params
    assert fraction <= budget + 1e-9
    assert sm.selected_features()["input"] == features_before
    # nothing shut in vain: no shut gate could be spared within the budget
    for gate in torch.nonzero(sm.gates.shut & ~sm.feature_mask).flatten().tolist():
        keep = sm.kept_mask().clone()
        keep[gate] = True
        assert float(sm.cost.total(sm._keep_alive(keep).double(), "params")) / sm.dense_params \
            > budget, gate
    # and the weakest go first: a kept gate weaker than a shut one is cheaper than it
    shut = sm.gates.shut & ~sm.feature_mask
    kept = sm.kept_mask() & ~sm.feature_mask
    if shut.any() and kept.any():
        strongest_shut = float(sm.gates.log_alpha[shut].max())
        weaker_kept = kept & (sm.gates.log_alpha < strongest_shut)
        if weaker_kept.any():
            marginal = sm.cost.marginal(sm.kept_mask().double(), "params")
            assert marginal[weaker_kept].max() < marginal[shut].max()


def test_shut_gates_stay_shut_whatever_log_alpha_does():
    torch.manual_seed(0)
    sm = lumos.sparsify(_mlp(), torch.randn(4, 9), budget=0.2)
    sm.set_progress(1.0)
    shut = sm.gates.shut.clone()
    assert shut.any()
    with torch.no_grad():
        sm.gates.log_alpha.fill_(10.0)
    sm.train()
    assert (sm.gates()[shut] == 0).all() and (sm.gates.prob_nonzero()[shut] == 0).all()
    assert not sm.kept_mask()[shut].any()


def test_budget_settles_once_at_ninety_percent_and_again_at_the_end():
    torch.manual_seed(0)
    sm = lumos.sparsify(_mlp(), torch.randn(4, 9), budget=0.3)
    sm.set_progress(0.5)
    assert not sm.gates.shut.any()
    sm.set_progress(0.9)
    first = int(sm.gates.shut.sum())
    assert first > 0 and bool(sm.controller.settled)
    with torch.no_grad():  # gates pushed open again during the last 10%
        sm.gates.log_alpha.fill_(10.0)
    sm.set_progress(0.95)
    assert int(sm.gates.shut.sum()) == first  # no re-projection every step
    sm.set_progress(1.0)
    assert sm.compacted_counts()["params"] <= 0.3 * sm.dense_params


def test_a_fully_closed_conv_group_keeps_one_inert_channel_and_compacts_exactly():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))
    x = torch.randn(2, 3, 8, 8)
    sm = lumos.sparsify(model, x, lam=0.1)
    group = next(g for g in sm.graph_info.groups if g.name == "0")
    with torch.no_grad():
        sm.gates.log_alpha[group.offset : group.offset + group.size] = -10.0
        sm.gates.log_alpha[group.offset + 4] = -9.0  # the strongest of the closed ones
    sm.eval()
    kept = sm.kept_mask()[group.offset : group.offset + group.size]
    assert kept.tolist() == [False, False, False, False, True, False]
    small = sm.compact()
    assert small.get_submodule("0").out_channels == 1
    with torch.no_grad():
        torch.testing.assert_close(small(x), sm(x))
    assert lumos.count_params(small) == sm.compacted_counts()["params"]



@pytest.mark.parametrize("pool_first", [False, True])
def test_an_input_whose_every_feature_closed_still_compacts_and_is_named(pool_first):
    """A conv (or a pooling before it) cannot take zero channels: one inert column stays."""
    layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 1, 1)]
    model = nn.Sequential(*([nn.AvgPool2d(2)] if pool_first else []), *layers)
    x = torch.randn(2, 3, 8, 8)
    sm = lumos.sparsify(model, x, lam=0.1)
    group = next(g for g in sm.graph_info.groups if g.kind == "feature")
    with torch.no_grad():
        sm.gates.log_alpha[group.offset : group.offset + group.size] = -10.0
        sm.gates.log_alpha[group.offset + 1] = -9.0
    sm.eval()
    with pytest.warns(lumos.LumosWarning, match="every feature of input 'input' closed"):
        small = sm.compact()
    assert sm.selected_features()["input"] == [1]  # the inert column compaction keeps
    with torch.no_grad():
        torch.testing.assert_close(small(x), sm(x))
        assert torch.equal(small(x), small(torch.randn_like(x)))  # the input is ignored
    assert lumos.count_params(small) == sm.compacted_counts()["params"]

def test_training_history_records_validation_and_gates():
    torch.manual_seed(0)
    x, y = torch.randn(256, 9), torch.randn(256, 2)
    sm = lumos.sparsify(_mlp(), x[:4], budget=0.4)

    def metrics(pred, target):
        return {"mse": float(((pred - target) ** 2).mean())}

    stops = []
    history = train(sm, (x, y), epochs=4, val_data=(x, y), metrics=metrics, record_gates=True,
                    on_epoch=lambda e, h: stops.append(e) or e == 2)
    assert stops == [0, 1, 2] and len(history.val) == 3 and "mse" in history.val[0]
    assert len(history.gate_probabilities) == 3
    assert len(history.gate_probabilities[0]) == sm.gates.num_gates
    assert len(history.realized_fraction) == 3
    with pytest.raises(lumos.ConfigurationError, match="metrics"):
        train(sm, (x, y), epochs=1, val_data=(x, y))


def test_enforcement_counts_the_inert_channel_and_warns_when_the_budget_is_unreachable():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.LayerNorm(8)  # over the conv's channels: that stream stays whole
            self.mid = nn.Linear(8, 32)
            self.out = nn.Linear(32, 1)

        def forward(self, x):
            h = self.conv(x).mean(dim=(2, 3))
            return self.out(torch.relu(self.mid(self.norm(h))))

    x = torch.randn(4, 3, 6, 6)
    torch.manual_seed(0)
    with pytest.warns(lumos.LumosWarning, match="cannot be reached"):
        sm = lumos.sparsify(Net(), x, budget=0.05)
    floor = sm.smallest_fraction()
    assert 0.05 < floor < 1.0
    sm.set_progress(1.0)
    assert sm.compacted_counts()["params"] / sm.dense_params == pytest.approx(floor)
    # a reachable budget is met exactly even though one inert channel must stay in the conv
    ok = lumos.sparsify(Net(), x, budget=floor + 0.02)
    ok.set_progress(1.0)
    assert ok.compacted_counts()["params"] / ok.dense_params <= floor + 0.02


def test_settling_reopens_closed_gates_up_to_the_budget_but_not_at_the_end():
    torch.manual_seed(0)
    sm = lumos.sparsify(_mlp(w=64), torch.randn(4, 9), budget=0.6)
    neurons = ~sm.feature_mask
    with torch.no_grad():  # the controller closed far too much, and two features
        sm.gates.log_alpha[neurons] = torch.linspace(-8.0, 4.0, int(neurons.sum()))
        sm.gates.log_alpha[:2] = -8.0
    before = sm.compacted_counts()["params"] / sm.dense_params
    closed_before = ~sm.kept_mask()
    assert before < 0.5
    ending = lumos.sparsify(_mlp(w=64), torch.randn(4, 9), budget=0.6)
    ending.load_state_dict(sm.state_dict())
    sm.set_progress(0.9)
    after = sm.compacted_counts()["params"] / sm.dense_params
    assert before < after <= 0.6 + 1e-9
    reopened = closed_before & sm.kept_mask()
    still_closed = closed_before & ~sm.kept_mask() & neurons
    assert reopened.any() and not reopened[~neurons].any()  # features are never reopened
    # not one of the gates left closed would still have fitted
    for gate in torch.nonzero(still_closed).flatten().tolist():
        keep = sm.kept_mask().double()
        keep[gate] = 1.0
        assert float(sm.cost.total(keep, "params")) / sm.dense_params > 0.6, gate
    # at the end of training nothing follows, so nothing is reopened to fill the budget; only
    # a group that is the one path from the input to the output gets one gate back
    closed_end = ~ending.kept_mask()
    empty = [g for g in ending.graph_info.groups if g.essential and g.kind != "feature"
             and not ending.kept_mask()[g.offset:g.offset + g.size].any()]
    ending.set_progress(1.0)
    reopened_end = closed_end & ending.kept_mask()
    assert int(reopened_end.sum()) == len(empty)
    if not empty:
        assert ending.compacted_counts()["params"] / ending.dense_params == pytest.approx(before)


def test_batchnorm_statistics_are_recalibrated_for_the_evaluation_gates():
    """Gates sampled in training scale what a later BatchNorm normalises; its running
    statistics must describe the deterministic gates eval uses, or eval sees shifted inputs."""
    from lumos.training import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
    x, y = torch.randn(64, 3, 8, 8), torch.randn(64, 1)
    sm = lumos.sparsify(model, x[:4], lam=0.1)
    with torch.no_grad():  # half-open gates: training samples differ a lot from eval values
        sm.gates.log_alpha.uniform_(-1.0, 1.0)
    sm.train()
    for _ in range(5):  # training-mode passes leave statistics of sampled gates behind
        sm(x)
    bn = model[4]
    assert recalibrate_batchnorm(sm, (x, y), batches=1, batch_size=64)
    # the statistics now are those of one train-mode pass with the evaluation gates
    captured = {}
    hook = bn.register_forward_hook(lambda m, i, o: captured.setdefault("in", i[0]))
    sm.train()
    sm.gates.eval()
    with torch.no_grad():
        sm(x)
    hook.remove()
    inputs = captured["in"]
    torch.testing.assert_close(bn.running_mean, inputs.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, inputs.var(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1  # restored
    # a model without BatchNorm is left alone
    plain = lumos.sparsify(nn.Sequential(nn.Linear(4, 4)), torch.randn(2, 4))
    assert not recalibrate_batchnorm(plain, (torch.randn(8, 4), torch.randn(8, 4)))


def test_budget_projection_scales_near_linearly_with_the_gate_count():
    """Counted in cost-model evaluations, not seconds: twice the gates must not take anywhere
    near four times the evaluations (the old projection was quadratic)."""
    from lumos import budget as projection

    calls = []
    for width in (1000, 4000):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width // 4),
                          nn.ReLU(), nn.Linear(width // 4, 1))
        sm = lumos.sparsify(m, torch.randn(4, 16), budget=0.3)
        with torch.no_grad():
            sm.gates.log_alpha.normal_(2.0, 1.0)
        counted: list[int] = []
        real = projection.kept_fraction

        def counting(*args, counted=counted, real=real, **kwargs):
            counted.append(1)
            return real(*args, **kwargs)

        projection.kept_fraction = counting
        try:
            sm.enforce_budget()
        finally:
            projection.kept_fraction = real
        assert sm.kept_fraction() <= 0.3 + 1e-9
        calls.append(len(counted))
    assert calls[1] < 2 * calls[0] + 50, calls


class Stem(nn.Module):
    """conv stem -> body -> head: the stem's channels are the only way from the input to the
    output (MONAI SegResNet's shape, where the rest could not be thinned)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 1, 1)

    def forward(self, x):
        return self.head(torch.relu(self.body(torch.relu(self.stem(x)))))


def test_the_projection_never_closes_the_only_path_from_the_inputs_to_the_output():
    torch.manual_seed(0)
    x = torch.randn(4, 2, 6, 6)
    sm = lumos.sparsify(Stem(), x, budget=0.05)
    essential = {g.name for g in sm.graph_info.groups if g.essential}
    assert "stem" in essential
    stem = next(g for g in sm.graph_info.groups if g.name == "stem")
    with torch.no_grad():  # training closed every channel of the stem
        sm.gates.log_alpha[stem.offset:stem.offset + stem.size] = -8.0
    sm.enforce_budget()
    assert bool((sm.gates.deterministic()[stem.offset:stem.offset + stem.size] > 0).any())
    small = sm.eval().compact()
    with torch.no_grad():
        a, b = small(x), small(torch.randn(4, 2, 6, 6))
    assert not torch.allclose(a, b)  # the output still depends on the input
    lumos.testing.assert_compacts_exactly(sm, x)


def test_a_closed_only_path_without_a_budget_is_named_when_compacting():
    torch.manual_seed(0)
    x = torch.randn(4, 2, 6, 6)
    sm = lumos.sparsify(Stem(), x, lam=0.1)
    stem = next(g for g in sm.graph_info.groups if g.name == "stem")
    with torch.no_grad():
        sm.gates.log_alpha[stem.offset:stem.offset + stem.size] = -8.0
    with pytest.warns(lumos.LumosWarning, match="every channel of 'stem' closed.*no longer "
                      "depends on its inputs"):
        sm.eval().compact()


def test_a_branch_with_a_bypass_is_not_essential():
    class Bypass(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.skip = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(4, 8)
            self.out = nn.Linear(8, 1)

        def forward(self, x):
            return self.out(torch.relu(self.b(torch.relu(self.a(x)))) + self.skip(x))

    sm = lumos.sparsify(Bypass(), torch.randn(5, 4), budget=0.3)
    flags = {g.name: g.essential for g in sm.graph_info.groups}
    assert flags["a"] is False and flags["b"] is True  # b's group is the stream skip adds into


def _cnn() -> nn.Module:
    """Wide high-resolution convs, cheap late ones: FLOPs and parameters disagree."""
    return nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Conv2d(24, 48, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(48, 1))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(budget=st.floats(0.1, 0.9), seed=st.integers(0, 10_000), spread=st.floats(0.5, 6.0))
def test_a_flops_budget_bounds_the_compacted_models_measured_flops(budget, seed, spread):
    torch.manual_seed(seed)
    x = torch.randn(2, 3, 16, 16)
    net = _cnn()
    sm = lumos.sparsify(net, x, budget=budget, budget_on="flops", features=False)
    with torch.no_grad():
        sm.gates.log_alpha.normal_(1.0, spread)
    sm.set_progress(0.95)
    small = sm.eval().compact()
    measured = lumos.count_flops(small, x) / lumos.count_flops(net, x)
    assert measured <= budget + 1e-9
    assert sm.kept_fraction() == pytest.approx(measured)  # the budget's measure by default
    assert sm.kept_fraction("params") == pytest.approx(lumos.count_params(small) /
                                                       lumos.count_params(net))


def test_a_flops_budget_cuts_the_expensive_high_resolution_channels_first():
    torch.manual_seed(0)
    x = torch.randn(32, 3, 16, 16)
    y = x.mean(dim=(1, 2, 3)).unsqueeze(1)
    fractions = {}
    for on in ("params", "flops"):
        torch.manual_seed(0)
        sm = lumos.sparsify(_cnn(), x[:2], budget=0.3, budget_on=on, features=False)
        train(sm, (x, y), epochs=15, lr=3e-3, progress=False)
        fractions[on] = (sm.kept_fraction("params"), sm.kept_fraction("flops"))
    assert fractions["flops"][1] <= 0.3 + 1e-9 and fractions["params"][0] <= 0.3 + 1e-9
    # a parameter budget keeps more FLOPs than a FLOPs budget of the same fraction
    assert fractions["params"][1] > fractions["flops"][1]


@pytest.mark.parametrize("on, needle", [("memory", "'params'.*'flops'.*'latency'"),
                                        ("time", "budget_on='time'")])
def test_an_unknown_budget_measure_is_refused_with_the_choices(on, needle):
    with pytest.raises(lumos.ConfigurationError, match=needle):
        lumos.sparsify(_mlp(), torch.randn(4, 9), budget=0.5, budget_on=on)


def _widths(model: nn.Module) -> list[int]:
    return [m.out_features for m in model.modules() if isinstance(m, nn.Linear)][:-1]


@settings(max_examples=12, deadline=None, derandomize=True)
@given(budget=st.floats(0.15, 0.8), seed=st.integers(0, 10_000), multiple=st.sampled_from([4, 8]))
def test_width_multiple_cuts_widths_to_multiples_within_the_budget(budget, seed, multiple):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(9, 64), nn.ReLU(), nn.Linear(64, 40), nn.ReLU(),
                        nn.Linear(40, 1))
    x = torch.randn(8, 9)
    sm = lumos.sparsify(net, x, budget=budget, features=False,
                        gates=lumos.GateOptions(width_multiple=multiple))
    with torch.no_grad():
        sm.gates.log_alpha.normal_(1.0, 3.0)
    sm.set_progress(0.95)  # the budget is enforced (and the gates frozen) here
    assert sm.kept_fraction() <= budget + 1e-9
    small = sm.eval().compact()  # checks compacted == gated
    for width in _widths(small):
        assert width % multiple == 0 or width < multiple, _widths(small)
    with torch.no_grad():
        torch.testing.assert_close(small(x), sm(x), rtol=1e-4, atol=1e-5)


def test_width_multiple_one_changes_nothing():
    masks = []
    for options in (None, lumos.GateOptions(width_multiple=1)):
        torch.manual_seed(3)
        sm = lumos.sparsify(_mlp(), torch.randn(4, 9), budget=0.3, features=False,
                            gates=options)
        with torch.no_grad():
            sm.gates.log_alpha.normal_(1.0, 3.0)
        sm.set_progress(0.95)
        masks.append(sm.kept_mask())
    assert torch.equal(masks[0], masks[1])


def test_width_multiple_holds_after_training():
    torch.manual_seed(0)
    x = torch.randn(256, 9)
    y = x[:, :3].sum(1, keepdim=True)
    net = nn.Sequential(nn.Linear(9, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 1))
    sm = lumos.sparsify(net, x[:8], budget=0.3, gates=lumos.GateOptions(width_multiple=8))
    train(sm, (x, y), epochs=8, lr=3e-3, progress=False)
    small = sm.compact()
    assert sm.kept_fraction() <= 0.3 + 1e-9
    assert all(w % 8 == 0 or w < 8 for w in _widths(small)), _widths(small)


@pytest.mark.parametrize("bad", [0, 2.5, True, "8"])
def test_a_bad_width_multiple_is_refused(bad):
    with pytest.raises(lumos.ConfigurationError, match="width_multiple"):
        lumos.GateOptions(width_multiple=bad)
