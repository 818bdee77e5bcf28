"""Workload 'combustion': Cantera H2/air ignition, transformer over a short state history."""

from __future__ import annotations

import pytest
import torch

from lumos.workloads import get_workload
from workload_checks import (
    check_deterministic_and_cached,
    check_fx_traceable,
    check_partition,
    one_thread,  # noqa: F401 (autouse)
    physical_inputs,
    seeded_model,
    smoke_predictions,
)

pytest.importorskip("cantera")
combustion = pytest.importorskip("lumos.workloads.combustion")
W = get_workload("combustion")

# atoms of H and O per species, in the order of combustion.SPECIES
ATOMS = {
    "H2": (2, 0),
    "H": (1, 0),
    "O": (0, 1),
    "O2": (0, 2),
    "OH": (1, 1),
    "H2O": (2, 1),
    "HO2": (1, 2),
    "H2O2": (2, 2),
}
MASS = {"H": 1.008, "O": 15.999}


@pytest.fixture(scope="module")
def data():
    return W.generate("smoke", 0, False)


def test_shapes_and_partition(data) -> None:
    check_partition(data, 10, ["nuisance_ambient_T"], combustion.N_NOISE)
    x, y = data.train.inputs[0], data.train.target
    n_traj, n_uni, n_zone = combustion.SIZES["smoke"]
    assert x.shape[1:] == (combustion.WINDOW, len(data.feature_names))
    assert y.shape[1:] == (5,)
    assert len(data.train) + len(data.val) == n_traj * (n_uni + n_zone)
    assert data.feature_dim == -1
    assert data.feature_names[:2] == ["T", "P"]
    assert data.nuisance_features == [10]
    assert data.noise_features == list(range(11, 11 + combustion.N_NOISE))
    assert torch.allclose(y.mean(0), torch.zeros(5), atol=1e-4)


def test_physics_consistent(data) -> None:
    """Element conservation along each window (closed reactor), constant pressure, mass
    fractions in [0, 1], the nuisance constant per run, temperature that never falls."""
    x = physical_inputs(data, data.train.inputs[0].double())
    species = combustion.SPECIES
    lam = combustion.BOX_COX
    y_k = x[..., 2 : 2 + len(species)]
    if lam is not None:
        y_k = (lam * y_k + 1).clamp_min(0) ** (1 / lam)
    assert y_k.min() > -1e-6 and y_k.sum(-1).max() < 0.35  # the rest is N2
    weights = {s: ATOMS[s][0] * MASS["H"] + ATOMS[s][1] * MASS["O"] for s in species}
    for e, element in enumerate(("H", "O")):
        z = sum(
            y_k[..., k] * ATOMS[s][e] * MASS[element] / weights[s] for k, s in enumerate(species)
        )
        assert (z - z[:, :1]).abs().max() < 2e-5 * z.abs().max()
    p = x[..., 1]
    assert (p - p[:, :1]).abs().max() < 1e-4 and p.min() > 0.99 and p.max() < 5.01
    t = x[..., 0]
    assert (t[:, 1:] - t[:, :-1]).min() > -1.0 and t.min() > 1000 and t.max() < 3200
    ambient = x[..., 10]
    assert (ambient - ambient[:, :1]).abs().max() < 1e-3
    dt = data.train.target[:, 0] * data.info["y_std"][0] + data.info["y_mean"][0]
    assert dt.min() > -1.0


def test_noise_uncorrelated_true_correlated(data) -> None:
    x, y = data.train.inputs[0], data.train.target

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    # the temperature rise over the last step predicts the rise over the next one
    trend = x[:, -1, 0] - x[:, -2, 0]
    assert corr(trend, y[:, 0]) > 0.3
    for j in data.noise_features + data.nuisance_features:
        for k in range(y.shape[1]):
            assert abs(corr(x[:, -1, j], y[:, k])) < 0.2


def test_deterministic_per_seed_and_cache(tmp_path, data) -> None:
    other = check_deterministic_and_cached(W, data, tmp_path)
    assert not torch.equal(other.train.target, data.train.target)


def test_model_traceable(data) -> None:
    model = seeded_model(W, data)
    check_fx_traceable(model, data.example_batch("val", 4)[0], atol=1e-6)
    assert any(isinstance(m, torch.nn.TransformerEncoderLayer) for m in model.modules())


def test_smoke_training_beats_baseline(data) -> None:
    pred, y = smoke_predictions(W, data)
    baseline = W.metrics(data.train.target.mean(0).expand_as(y), y)["r2"]
    got = W.metrics(pred, y)
    assert got["primary"] == got["r2"]
    assert baseline < 0.05
    assert got["r2"] > 0.5
