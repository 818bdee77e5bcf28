"""``width_multiple="auto"``: the multiple chosen from probe timings (lumos.widths), used by the
budget projection, recorded in the state_dict, shown in the report, and accepted everywhere a
user sets it (GateOptions, the estimators, the run config and the CLI)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lumos
import lumos.sparse_model
from lumos import widths
from lumos.cli import main as cli_main
from lumos.runs import load_config


def _tiled(tile: int, penalty: float = 0.25, noise: float = 0.0, seed: int = 0):
    """Probe times of a device whose kernels run widths that are not a multiple of ``tile``
    ``penalty`` slower per unit of width (a remainder loop outside the vector tiles), with
    multiplicative timing noise."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for w in widths.PROBE_WIDTHS:
        jitter = 1 + noise * float(torch.randn(1, generator=g))
        out[w] = w * (1 + (penalty if w % tile else 0.0)) * 1e-6 * jitter
    return out


@settings(max_examples=25, deadline=None, derandomize=True)
@given(tile=st.sampled_from(widths.CANDIDATES), seed=st.integers(0, 1000))
def test_the_tile_width_of_a_device_is_found_through_timing_noise(tile, seed):
    assert widths.choose_width_multiple(_tiled(tile, noise=0.01, seed=seed)) == tile


def test_no_multiple_when_time_grows_smoothly_with_width():
    times = {w: (5.0 + w) * 1e-6 for w in widths.PROBE_WIDTHS}
    assert widths.choose_width_multiple(times) == 1


def test_a_gain_under_the_threshold_does_not_cut_widths():
    # 8-wide tiles, but the remainder costs only half of what the choice asks for
    times = _tiled(8, penalty=(widths.MIN_GAIN - 1) / 2)
    assert widths.choose_width_multiple(times) == 1
    assert widths.choose_width_multiple(times, min_gain=1 + (widths.MIN_GAIN - 1) / 4) == 8


def test_the_probe_times_every_width_on_this_device():
    times = widths.probe_seconds(torch.device("cpu"), widths=(64, 65, 72), repeats=1)
    assert sorted(times) == [64, 65, 72] and all(t > 0 for t in times.values())


def _mlp():
    return nn.Sequential(nn.Linear(9, 64), nn.ReLU(), nn.Linear(64, 40), nn.ReLU(),
                         nn.Linear(40, 1))


def _widths(model):
    return [m.out_features for m in model.modules() if isinstance(m, nn.Linear)][:-1]


def _projected(options, seed=0):
    torch.manual_seed(seed)
    sm = lumos.sparsify(_mlp(), torch.randn(8, 9), budget=0.4, features=False, gates=options)
    with torch.no_grad():
        sm.gates.log_alpha.normal_(1.0, 3.0)
    sm.set_progress(0.95)  # the budget is enforced here
    return sm


def test_auto_cuts_widths_to_the_measured_multiple_and_records_it(monkeypatch):
    calls = []
    monkeypatch.setattr(lumos.sparse_model, "measured_width_multiple",
                        lambda device, dtype: calls.append((device, dtype)) or 8)
    sm = _projected(lumos.GateOptions(width_multiple="auto"))
    assert calls == [(torch.device("cpu"), torch.float32)]  # once, on the model's device
    assert sm.measured_width_multiple == 8 and sm.width_multiple() == 8
    assert sm.kept_fraction() <= 0.4 + 1e-9
    assert all(w % 8 == 0 or w < 8 for w in _widths(sm.compact())), _widths(sm.compact())
    assert "cut to multiples of 8 (measured on this device" in sm.report()
    # the same masks as the fixed multiple it measured
    assert torch.equal(sm.kept_mask(), _projected(lumos.GateOptions(width_multiple=8)).kept_mask())

    # a resumed run rounds as the first one did, whatever this machine would measure
    monkeypatch.setattr(lumos.sparse_model, "measured_width_multiple",
                        lambda device, dtype: pytest.fail("measured again"))
    torch.manual_seed(1)
    again = lumos.sparsify(_mlp(), torch.randn(8, 9), budget=0.4, features=False,
                           gates=lumos.GateOptions(width_multiple="auto"))
    again.load_state_dict(sm.state_dict())
    assert again.width_multiple() == 8


def test_auto_on_a_device_without_a_favoured_multiple_cuts_nothing(monkeypatch):
    monkeypatch.setattr(lumos.sparse_model, "measured_width_multiple", lambda device, dtype: 1)
    auto = _projected(lumos.GateOptions(width_multiple="auto"))
    assert torch.equal(auto.kept_mask(), _projected(None).kept_mask())
    assert "cut to multiples of 1" in auto.report()


def test_the_report_says_when_auto_has_not_measured_yet():
    sm = lumos.sparsify(_mlp(), torch.randn(8, 9), budget=0.4,
                        gates=lumos.GateOptions(width_multiple="auto"))
    assert "measured at the first projection" in sm.report()


@pytest.mark.parametrize("bad", ["Auto", "eight", 0, -8, 2.0, True])
def test_a_bad_width_multiple_is_refused_everywhere(bad, capsys):
    with pytest.raises(lumos.ConfigurationError, match="width_multiple"):
        lumos.GateOptions(width_multiple=bad)
    x, y = torch.randn(40, 3).numpy(), torch.randn(40).numpy()
    with pytest.raises(lumos.ConfigurationError, match="width_multiple"):
        lumos.LumosRegressor(width_multiple=bad, epochs=1).fit(x, y)
    with pytest.raises(lumos.ConfigurationError, match="width_multiple"):
        load_config("alloy_mlp", width_multiple=bad)
    if isinstance(bad, str):
        with pytest.raises(SystemExit):
            cli_main(["fit", "alloy_mlp", "--width-multiple", bad])
        assert "neither a whole number nor 'auto'" in capsys.readouterr().err


def test_the_estimator_and_the_config_accept_auto(monkeypatch):
    monkeypatch.setattr(lumos.sparse_model, "measured_width_multiple", lambda device, dtype: 8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=g)
    y = x[:, 0] - 2 * x[:, 1]
    est = lumos.LumosRegressor(hidden=(64, 64), budget=0.3, epochs=4, width_multiple="auto",
                               random_state=0, confirm=False).fit(x.numpy(), y.numpy())
    assert all(w % 8 == 0 or w < 8 for w in _widths(est.compacted_model_))
    assert load_config("alloy_mlp", width_multiple="auto").width_multiple == "auto"
