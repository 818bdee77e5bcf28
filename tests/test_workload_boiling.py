"""boiling_point workload: CRC boiling points on RDKit molecular graphs, GIN regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("chemicals")
pytest.importorskip("pandas")
pyg_nn = pytest.importorskip("torch_geometric.nn")

from lumos.workloads import boiling as B  # noqa: E402
from workload_checks import (  # noqa: E402
    check_deterministic_and_cached,
    check_fx_traceable,
    check_graphs,
    check_partition,
    check_registered,
    one_thread,  # noqa: F401 (autouse)
    pyg_tracer,
    same_split,
    seeded_model,
    smoke_predictions,
)

W = B.WORKLOAD


@pytest.fixture(scope="module")
def data():
    return B.generate("smoke", 0, False)


def _all_graphs(d):
    return d.train.graphs + d.val.graphs


def test_registered():
    check_registered(W, "boiling_point", "gnn", "regression", "r2")
    assert set(W.metrics(torch.randn(10, 1), torch.randn(10, 1))) >= {"r2", "mae"}


def test_shapes_and_partition(data):
    nuisance = ["isotope_label_shift"]
    check_partition(data, len(B.TRUE_NAMES), nuisance, B.N_NOISE, constant_columns=True)
    check_graphs(data)
    assert data.feature_dim == -1
    assert len(data.train) > 200 and len(data.val) > 40
    y = torch.stack([g["y"] for g in data.train.graphs])
    assert abs(float(y.mean())) < 1e-4 and abs(float(y.std()) - 1) < 1e-3
    # targets map back to physical boiling points (K)
    tb = y * data.info["y_std"] + data.info["y_mean"]
    assert B.TB_RANGE[0] <= float(tb.min()) and float(tb.max()) <= B.TB_RANGE[1]


def test_deterministic_cached_and_seed_dependent(data, tmp_path):
    other = check_deterministic_and_cached(W, data, tmp_path)
    assert not same_split(data.train, other.train)


def test_feature_ground_truth(data):
    graphs = _all_graphs(data)
    y = np.array([g["y"].item() for g in graphs])
    mean_x = np.stack([g["x"].mean(0).numpy() for g in graphs])
    for k in data.noise_features:
        assert abs(np.corrcoef(mean_x[:, k], y)[0, 1]) < 0.2
    # nuisance: the fraction of labelled atoms in a molecule says nothing about its Tb
    k = data.nuisance_features[0]
    mu, sd = data.info["x_mean"][k], data.info["x_std"][k]
    labelled = np.array([float(((g["x"][:, k] * sd + mu) > 0.5).float().mean()) for g in graphs])
    assert 0.15 < labelled.mean() < 0.35
    assert abs(np.corrcoef(labelled, y)[0, 1]) < 0.2
    # a real descriptor: total molar refractivity (polarisability) tracks Tb strongly
    k = B.TRUE_NAMES.index("crippen_mr")
    mu, sd = data.info["x_mean"][k], data.info["x_std"][k]
    mr = np.array([float((g["x"][:, k] * sd + mu).sum()) for g in graphs])
    assert np.corrcoef(mr, y)[0, 1] > 0.5


def test_smoke_training_beats_mean(data):
    pred, y = smoke_predictions(W, data)
    baseline = W.metrics(torch.zeros_like(y), y)["r2"]  # predicting the train mean
    assert baseline < 0.05
    assert W.metrics(pred, y)["r2"] > 0.6


def test_model_deterministic_and_fx_traceable(data):
    model = seeded_model(W, data)
    inputs, _ = data.example_batch("val", 8)
    traced, out = check_fx_traceable(model, inputs, pyg_tracer(), atol=1e-8)
    called = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    assert {pyg_nn.global_add_pool, pyg_nn.global_mean_pool} <= called
    assert sum(n.op == "call_module" and "convs" in str(n.target) for n in traced.graph.nodes) == 4
    assert out.shape == (8, 1)
