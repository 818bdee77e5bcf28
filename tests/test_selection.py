"""lumos.confirm_features: held-out data closes the features training kept on little."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lumos
from lumos.training import train


def _table(n=384, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    x[:, 3] = 0.9 * x[:, 0] + 0.44 * torch.randn(n, generator=g)  # proxy of column 0
    y = (2 * x[:, 0] - x[:, 1] + x[:, 2] + 0.5 * x[:, 2] * x[:, 1]).unsqueeze(1)
    return x, y


def _trained(x, y, rows=288, epochs=60):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 1))
    sm = lumos.sparsify(net, x[:8], feature_penalty=0.0)  # training alone keeps every column
    train(sm, (x[:rows], y[:rows]), epochs=epochs, lr=1e-2, progress=False)
    return sm


def _losses(sm, x, y):
    def held_out():
        with torch.no_grad():
            return (sm(x) - y).pow(2).squeeze(1)
    return held_out


def test_the_proxy_and_the_noise_column_are_closed_and_the_variables_kept():
    x, y = _table()
    sm = _trained(x, y)
    assert {0, 1, 2, 3} <= set(sm.selected_features()["input"])  # the proxy too

    def refit():
        train(sm, (x[:288], y[:288]), epochs=15, lr=1e-2, progress=False)

    ev = lumos.confirm_features(sm, _losses(sm, x[288:], y[288:]), refit,
                                null_loss=float(y.var()))
    assert sm.selected_features()["input"] == [0, 1, 2]
    assert 3 in ev.dropped["input"] and set(ev.dropped["input"]) <= set(ev.tested["input"])
    z = ev.z["input"]
    assert (z[[0, 1, 2]] >= 2).all() and (z[[3, 4]] == 0).all()
    assert (ev.loss_rise["input"][[0, 1, 2]] > 0).all()
    assert not ev.unstable
    small = sm.compact()  # closed features are gone from the compacted model
    assert small(x[:4]).shape == (4, 1)
    assert torch.allclose(small(x[288:]), sm(x[288:]), atol=1e-5)


def test_a_closing_the_held_out_loss_refuses_puts_the_model_back():
    x, y = _table()
    sm = _trained(x, y)
    kept = sm.selected_features()["input"]
    before = {k: v.clone() for k, v in sm.state_dict().items() if isinstance(v, torch.Tensor)}
    # nothing may rise: every closing without a re-fit costs something, so each is undone
    # (z_min=0: any rise at all counts as sure)
    ev = lumos.confirm_features(sm, _losses(sm, x[288:], y[288:]), None, tolerance=0.0,
                                candidate=1.0, z_min=0.0)
    assert ev.dropped["input"] == [] and ev.tested["input"]
    after = sm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sm.selected_features()["input"] == kept


def test_channels_of_a_conv_input_are_confirmed_too():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 3, 8, 8, generator=g)
    y = (x[:, 0] * 2 - x[:, 1]).mean(dim=(1, 2)).unsqueeze(1)  # channel 2 is noise
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 1))
    sm = lumos.sparsify(net, x[:4], feature_penalty=0.0)
    train(sm, (x[:64], y[:64]), epochs=40, lr=1e-2, progress=False)

    def refit():
        train(sm, (x[:64], y[:64]), epochs=10, lr=1e-2, progress=False)

    ev = lumos.confirm_features(sm, _losses(sm, x[64:], y[64:]), refit,
                                null_loss=float(y.var()))
    assert sm.selected_features()["input"] == [0, 1]
    assert ev.dropped["input"] == [2]


def test_bad_losses_and_thresholds_are_refused():
    x, y = _table(n=64)
    sm = _trained(x, y, rows=48, epochs=2)
    with pytest.raises(lumos.InputError, match="finite loss of each held-out sample"):
        lumos.confirm_features(sm, lambda: torch.tensor([float("nan")]))
    with pytest.raises(lumos.ConfigurationError, match="tolerance"):
        lumos.confirm_features(sm, _losses(sm, x, y), tolerance=-1)


# ---- the order of the tests, on held-out losses scripted as a function of the closed set -------
# Columns: 0 a strong variable, 1 a weak one, 2 a proxy, 3.. memorised noise. The losses are what
# a re-fitted model would show: closing the noise columns *together* helps every sample a little
# (the model stops fitting them), which in one group with the weak variable hides its cost.
_N_NOISE, _ROWS = 8, 64


def _scripted(weak_cost, proxy_cost_beside_noise=0.0, weak_cost_beside_noise=None):
    net = nn.Sequential(nn.Linear(3 + _N_NOISE, 4), nn.Tanh(), nn.Linear(4, 1))
    sm = lumos.sparsify(net, torch.randn(8, 3 + _N_NOISE), feature_penalty=0.0)
    sm.eval()
    g = torch.Generator().manual_seed(0)
    base = 1.0 + 0.1 * torch.rand(_ROWS, generator=g, dtype=torch.float64)
    jitter = 0.02 * torch.randn(3 + _N_NOISE, _ROWS, generator=g, dtype=torch.float64)
    start = sm._feature_gates()["input"][1].start

    def held_out():
        open_ = sm.gates.frozen_values[start:start + 3 + _N_NOISE] > 0
        noise_open = bool(open_[3:].any())
        loss = base.clone()
        if not open_[0]:
            loss += 1.0
        if not open_[1]:  # each open noise column blurs the weak variable's cost a little
            f = float(open_[3:].double().mean()) if weak_cost_beside_noise is not None else 0.0
            loss += (1 - f) * weak_cost + f * (0.0 if f == 0 else weak_cost_beside_noise)
        if not open_[2]:
            loss += proxy_cost_beside_noise if noise_open else 0.0
        for j in range(3, 3 + _N_NOISE):  # alone: no evidence either way
            if not open_[j]:
                loss += 0.3 * jitter[j]
        if not noise_open:
            loss -= 0.06
        return loss

    return sm, held_out


def test_a_weak_variable_with_evidence_is_judged_alone_not_in_the_noise_group():
    # closing it costs every sample 0.05 (a small share of the strong variable's 1.0, so it is
    # a candidate); together with the noise the closing costs nothing and would stand
    cost = 0.05 + 0.005 * torch.randn(_ROWS, generator=torch.Generator().manual_seed(1),
                                      dtype=torch.float64)
    sm, held_out = _scripted(cost)
    ev = lumos.confirm_features(sm, held_out, refit=None)
    assert sm.selected_features()["input"] == [0, 1]  # column 2 costs nothing here
    assert 1 in ev.tested["input"] and 1 not in ev.dropped["input"]
    assert set(ev.dropped["input"]) == {2, *range(3, 3 + _N_NOISE)}


def test_a_cost_nearly_every_sample_shows_counts_as_evidence_despite_an_outlier():
    # one outlying sample blows the mean test's standard error up (z about 1), but all 64
    # samples get worse: the sign test sees it, so the variable is judged alone and kept
    cost = torch.full((_ROWS,), 0.05, dtype=torch.float64)
    cost[0] = 50.0
    sm, held_out = _scripted(cost)
    ev = lumos.confirm_features(sm, held_out, refit=None)
    assert 1 not in ev.dropped["input"] and 1 in ev.tested["input"]
    assert sm.selected_features()["input"] == [0, 1]


def test_a_feature_that_becomes_weak_after_closings_is_judged_too():
    # the proxy carries work only while the noise columns are open: strong at first (not a
    # candidate), worthless once they are closed, and then closed itself
    cost = torch.full((_ROWS,), 0.05, dtype=torch.float64)
    sm, held_out = _scripted(cost, proxy_cost_beside_noise=0.4)
    ev = lumos.confirm_features(sm, held_out, refit=None)
    assert sm.selected_features()["input"] == [0, 1]
    assert 2 in ev.dropped["input"] and 2 in ev.tested["input"]


def test_a_weak_variable_blurred_by_the_noise_is_read_again_once_the_noise_is_closed():
    # beside all the open noise columns its cost is lost in their spread (mean 0.02, half the
    # samples better: z about 1.6, sign test 0), so it has no evidence yet; with the noise
    # closed every sample pays 0.05 (in between, in proportion). In one group with the noise
    # it would be closed (the group gains 0.06); held back and read again, it is kept.
    blurred = 0.02 + 0.1 * torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(_ROWS // 2)
    sm, held_out = _scripted(torch.full((_ROWS,), 0.05, dtype=torch.float64),
                             weak_cost_beside_noise=blurred)
    ev = lumos.confirm_features(sm, held_out, refit=None)
    assert sm.selected_features()["input"] == [0, 1]
    assert 1 in ev.tested["input"] and 1 not in ev.dropped["input"]
    assert set(ev.dropped["input"]) == {2, *range(3, 3 + _N_NOISE)}


# ---- redundancy: a proxy the model leans on, closed only when judged beside its variable -------
def _leaned_on_proxy():
    """Columns: 0 a variable, 1 its proxy (r about 0.9), 2 another variable. The model leans on
    both 0 and 1: either closed without a re-fit costs a lot (both have strong evidence);
    re-fitted without the proxy the variable does its work (no cost), without the variable the
    proxy cannot (its 19% of unshared variance is lost)."""
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    sm = lumos.sparsify(net, torch.randn(8, 3), feature_penalty=0.0)
    sm.eval()
    g = torch.Generator().manual_seed(0)
    base = 1.0 + 0.1 * torch.rand(_ROWS, generator=g, dtype=torch.float64)
    start = sm._feature_gates()["input"][1].start
    refitted_with: dict = {}

    def closed() -> frozenset:
        return frozenset(j for j in range(3) if not sm.gates.frozen_values[start + j] > 0)

    def refit():
        refitted_with["closed"] = closed()

    def held_out():
        shut, loss = closed(), base.clone()
        refitted = refitted_with.get("closed") == shut
        if 0 in shut:
            loss += 0.3 if refitted and 1 not in shut else 1.0
        if 1 in shut and not refitted:
            loss += 0.8
        if 2 in shut:
            loss += 1.0
        return loss

    x = torch.randn(200, 3, generator=g)
    x[:, 1] = 0.9 * x[:, 0] + 0.44 * torch.randn(200, generator=g)
    return sm, held_out, refit, x


def test_a_proxy_the_model_leans_on_is_closed_when_judged_beside_its_variable():
    sm, held_out, refit, x = _leaned_on_proxy()
    ev = lumos.confirm_features(sm, held_out, refit, data=x)
    assert sm.selected_features()["input"] == [0, 2]
    assert ev.dropped["input"] == [1] and set(ev.tested["input"]) == {0, 1}
    # without the inputs' rows there is no redundancy round: both keep their strong evidence
    sm, held_out, refit, _ = _leaned_on_proxy()
    ev = lumos.confirm_features(sm, held_out, refit)
    assert sm.selected_features()["input"] == [0, 1, 2] and ev.dropped["input"] == []
    # below the threshold the pair is not judged
    sm, held_out, refit, x = _leaned_on_proxy()
    lumos.confirm_features(sm, held_out, refit, data=x, redundancy=0.95)
    assert sm.selected_features()["input"] == [0, 1, 2]


def test_bad_redundancy_data_is_refused_by_name():
    sm, held_out, refit, x = _leaned_on_proxy()
    with pytest.raises(lumos.InputError, match=r"shape \(200, 2\).*3 features along dim -1"):
        lumos.confirm_features(sm, held_out, refit, data=x[:, :2])
    with pytest.raises(lumos.InputError, match="'pixels', which is not a feature input"):
        lumos.confirm_features(sm, held_out, refit, data={"pixels": x})
    with pytest.raises(lumos.ConfigurationError, match="redundancy must lie in"):
        lumos.confirm_features(sm, held_out, refit, data=x, redundancy=1.5)


def test_the_redundancy_round_judges_a_bounded_number_of_pairs(monkeypatch):
    from lumos import selection

    monkeypatch.setattr(selection, "MAX_PAIRS", 0)
    sm, held_out, refit, x = _leaned_on_proxy()
    ev = lumos.confirm_features(sm, held_out, refit, data=x)
    assert sm.selected_features()["input"] == [0, 1, 2] and ev.tested["input"] == []
