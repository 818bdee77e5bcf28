"""cfd_pressure workload: Poisson pressure projection data, ground truth, model, smoke training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")

from lumos.workloads import cfd, get_workload  # noqa: E402
from workload_checks import (  # noqa: E402
    check_deterministic_and_cached,
    check_fx_traceable,
    check_partition,
    check_registered,
    one_thread,  # noqa: F401 (autouse)
    physical_inputs,
    seeded_model,
    smoke_predictions,
)

WL = get_workload("cfd_pressure")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return WL.data("smoke", seed=0, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def _raw(data, split="val"):
    """Un-standardise inputs and target with the scalers recorded in ``info``."""
    s = data.val if split == "val" else data.train
    x = physical_inputs(data, s.inputs[0])
    y = s.target * data.info["y_std"] + data.info["y_mean"]
    return x.double().numpy(), y.double().numpy()


def test_registered_and_described():
    check_registered(WL, "cfd_pressure", "cnn2d", "regression", "r2")
    assert set(WL.recipes) == {"smoke", "full"}


def test_shapes_dtypes_and_partition(data):
    check_partition(data, 3, ["temperature"], n_noise=2)
    n = cfd.SIZES["smoke"]["grid"]
    x, y = data.train.inputs[0], data.train.target
    assert x.shape[1:] == (6, n, n) and y.shape[1:] == (1, n, n)
    assert len(data.train) + len(data.val) == cfd.SIZES["smoke"]["n"]
    assert data.feature_dim == 0
    assert data.feature_names[:3] == ["u", "v", "obstacle_mask"]
    assert data.nuisance_features == [5]
    assert data.noise_features == [3, 4]
    assert torch.allclose(y.mean(), torch.zeros(()), atol=1e-4)


def test_target_is_the_projection_of_the_true_channels_only(data):
    """Re-solving the Poisson problem from (u, v, mask) alone reproduces the target."""
    x, y = _raw(data)
    for i in range(4):
        solid = x[i, 2] > 0.5
        assert solid.any() and not solid.all()
        p = cfd.solve_pressure(cfd.divergence(x[i, 0], x[i, 1]), solid)
        np.testing.assert_allclose(p, y[i, 0], atol=1e-4 * (np.abs(p).max() + 1))
        assert np.all(x[i, 0][solid] == 0) and np.all(x[i, 1][solid] == 0)
        assert np.all(y[i, 0][solid] == 0)


def test_noise_and_nuisance_uncorrelated_with_target(data):
    x, y = data.train.inputs[0], data.train.target[:, 0]
    yc = (y - y.mean()).flatten()
    for c in data.irrelevant_features:
        xc = (x[:, c] - x[:, c].mean()).flatten()
        corr = float((xc * yc).sum() / (xc.norm() * yc.norm()))
        assert abs(corr) < 0.05, (data.feature_names[c], corr)


def test_pressure_solver_satisfies_poisson_with_boundary_conditions():
    rng = np.random.default_rng(3)
    (u, v, m), p = cfd.simulate(rng, 12)
    solid = m > 0.5
    div = cfd.divergence(u, v)
    pp = np.pad(p, 1)  # p = 0 outside the domain
    sp = np.pad(solid, 1)
    lap = np.zeros_like(p)
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        nb = pp[1 + dy : 13 + dy, 1 + dx : 13 + dx]
        nb_solid = sp[1 + dy : 13 + dy, 1 + dx : 13 + dx]
        lap += np.where(nb_solid, 0.0, nb - p)  # Neumann: solid neighbours add nothing
    np.testing.assert_allclose(lap[~solid], div[~solid], atol=1e-9)


def test_obstacles_leave_no_enclosed_fluid():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(20):
        solid = cfd.random_obstacles(rng, 16)
        labels, k = ndimage.label(~solid)
        border = set(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        assert set(range(1, k + 1)) <= border


def test_deterministic_cached_and_different_across_seeds(data, tmp_path):
    other = check_deterministic_and_cached(WL, data, tmp_path)
    assert not torch.equal(other.train.target, data.train.target)


def test_model_is_fx_traceable(data):
    (x,), _ = data.example_batch("val", 4)
    _, out = check_fx_traceable(seeded_model(WL, data), (x,), atol=1e-6)
    assert out.shape == (4, 1, *x.shape[2:])


def test_smoke_training_beats_mean_baseline(data):
    pred, y = smoke_predictions(WL, data)
    m = WL.metrics(pred, y)
    baseline = WL.metrics(torch.zeros_like(y) + data.train.target.mean(), y)
    assert baseline["primary"] < 0.05
    assert m["primary"] > 0.5, m
