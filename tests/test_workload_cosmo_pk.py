"""The cosmo_power_spectrum workload: colossus linear P(k) emulator."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("colossus")

from lumos.training import train  # noqa: E402
from lumos.workloads import cosmo_pk as mod  # noqa: E402
from lumos.workloads import get_workload  # noqa: E402

WL = get_workload("cosmo_power_spectrum")
PLANCK = np.array([0.3111, 0.049, 0.6766, 0.9665, 0.8102, 0.0, 0.0561])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # small MLPs on a shared 2-core machine: extra intra-op threads only contend
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def data(cache):
    return WL.data("smoke", seed=0, cache_dir=cache)


def _all(split):
    (x,), y = split.batch(slice(None))
    return x, y


def test_shapes_dtypes_and_partition(data):
    xt, yt = _all(data.train)
    xv, yv = _all(data.val)
    n_feat = len(data.feature_names)
    assert xt.dtype == yt.dtype == torch.float32
    assert xt.shape == (len(yt), n_feat) and xv.shape == (len(yv), n_feat)
    assert yt.shape[1] == yv.shape[1] == mod.N_K == len(data.info["k_h_per_Mpc"])
    assert len(xt) + len(xv) == mod.SIZES["smoke"][0]
    assert data.feature_dim == -1
    assert data.feature_names[: mod.N_TRUE] == ["Omega_m", "Omega_b", "h", "n_s", "sigma_8", "z"]
    assert [data.feature_names[i] for i in data.nuisance_features] == ["tau_reio"]
    assert len(data.noise_features) == 8
    assert torch.allclose(xt.mean(0), torch.zeros(n_feat), atol=1e-4)
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
    xt, yt = _all(data.train)
    y_mean = yt.mean(1, keepdim=True)  # overall amplitude of log P
    corr = torch.corrcoef(torch.cat([xt, y_mean], 1).T)[-1, :-1].abs()
    assert corr[data.irrelevant_features].max() < 0.35  # 96 samples: |r| < 0.35 by chance
    assert corr[data.feature_names.index("z")] > 0.5  # growth dominates the amplitude


def test_deterministic_cached_and_seed_dependent(data, cache):
    again = WL.data("smoke", seed=0, cache_dir=cache)  # read back from the cache
    fresh = WL.generate("smoke", 0, False)
    other = WL.generate("smoke", 1, False)
    assert list(cache.glob("cosmo_power_spectrum-v*-smoke-seed0.pt"))
    for d in (again, fresh):
        for a, b in ((data.train, d.train), (data.val, d.val)):
            assert torch.equal(a.inputs[0], b.inputs[0]) and torch.equal(a.target, b.target)
        assert d.info == data.info
    assert not torch.equal(other.train.target, data.train.target)


def test_colossus_never_touches_its_disk_cache(monkeypatch):
    from colossus.utils import storage

    def refuse(*args, **kwargs):
        raise AssertionError("colossus asked for its on-disk cache directory")

    monkeypatch.setattr(storage, "getCacheDir", refuse)
    assert np.all(np.isfinite(mod.log_power(PLANCK * [1.01, 1, 1, 1, 1, 1, 1], mod.wavenumbers())))


def test_smoke_training_beats_mean_predictor(data):
    recipe = WL.recipes["smoke"]
    torch.manual_seed(0)
    model = WL.build_model(data)
    train(
        model,
        data.loader("train", recipe.batch_size, seed=0),
        epochs=recipe.epochs,
        loss_fn=WL.loss,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
    )
    xv, yv = _all(data.val)
    with torch.no_grad():
        m = WL.metrics(model(xv), yv)
        baseline = WL.metrics(data.train.target.mean(0, keepdim=True).expand_as(yv), yv)
    assert baseline["r2"] < 0.1
    assert m["r2"] > 0.9, m
    assert m["mae"] < 0.3 * baseline["mae"]


def test_model_is_fx_traceable(data):
    torch.manual_seed(0)
    model = WL.build_model(data).eval()
    traced = torch.fx.symbolic_trace(model)
    (x,), _ = data.example_batch("val", 8)
    assert torch.equal(traced(x), model(x))
    assert model(x).shape == (8, mod.N_K)


def test_optional_packages_imported_lazily():
    tree = ast.parse(Path(mod.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert names <= {"__future__", "numpy", "torch"}, names
    assert "colossus" in WL.requires
