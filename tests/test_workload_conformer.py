"""conformer_energy workload: MMFF94 energies of MC-sampled conformers, GCN regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pyg_nn = pytest.importorskip("torch_geometric.nn")

from torch import fx  # noqa: E402

from lumos.training import train  # noqa: E402
from lumos.workloads import conformer as C  # noqa: E402
from lumos.workloads import get_workload  # noqa: E402

W = C.WORKLOAD
TINY = {"n_molecules": 5, "conformers": 2, "sweeps": 5}


@pytest.fixture(scope="module")
def data():
    return C.generate("smoke", 0, False)


@pytest.fixture
def tiny(monkeypatch):
    """A few molecules, so the generator can be run several times cheaply."""
    monkeypatch.setitem(C.SIZES, "smoke", TINY)


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
    assert get_workload("conformer_energy") is W
    assert W.architecture == "gnn" and W.task == "regression"
    assert W.primary == "r2" and W.higher_is_better
    assert set(W.metrics(torch.randn(10, 1), torch.randn(10, 1))) >= {"r2", "mae"}


def test_metropolis_samples_the_temperature():
    """Cold runs stay near the MMFF minimum; hot runs climb by roughly (3/2) kT per atom."""
    from rdkit import Chem
    from rdkit.Chem import rdDistGeom
    from rdkit.Chem import rdForceFieldHelpers as FF

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    rdDistGeom.EmbedMolecule(mol, randomSeed=7)
    ff = FF.MMFFGetMoleculeForceField(mol, FF.MMFFGetMoleculeProperties(mol))
    ff.Minimize(maxIts=1000)
    x0 = np.array(ff.Positions()).reshape(-1, 3)
    e0 = ff.CalcEnergy()
    n = mol.GetNumAtoms()
    rise = {}
    for t in (50.0, 1500.0):
        _, e = C._metropolis(ff, x0.copy(), t, 200, np.random.default_rng(0))
        rise[t] = (e - e0) / (1.5 * C.K_B * t * n)
    assert rise[50.0] < 2.0
    assert 0.3 < rise[1500.0] < 2.0
    assert (1500.0 * rise[1500.0]) > 10 * (50.0 * rise[50.0])


def test_shapes_partition_and_split_by_molecule(data):
    f = len(data.feature_names)
    assert data.feature_dim == -1 and data.feature_arg == "x"
    assert data.true_features == list(range(len(C.TRUE_NAMES)))
    assert [data.feature_names[i] for i in data.nuisance_features] == ["kinetic_energy_300K"]
    assert len(data.noise_features) == C.N_NOISE
    cfg = C.SIZES["smoke"]
    assert data.info["n_molecules"] == cfg["n_molecules"]
    assert len(data.train) + len(data.val) <= cfg["n_molecules"] * cfg["conformers"]
    assert len(data.train) + len(data.val) >= cfg["n_molecules"] * 2
    train_m, val_m = set(data.info["train_molecules"]), set(data.info["val_molecules"])
    assert not train_m & val_m and len(train_m | val_m) == data.info["n_molecules"]
    for g in _all_graphs(data):
        n = g["x"].shape[0]
        assert g["x"].dtype == torch.float32 and g["x"].shape == (n, f)
        assert g["y"].shape == (1,) and g["y"].dtype == torch.float32
        e = g["edge_index"]
        assert e.dtype == torch.long and e.shape[0] == 2 and int(e.max()) < n
        pairs = set(map(tuple, e.t().tolist()))
        assert pairs == {(j, i) for i, j in pairs} and all(i != j for i, j in pairs)
        assert len(pairs) // 2 >= n - 1  # one molecule: a connected bond graph
    x = torch.cat([g["x"] for g in data.train.graphs])
    y = torch.stack([g["y"] for g in data.train.graphs])
    varying = x.std(0) > 1e-3
    assert torch.allclose(x.mean(0), torch.zeros(f), atol=1e-4)
    assert torch.allclose(x.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-3)
    assert abs(float(y.mean())) < 1e-4 and abs(float(y.std()) - 1) < 1e-3


def test_deterministic_and_seed_dependent(tiny):
    a = C.generate("smoke", 0, False)
    b = C.generate("smoke", 0, False)
    assert _same(a.train.graphs, b.train.graphs) and _same(a.val.graphs, b.val.graphs)
    assert a.info["smiles"] == b.info["smiles"]
    c = C.generate("smoke", 1, False)
    assert a.info["smiles"] != c.info["smiles"]


def test_cache_round_trip(tiny, tmp_path):
    first = W.data("smoke", seed=0, cache_dir=tmp_path)
    assert list(tmp_path.glob("conformer_energy-*.pt"))
    second = W.data("smoke", seed=0, cache_dir=tmp_path)
    assert _same(first.train.graphs, second.train.graphs)
    assert _same(first.val.graphs, second.val.graphs)
    assert first.info == second.info


def test_feature_ground_truth(data):
    graphs = _all_graphs(data)
    y = np.array([g["y"].item() for g in graphs])
    mean_x = np.stack([g["x"].mean(0).numpy() for g in graphs])
    for k in data.noise_features + data.nuisance_features:
        assert abs(np.corrcoef(mean_x[:, k], y)[0, 1]) < 0.35
    # electrostatics dominate MMFF94 energies across molecules
    k = data.feature_names.index("coulomb_site")
    assert np.corrcoef(mean_x[:, k], y)[0, 1] > 0.6


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
    assert W.metrics(torch.zeros_like(y), y)["r2"] < 0.1  # predicting the train mean
    assert W.metrics(pred, y)["r2"] > 0.5


def test_model_deterministic_and_fx_traceable(data):
    class Tracer(fx.Tracer):
        def __init__(self):
            super().__init__(autowrap_functions=(pyg_nn.global_mean_pool, pyg_nn.global_add_pool))

        def is_leaf_module(self, m, name):
            return isinstance(m, pyg_nn.MessagePassing) or super().is_leaf_module(m, name)

    torch.manual_seed(0)
    model = W.build_model(data).eval()
    torch.manual_seed(0)
    twin = W.build_model(data)
    pairs = zip(model.parameters(), twin.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    graph = Tracer().trace(model)
    gm = fx.GraphModule(model, graph)
    assert pyg_nn.global_mean_pool in {n.target for n in graph.nodes if n.op == "call_function"}
    inputs, _ = data.example_batch("val", 8)
    with torch.no_grad():
        out = model(*inputs)
        assert out.shape == (8, 1)
        assert torch.allclose(gm(*inputs), out)
