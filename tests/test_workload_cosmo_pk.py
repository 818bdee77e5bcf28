"""The cosmo_power_spectrum workload: colossus linear P(k) emulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("colossus")

from lumos.workloads import cosmo_pk as mod  # noqa: E402
from lumos.workloads import get_workload  # noqa: E402
from workload_checks import (  # noqa: E402
    all_rows,
    check_deterministic_and_cached,
    check_fx_traceable,
    check_imports_lazy,
    check_partition,
    one_thread,  # noqa: F401 (autouse)
    seeded_model,
    smoke_predictions,
)

WL = get_workload("cosmo_power_spectrum")
PLANCK = np.array([0.3111, 0.049, 0.6766, 0.9665, 0.8102, 0.0, 0.0561])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return WL.data("smoke", seed=0, cache_dir=tmp_path_factory.mktemp("cache"))


def test_shapes_dtypes_and_partition(data):
    check_partition(data, mod.N_TRUE, ["tau_reio"], n_noise=8)
    xt, yt = all_rows(data.train)
    xv, yv = all_rows(data.val)
    n_feat = len(data.feature_names)
    assert xt.shape == (len(yt), n_feat) and xv.shape == (len(yv), n_feat)
    assert yt.shape[1] == yv.shape[1] == mod.N_K == len(data.info["k_h_per_Mpc"])
    assert len(xt) + len(xv) == mod.SIZES["smoke"][0]
    assert data.feature_dim == -1
    assert data.feature_names[: mod.N_TRUE] == ["Omega_m", "Omega_b", "h", "n_s", "sigma_8", "z"]
    assert torch.allclose(yt.std(0), torch.ones(mod.N_K), atol=1e-3)  # per-k standardised


def test_latin_hypercube_fills_the_box():
    p = mod.sample_parameters(50, seed=3)
    for j, (lo, hi) in enumerate(mod.PARAMETERS.values()):
        assert lo <= p[:, j].min() and p[:, j].max() <= hi
        # one point per stratum: every tenth of the range holds exactly 5 of 50 points
        counts = np.bincount(((p[:, j] - lo) / (hi - lo) * 10).astype(int), minlength=10)
        assert np.all(counts == 5)


def test_power_spectrum_physics():
    k = mod.wavenumbers()
    base = mod.log_power(PLANCK, k)
    assert np.all(np.isfinite(base))
    # tau does not enter the matter power spectrum
    assert np.array_equal(base, mod.log_power(PLANCK * [1, 1, 1, 1, 1, 1, 1.5], k))
    # P(k) ~ sigma_8^2 at fixed shape, and linear growth scales all k alike
    higher = mod.log_power(PLANCK * [1, 1, 1, 1, 1.1, 1, 1], k)
    np.testing.assert_allclose(higher - base, 2 * np.log10(1.1), atol=1e-6)
    at_z1 = mod.log_power(PLANCK + [0, 0, 0, 0, 0, 1.0, 0], k)
    shift = base - at_z1
    np.testing.assert_allclose(shift, shift.mean(), atol=1e-6)
    assert 0.38 < shift.mean() < 0.48  # D(z=1)/D(0) ~ 0.61 for Planck: -2 log10 D ~ 0.43
    # turnover near k_eq ~ 0.01-0.03 h/Mpc, and a rising-then-falling spectrum
    assert 0.005 < k[np.argmax(base)] < 0.05
    assert base[0] < base.max() and base[-1] < base.max()


def test_noise_uncorrelated_parameters_correlated(data):
    xt, yt = all_rows(data.train)
    y_mean = yt.mean(1, keepdim=True)  # overall amplitude of log P
    corr = torch.corrcoef(torch.cat([xt, y_mean], 1).T)[-1, :-1].abs()
    assert corr[data.irrelevant_features].max() < 0.35  # 96 samples: |r| < 0.35 by chance
    assert corr[data.feature_names.index("z")] > 0.5  # growth dominates the amplitude


def test_deterministic_cached_and_seed_dependent(data, tmp_path):
    other = check_deterministic_and_cached(WL, data, tmp_path)
    assert not torch.equal(other.train.target, data.train.target)


def test_colossus_never_touches_its_disk_cache(monkeypatch):
    from colossus.utils import storage

    def refuse(*args, **kwargs):
        raise AssertionError("colossus asked for its on-disk cache directory")

    monkeypatch.setattr(storage, "getCacheDir", refuse)
    assert np.all(np.isfinite(mod.log_power(PLANCK * [1.01, 1, 1, 1, 1, 1, 1], mod.wavenumbers())))


def test_smoke_training_beats_mean_predictor(data):
    pred, yv = smoke_predictions(WL, data)
    m = WL.metrics(pred, yv)
    baseline = WL.metrics(data.train.target.mean(0, keepdim=True).expand_as(yv), yv)
    assert baseline["r2"] < 0.1
    assert m["r2"] > 0.9, m
    assert m["mae"] < 0.3 * baseline["mae"]


def test_model_is_fx_traceable(data):
    _, out = check_fx_traceable(seeded_model(WL, data), data.example_batch("val", 8)[0])
    assert out.shape == (8, mod.N_K)


def test_optional_packages_imported_lazily():
    check_imports_lazy(mod, {"__future__", "numpy", "torch"})
    assert "colossus" in WL.requires
