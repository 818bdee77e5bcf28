"""cfd_pressure workload: Poisson pressure projection data, ground truth, model, smoke training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")

from lumos.training import train  # noqa: E402
from lumos.workloads import cfd, get_workload  # noqa: E402

WL = get_workload("cfd_pressure")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions run faster on one thread, and far faster on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return WL.data("smoke", seed=0, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def _raw(data, split="val"):
    """Un-standardise inputs and target with the scalers recorded in ``info``."""
    s = data.val if split == "val" else data.train
    mean = torch.tensor(data.info["x_mean"]).view(1, -1, 1, 1)
    std = torch.tensor(data.info["x_std"]).view(1, -1, 1, 1)
    x = s.inputs[0] * std + mean
    y = s.target * data.info["y_std"] + data.info["y_mean"]
    return x.double().numpy(), y.double().numpy()


def test_registered_and_described():
    assert WL.name == "cfd_pressure"
    assert WL.architecture == "cnn2d" and WL.task == "regression" and WL.primary == "r2"
    assert set(WL.recipes) == {"smoke", "full"}


def test_shapes_dtypes_and_partition(data):
    n = cfd.SIZES["smoke"]["grid"]
    x, y = data.train.inputs[0], data.train.target
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert x.shape[1:] == (6, n, n) and y.shape[1:] == (1, n, n)
    assert len(data.train) + len(data.val) == cfd.SIZES["smoke"]["n"]
    assert data.feature_dim == 0 and data.feature_arg == "x"
    assert data.feature_names[:3] == ["u", "v", "obstacle_mask"]
    assert data.true_features == [0, 1, 2]
    assert data.nuisance_features == [5] and data.feature_names[5] == "temperature"
    assert data.noise_features == [3, 4]
    # standardised with train statistics
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(6), atol=1e-4)
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


def test_deterministic_per_seed_and_different_across_seeds(data):
    again = WL.generate("smoke", 0, False)
    assert torch.equal(again.train.inputs[0], data.train.inputs[0])
    assert torch.equal(again.val.target, data.val.target)
    other = WL.generate("smoke", 1, False)
    assert not torch.equal(other.train.target, data.train.target)


def test_cache_round_trip(tmp_path):
    a = WL.data("smoke", seed=2, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    b = WL.data("smoke", seed=2, cache_dir=tmp_path, progress=False)
    for sa, sb in ((a.train, b.train), (a.val, b.val)):
        assert torch.equal(sa.inputs[0], sb.inputs[0]) and torch.equal(sa.target, sb.target)
    assert a.feature_names == b.feature_names and a.info == b.info


def test_model_is_fx_traceable(data):
    torch.manual_seed(0)
    model = WL.build_model(data).eval()
    (x,), _ = data.example_batch("val", 4)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-6)
        assert model(x).shape == (4, 1, *x.shape[2:])


def test_smoke_training_beats_mean_baseline(data):
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
    (x,), y = data.val.batch(slice(None))
    with torch.no_grad():
        m = WL.metrics(model(x), y)
    baseline = WL.metrics(torch.zeros_like(y) + data.train.target.mean(), y)
    assert baseline["primary"] < 0.05
    assert m["primary"] > 0.5, m
