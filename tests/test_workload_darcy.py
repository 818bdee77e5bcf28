"""Workload 'darcy': finite-volume Darcy solver, shipped smoke data, FNO."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.fx

from lumos.workloads import get_workload
from lumos.workloads.base import WorkloadUnavailableError
from workload_checks import (
    check_deterministic_and_cached,
    check_fx_traceable,
    check_partition,
    one_thread,  # noqa: F401 (autouse)
    seeded_model,
    smoke_predictions,
)

pytest.importorskip("scipy")
darcy = pytest.importorskip("lumos.workloads.darcy")
W = get_workload("darcy")


def _shipped_available() -> bool:
    try:
        darcy.shipped_path()
    except WorkloadUnavailableError:
        return False
    return True


needs_shipped = pytest.mark.skipif(
    not _shipped_available(), reason="neuraloperator 0.3.0 (ships the smoke data) not installed"
)


# ---- the generator of the full size ------------------------------------------------------------
def test_solver_constant_permeability() -> None:
    """-Laplace u = 1 on the unit square: max u = 0.07367 (series solution); u scales as 1/a."""
    u = darcy.solve_darcy(np.ones((65, 65)))
    assert abs(u.max() - 0.07367) < 5e-4
    assert np.allclose(u, u.T, atol=1e-12) and np.allclose(u, u[::-1], atol=1e-12)
    assert np.all(u[0] == 0) and np.all(u[:, -1] == 0)
    assert np.allclose(
        darcy.solve_darcy(np.full((33, 33), 4.0)) * 4, darcy.solve_darcy(np.ones((33, 33)))
    )


def test_solver_flux_balance() -> None:
    """Piecewise-constant a: the discrete operator applied to u gives back f = 1 inside."""
    rng = np.random.default_rng(0)
    a = np.where(darcy.gaussian_random_field(rng, 1, 24)[0] >= 0, 12.0, 3.0)
    u = darcy.solve_darcy(a)
    h = 1 / 23
    hm = lambda p, q: 2 * p * q / (p + q)  # noqa: E731
    c = u[1:-1, 1:-1]
    flux = (
        hm(a[1:-1, 1:-1], a[:-2, 1:-1]) * (c - u[:-2, 1:-1])
        + hm(a[1:-1, 1:-1], a[2:, 1:-1]) * (c - u[2:, 1:-1])
        + hm(a[1:-1, 1:-1], a[1:-1, :-2]) * (c - u[1:-1, :-2])
        + hm(a[1:-1, 1:-1], a[1:-1, 2:]) * (c - u[1:-1, 2:])
    ) / h**2
    assert np.allclose(flux, 1.0, atol=1e-8)
    assert u.min() >= 0 and 0.25 < (a == 12).mean() < 0.75


def test_full_generator_small(monkeypatch) -> None:
    monkeypatch.setitem(darcy.FULL, "n", 30)
    monkeypatch.setitem(darcy.FULL, "resolution", 20)
    d = W.generate("full", 0, False)
    assert d.train.inputs[0].shape[1:] == (7, 20, 20)
    assert d.train.target.shape[1:] == (1, 20, 20)
    assert len(d.train) + len(d.val) == 30
    y = d.train.target
    assert torch.all(y[..., 0, :] == 0) and torch.all(y[..., :, -1] == 0) and y.min() >= 0
    again = W.generate("full", 0, False)
    assert torch.equal(again.train.inputs[0], d.train.inputs[0])
    assert torch.equal(again.val.target, d.val.target)


# ---- the smoke data and the model --------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    if not _shipped_available():
        pytest.skip("neuraloperator 0.3.0 (ships the smoke data) not installed")
    return W.generate("smoke", 0, False)


@needs_shipped
def test_shapes_and_partition(data) -> None:
    check_partition(data, 3, ["nuisance_temperature"], n_noise=3)
    x, y = data.train.inputs[0], data.train.target
    assert x.shape[1:] == (7, 16, 16) and y.shape[1:] == (1, 16, 16)
    assert len(data.train) + len(data.val) == darcy.SMOKE["n"]
    assert data.feature_dim == 0
    assert data.feature_names[:4] == ["permeability_a", "grid_x", "grid_y", "nuisance_temperature"]
    assert data.nuisance_features == [3]
    assert data.noise_features == [4, 5, 6]
    # the permeability channel is two-valued, the grid channels are the same for every sample
    assert len(torch.unique(x[:, 0])) == 2
    assert torch.equal(x[0, 1:3], x[-1, 1:3])


@needs_shipped
def test_noise_uncorrelated_true_correlated(data) -> None:
    x, y = data.train.inputs[0], data.train.target[:, 0]

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    # the solution is large where the permeability is low (and away from the walls)
    assert corr(x[:, 0], y) < -0.2
    for j in data.noise_features + data.nuisance_features:
        assert abs(corr(x[:, j], y)) < 0.1


@needs_shipped
def test_deterministic_per_seed_and_cache(tmp_path, data) -> None:
    other = check_deterministic_and_cached(W, data, tmp_path)
    assert not torch.equal(other.train.target, data.train.target)


@needs_shipped
def test_model_traceable(data) -> None:
    model = seeded_model(W, data)
    (x,), _ = data.example_batch("val", 4)
    from lumos.layers import SpectralConv1d, SpectralConv2d

    class Tracer(torch.fx.Tracer):  # the FNO layers are leaves (LUMOS has rules for them)
        def is_leaf_module(self, m, name):
            spectral = isinstance(m, (SpectralConv1d, SpectralConv2d))
            return spectral or super().is_leaf_module(m, name)

    check_fx_traceable(model, (x,), Tracer(), atol=1e-5)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"SpectralConv2d", "Conv2d", "GELU"} <= kinds


@needs_shipped
def test_smoke_training_beats_baseline(data) -> None:
    pred, y = smoke_predictions(W, data)
    mean_field = data.train.target.mean(0, keepdim=True).expand_as(y)
    baseline = W.metrics(mean_field, y)["rel_l2"]
    got = W.metrics(pred, y)
    assert got["primary"] == got["rel_l2"]
    assert got["rel_l2"] < 0.6 * baseline
