"""Workload 'burgers': neuraloperator's shipped Burgers data, grid-point transformer."""

from __future__ import annotations

import pytest
import torch
import torch.fx

from lumos.training import train
from lumos.workloads import get_workload
from lumos.workloads.base import WorkloadUnavailableError

burgers = pytest.importorskip("lumos.workloads.burgers")
try:
    burgers.data_path()
except WorkloadUnavailableError:
    pytest.skip("neuraloperator 0.3.0 (ships the data) is not installed", allow_module_level=True)

W = get_workload("burgers")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small models train faster (and far more predictably on a shared box) on one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data():
    return W.generate("smoke", 0, False)


def _physical(d, split):
    x = split.inputs[0] * torch.tensor(d.info["x_std"]) + torch.tensor(d.info["x_mean"])
    return x, split.target * d.info["y_std"] + d.info["y_mean"]


def test_shapes_and_partition(data) -> None:
    x, y = data.train.inputs[0], data.train.target
    assert x.dtype == y.dtype == torch.float32
    assert x.shape[1:] == (16, len(data.feature_names))
    assert y.shape[1:] == (16, 13)
    assert data.val.inputs[0].shape[1:] == x.shape[1:]
    assert len(data.train) + len(data.val) == 300
    assert data.feature_dim == -1 and data.feature_arg == "x"
    assert data.true_features == [0, 1, 2, 3, 4, 5]
    assert data.nuisance_features == [6]
    assert len(data.noise_features) == 4
    # standardised with train statistics
    flat = x.reshape(-1, x.shape[-1])
    assert torch.allclose(flat.mean(0), torch.zeros(flat.shape[1]), atol=1e-4)
    assert torch.allclose(flat.std(0), torch.ones(flat.shape[1]), atol=1e-3)


def test_physics_consistent(data) -> None:
    """Inputs and targets are one trajectory in the right layout: the spatial mean of u is
    conserved (periodic Burgers) and consecutive steps are close."""
    x, y = _physical(data, data.train)
    u_in = x[..., :4]  # (n, 16 points, 4 steps)
    u = torch.cat([u_in, y], dim=-1)  # (n, 16, 17)
    mean = u.mean(dim=1)
    assert (mean - mean[:, :1]).abs().max() < 0.01
    step = (u[..., 1:] - u[..., :-1]).norm(dim=1) / u[..., :-1].norm(dim=1)
    assert step.mean() < 0.1
    # the nuisance is a real initial condition of *another* trajectory
    nuis = x[..., 6]
    assert not torch.allclose(nuis, u_in[..., 0], atol=1e-3)
    assert (nuis.mean(1) - 0).abs().max() < 0.01


def test_noise_uncorrelated_true_correlated(data) -> None:
    x, y = data.train.inputs[0], data.train.target
    xf = x.reshape(-1, x.shape[-1])
    yf = y[..., 0].reshape(-1)  # u at step 4

    def corr(a):
        return float(torch.corrcoef(torch.stack([a, yf]))[0, 1])

    assert corr(xf[:, 3]) > 0.8  # u at step 3
    for j in data.noise_features + data.nuisance_features:
        assert abs(corr(xf[:, j])) < 0.15


def test_deterministic_per_seed_and_cache(tmp_path, data) -> None:
    again = W.generate("smoke", 0, False)
    assert torch.equal(again.train.inputs[0], data.train.inputs[0])
    assert torch.equal(again.val.target, data.val.target)
    other = W.generate("smoke", 1, False)
    assert not torch.equal(other.train.inputs[0], data.train.inputs[0])
    first = W.data("smoke", seed=0, cache_dir=tmp_path)
    cached = W.data("smoke", seed=0, cache_dir=tmp_path)
    assert torch.equal(first.train.inputs[0], cached.train.inputs[0])
    assert torch.equal(first.val.target, cached.val.target)
    assert cached.feature_names == data.feature_names
    assert cached.info == first.info


def test_model_traceable(data) -> None:
    torch.manual_seed(0)
    model = W.build_model(data).eval()
    (x,), _ = data.example_batch("val", 4)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-6)


def test_smoke_training_beats_baseline(data) -> None:
    torch.manual_seed(0)
    model = W.build_model(data)
    r = W.recipes["smoke"]
    train(
        model,
        data.loader("train", r.batch_size, seed=0),
        epochs=r.epochs,
        loss_fn=W.loss,
        lr=r.lr,
        seed=0,
    )
    (x,), y = data.val.batch(slice(None))
    with torch.no_grad():
        got = W.metrics(model(x), y)
    # persistence (copy u at step 3 forward) is the natural baseline; the mean field is ~1.0
    (xs,), _ = data.val.batch(slice(None))
    u3 = (xs[..., 3] * data.info["x_std"][3] + data.info["x_mean"][3]) / data.info["y_std"]
    persistence = W.metrics(u3.unsqueeze(-1).expand_as(y), y)["rel_l2"]
    assert got["primary"] == got["rel_l2"]
    assert got["rel_l2"] < 0.5 * persistence
    assert got["rel_l2"] < 0.2
