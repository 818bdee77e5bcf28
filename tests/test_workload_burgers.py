"""Workload 'burgers': neuraloperator's shipped Burgers data, grid-point transformer."""

from __future__ import annotations

import pytest
import torch

from lumos.workloads import get_workload
from lumos.workloads.base import WorkloadUnavailableError
from workload_checks import (
    check_deterministic_and_cached,
    check_fx_traceable,
    check_partition,
    one_thread,  # noqa: F401 (autouse)
    physical_inputs,
    seeded_model,
    smoke_predictions,
)

burgers = pytest.importorskip("lumos.workloads.burgers")
try:
    burgers.data_path()
except WorkloadUnavailableError:
    pytest.skip("neuraloperator 0.3.0 (ships the data) is not installed", allow_module_level=True)

W = get_workload("burgers")


@pytest.fixture(scope="module")
def data():
    return W.generate("smoke", 0, False)


def _physical(d, split):
    return physical_inputs(d, split.inputs[0]), split.target * d.info["y_std"] + d.info["y_mean"]


def test_shapes_and_partition(data) -> None:
    check_partition(data, 6, ["nuisance_u0_other_traj"], n_noise=4)
    x, y = data.train.inputs[0], data.train.target
    assert x.shape[1:] == (16, len(data.feature_names))
    assert y.shape[1:] == (16, 13)
    assert data.val.inputs[0].shape[1:] == x.shape[1:]
    assert len(data.train) + len(data.val) == 300
    assert data.feature_dim == -1
    assert data.nuisance_features == [6]


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
    other = check_deterministic_and_cached(W, data, tmp_path)
    assert not torch.equal(other.train.inputs[0], data.train.inputs[0])


def test_model_traceable(data) -> None:
    check_fx_traceable(seeded_model(W, data), data.example_batch("val", 4)[0], atol=1e-6)


def test_smoke_training_beats_baseline(data) -> None:
    pred, y = smoke_predictions(W, data)
    got = W.metrics(pred, y)
    # persistence (copy u at step 3 forward) is the natural baseline; the mean field is ~1.0
    (xs,), _ = data.val.batch(slice(None))
    u3 = (xs[..., 3] * data.info["x_std"][3] + data.info["x_mean"][3]) / data.info["y_std"]
    persistence = W.metrics(u3.unsqueeze(-1).expand_as(y), y)["rel_l2"]
    assert got["primary"] == got["rel_l2"]
    assert got["rel_l2"] < 0.5 * persistence
    assert got["rel_l2"] < 0.2
