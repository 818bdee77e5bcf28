"""boiling_point workload: CRC boiling points on RDKit molecular graphs, GIN regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("chemicals")
pytest.importorskip("pandas")
pyg_nn = pytest.importorskip("torch_geometric.nn")

from torch import fx  # noqa: E402

from lumos.training import train  # noqa: E402
from lumos.workloads import boiling as B  # noqa: E402
from lumos.workloads import get_workload  # noqa: E402

W = B.WORKLOAD


@pytest.fixture(scope="module")
def data():
    return B.generate("smoke", 0, False)


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


def test_registered():
    assert get_workload("boiling_point") is W
    assert W.architecture == "gnn" and W.task == "regression"
    assert W.primary == "r2" and W.higher_is_better
    assert set(W.metrics(torch.randn(10, 1), torch.randn(10, 1))) >= {"r2", "mae"}


def test_shapes_and_partition(data):
    f = len(data.feature_names)
    assert data.feature_dim == -1 and data.feature_arg == "x"
    assert len(data.train) > 200 and len(data.val) > 40
    assert data.true_features == list(range(len(B.TRUE_NAMES)))
    assert [data.feature_names[i] for i in data.nuisance_features] == ["isotope_label_shift"]
    assert len(data.noise_features) == B.N_NOISE
    for g in _all_graphs(data):
        n = g["x"].shape[0]
        assert g["x"].dtype == torch.float32 and g["x"].shape == (n, f)
        assert g["edge_index"].dtype == torch.long and g["edge_index"].shape[0] == 2
        assert g["y"].shape == (1,) and g["y"].dtype == torch.float32
        e = g["edge_index"]
        assert int(e.max()) < n if e.numel() else n >= 1
        pairs = set(map(tuple, e.t().tolist()))
        assert pairs == {(j, i) for i, j in pairs}  # undirected: both directions stored
        assert all(i != j for i, j in pairs)
    x = torch.cat([g["x"] for g in data.train.graphs])
    y = torch.stack([g["y"] for g in data.train.graphs])
    varying = x.std(0) > 1e-3
    assert torch.allclose(x.mean(0), torch.zeros(f), atol=1e-4)
    assert torch.allclose(x.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-3)
    assert abs(float(y.mean())) < 1e-4 and abs(float(y.std()) - 1) < 1e-3
    # targets map back to physical boiling points (K)
    tb = y * data.info["y_std"] + data.info["y_mean"]
    assert B.TB_RANGE[0] <= float(tb.min()) and float(tb.max()) <= B.TB_RANGE[1]


def test_deterministic_and_seed_dependent(data):
    again = B.generate("smoke", 0, False)
    assert _same(data.train.graphs, again.train.graphs)
    assert _same(data.val.graphs, again.val.graphs)
    other = B.generate("smoke", 1, False)
    assert not _same(data.train.graphs, other.train.graphs)


def test_cache_round_trip(tmp_path):
    first = W.data("smoke", seed=0, cache_dir=tmp_path)
    assert list(tmp_path.glob("boiling_point-*.pt"))
    second = W.data("smoke", seed=0, cache_dir=tmp_path)
    assert _same(first.train.graphs, second.train.graphs)
    assert _same(first.val.graphs, second.val.graphs)
    assert first.feature_names == second.feature_names
    assert first.info == second.info


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
    baseline = W.metrics(torch.zeros_like(y), y)["r2"]  # predicting the train mean
    assert baseline < 0.05
    assert W.metrics(pred, y)["r2"] > 0.6


def test_model_deterministic_and_fx_traceable(data):
    pools = (pyg_nn.global_mean_pool, pyg_nn.global_add_pool, pyg_nn.global_max_pool)

    class Tracer(fx.Tracer):
        def __init__(self):
            super().__init__(autowrap_functions=pools)

        def is_leaf_module(self, m, name):
            return isinstance(m, pyg_nn.MessagePassing) or super().is_leaf_module(m, name)

    torch.manual_seed(0)
    model = W.build_model(data).eval()
    torch.manual_seed(0)
    twin = W.build_model(data)
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True)
    )
    graph = Tracer().trace(model)
    gm = fx.GraphModule(model, graph)
    called = {n.target for n in graph.nodes if n.op == "call_function"}
    assert {pyg_nn.global_add_pool, pyg_nn.global_mean_pool} <= called
    assert sum(n.op == "call_module" and "convs" in str(n.target) for n in graph.nodes) == 4
    inputs, _ = data.example_batch("val", 8)
    with torch.no_grad():
        out = model(*inputs)
        assert out.shape == (8, 1)
        assert torch.allclose(gm(*inputs), out)
