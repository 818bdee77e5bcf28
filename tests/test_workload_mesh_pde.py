"""mesh_pde workload: P1 FEM heat conduction on random meshes, node-level GAT regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skfem")
pyg_nn = pytest.importorskip("torch_geometric.nn")

from torch import fx  # noqa: E402

from lumos.training import train  # noqa: E402
from lumos.workloads import get_workload  # noqa: E402
from lumos.workloads import mesh_pde as P  # noqa: E402

W = P.WORKLOAD


@pytest.fixture(scope="module")
def data():
    return P.generate("smoke", 0, False)


@pytest.fixture
def one_thread():
    """Small graph batches train faster on one thread (and do not fight over shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _all_graphs(d):
    return d.train.graphs + d.val.graphs


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(g[k], h[k]) for g, h in zip(a, b, strict=True) for k in ("x", "edge_index", "y")
    )


def _physical(d, g, name):
    k = d.feature_names.index(name)
    return g["x"][:, k].double() * d.info["x_std"][k] + d.info["x_mean"][k]


def test_registered():
    assert get_workload("mesh_pde") is W
    assert W.architecture == "gnn" and W.task == "regression"
    assert W.primary == "r2" and W.higher_is_better
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
    f = len(data.feature_names)
    assert data.feature_dim == -1 and data.feature_arg == "x"
    assert data.train.node_level and data.val.node_level
    assert len(data.train) + len(data.val) == P.SIZES["smoke"]["n_meshes"]
    assert data.true_features == list(range(len(P.TRUE_NAMES)))
    assert [data.feature_names[i] for i in data.nuisance_features] == ["heat_capacity_rho_cp"]
    assert len(data.noise_features) == P.N_NOISE
    for g in _all_graphs(data):
        n = g["x"].shape[0]
        assert g["x"].dtype == torch.float32 and g["x"].shape == (n, f)
        assert g["y"].dtype == torch.float32 and g["y"].shape == (n, 1)
        e = g["edge_index"]
        assert e.dtype == torch.long and e.shape[0] == 2 and int(e.max()) < n
        pairs = set(map(tuple, e.t().tolist()))
        assert pairs == {(j, i) for i, j in pairs} and all(i != j for i, j in pairs)
        # Dirichlet condition: u = T_amb(x, y) on the boundary nodes
        u = g["y"][:, 0].double() * data.info["y_std"] + data.info["y_mean"]
        on_edge = _physical(data, g, "boundary") > 0.5
        xy = torch.stack([_physical(data, g, "x"), _physical(data, g, "y")], 1).numpy()
        assert on_edge.sum() >= 4 * 8
        np.testing.assert_allclose(u[on_edge], P.ambient(xy)[on_edge.numpy()], atol=1e-4)
    x = torch.cat([g["x"] for g in data.train.graphs])
    y = torch.cat([g["y"] for g in data.train.graphs])
    assert torch.allclose(x.mean(0), torch.zeros(f), atol=1e-4)
    assert torch.allclose(x.std(0), torch.ones(f), atol=1e-3)
    assert abs(float(y.mean())) < 1e-4 and abs(float(y.std()) - 1) < 1e-3


def test_deterministic_and_seed_dependent(data):
    again = P.generate("smoke", 0, False)
    assert _same(data.train.graphs, again.train.graphs)
    assert _same(data.val.graphs, again.val.graphs)
    other = P.generate("smoke", 1, False)
    assert not _same(data.train.graphs, other.train.graphs)


def test_cache_round_trip(tmp_path):
    first = W.data("smoke", seed=0, cache_dir=tmp_path)
    assert list(tmp_path.glob("mesh_pde-*.pt"))
    second = W.data("smoke", seed=0, cache_dir=tmp_path)
    assert _same(first.train.graphs, second.train.graphs)
    assert _same(first.val.graphs, second.val.graphs)
    assert second.train.node_level and first.info == second.info


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


def test_smoke_training_beats_mean(data, one_thread):
    recipe = W.recipes["smoke"]
    torch.manual_seed(0)
    model = W.build_model(data)
    train(
        model,
        data.loader("train", recipe.batch_size, seed=0),
        epochs=recipe.epochs,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        loss_fn=W.loss,
    )
    inputs, y = data.val.batch(slice(0, len(data.val)))
    with torch.no_grad():
        pred = model(*inputs)
    assert pred.shape == y.shape
    assert W.metrics(torch.zeros_like(y), y)["r2"] < 0.05  # predicting the train mean
    assert W.metrics(pred, y)["r2"] > 0.75


def test_model_deterministic_and_fx_traceable(data):
    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, pyg_nn.MessagePassing) or super().is_leaf_module(m, name)

    torch.manual_seed(0)
    model = W.build_model(data).eval()
    torch.manual_seed(0)
    twin = W.build_model(data)
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True)
    )
    heads = [m.heads for m in model.modules() if isinstance(m, pyg_nn.GATConv)]
    assert len(heads) == 4 and min(heads) >= 2
    graph = Tracer().trace(model)
    gm = fx.GraphModule(model, graph)
    inputs, _ = data.example_batch("val", 3)
    with torch.no_grad():
        out = model(*inputs)
        assert out.shape == (inputs[0].shape[0], 1)
        assert torch.allclose(gm(*inputs), out)
