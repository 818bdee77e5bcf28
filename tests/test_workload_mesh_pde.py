"""mesh_pde workload: P1 FEM heat conduction on random meshes, node-level GAT regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skfem")
pyg_nn = pytest.importorskip("torch_geometric.nn")

from lumos.workloads import mesh_pde as P  # noqa: E402
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

W = P.WORKLOAD


@pytest.fixture(scope="module")
def data():
    return P.generate("smoke", 0, False)


def _all_graphs(d):
    return d.train.graphs + d.val.graphs


def _physical(d, g, name):
    k = d.feature_names.index(name)
    return g["x"][:, k].double() * d.info["x_std"][k] + d.info["x_mean"][k]


def test_registered():
    check_registered(W, "mesh_pde", "gnn", "regression", "r2")
    assert set(W.metrics(torch.randn(10, 1), torch.randn(10, 1))) >= {"r2", "mae"}


def test_fem_solver_matches_manufactured_solution():
    """-div grad u = 2 pi^2 sin(pi x) sin(pi y) (h = 0): u = sin sin + T_amb, P1 error O(h^2)."""
    rng = np.random.default_rng(0)
    errors = []
    for n in (9, 17):
        mesh = P._mesh(rng, n)
        xy = mesh.p.T
        exact = np.sin(np.pi * xy[:, 0]) * np.sin(np.pi * xy[:, 1])
        f = 2 * np.pi**2 * exact
        u = P._solve(mesh, f, np.ones(len(xy)), np.zeros(len(xy)))
        errors.append(np.abs(u - exact - P.ambient(xy)).max())
    assert errors[1] < 0.02
    assert errors[1] < errors[0] / 2.5  # converges under refinement


def test_shapes_partition_and_boundary_condition(data):
    check_partition(data, len(P.TRUE_NAMES), ["heat_capacity_rho_cp"], P.N_NOISE)
    check_graphs(data)
    assert data.feature_dim == -1
    assert data.train.node_level and data.val.node_level
    assert len(data.train) + len(data.val) == P.SIZES["smoke"]["n_meshes"]
    for g in _all_graphs(data):
        # Dirichlet condition: u = T_amb(x, y) on the boundary nodes
        u = g["y"][:, 0].double() * data.info["y_std"] + data.info["y_mean"]
        on_edge = _physical(data, g, "boundary") > 0.5
        xy = torch.stack([_physical(data, g, "x"), _physical(data, g, "y")], 1).numpy()
        assert on_edge.sum() >= 4 * 8
        np.testing.assert_allclose(u[on_edge], P.ambient(xy)[on_edge.numpy()], atol=1e-4)
    y = torch.cat([g["y"] for g in data.train.graphs])
    assert abs(float(y.mean())) < 1e-4 and abs(float(y.std()) - 1) < 1e-3


def test_deterministic_cached_and_seed_dependent(data, tmp_path):
    other = check_deterministic_and_cached(W, data, tmp_path)  # node_level survives the cache
    assert not same_split(data.train, other.train)


def test_feature_ground_truth(data):
    x = torch.cat([g["x"] for g in _all_graphs(data)]).numpy()
    u = torch.cat([g["y"] for g in _all_graphs(data)]).numpy()[:, 0]
    r = [np.corrcoef(x[:, k], u)[0, 1] for k in range(x.shape[1])]
    for k in data.noise_features:
        assert abs(r[k]) < 0.05
    assert abs(r[data.nuisance_features[0]]) < 0.1
    name = data.feature_names
    assert r[name.index("source_f")] > 0.3  # heat sources raise the temperature
    assert r[name.index("y")] > 0.2  # the ambient rises with y
    assert r[name.index("cooling_h")] < -0.1  # stronger cooling, cooler plate


def test_smoke_training_beats_mean(data):
    pred, y = smoke_predictions(W, data)
    assert pred.shape == y.shape
    assert W.metrics(torch.zeros_like(y), y)["r2"] < 0.05  # predicting the train mean
    assert W.metrics(pred, y)["r2"] > 0.75


def test_model_deterministic_and_fx_traceable(data):
    model = seeded_model(W, data)
    heads = [m.heads for m in model.modules() if isinstance(m, pyg_nn.GATConv)]
    assert len(heads) == 4 and min(heads) >= 2
    inputs, _ = data.example_batch("val", 3)
    _, out = check_fx_traceable(model, inputs, pyg_tracer(), atol=1e-8)
    assert out.shape == (inputs[0].shape[0], 1)
