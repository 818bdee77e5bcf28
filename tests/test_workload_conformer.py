"""conformer_energy workload: MMFF94 energies of MC-sampled conformers, GCN regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pyg_nn = pytest.importorskip("torch_geometric.nn")

from lumos.workloads import conformer as C  # noqa: E402
from workload_checks import (  # noqa: E402
    check_deterministic_and_cached,
    check_fx_traceable,
    check_graphs,
    check_partition,
    check_registered,
    one_thread,  # noqa: F401 (autouse)
    pyg_tracer,
    seeded_model,
    smoke_predictions,
)

W = C.WORKLOAD
TINY = {"n_molecules": 5, "conformers": 2, "sweeps": 5}


@pytest.fixture(scope="module")
def data():
    return C.generate("smoke", 0, False)


@pytest.fixture
def tiny(monkeypatch):
    """A few molecules, so the generator can be run several times cheaply."""
    monkeypatch.setitem(C.SIZES, "smoke", TINY)


def _all_graphs(d):
    return d.train.graphs + d.val.graphs


def test_registered():
    check_registered(W, "conformer_energy", "gnn", "regression", "r2")
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
    nuisance = ["kinetic_energy_300K"]
    check_partition(data, len(C.TRUE_NAMES), nuisance, C.N_NOISE, constant_columns=True)
    check_graphs(data)
    assert data.feature_dim == -1
    cfg = C.SIZES["smoke"]
    assert data.info["n_molecules"] == cfg["n_molecules"]
    assert len(data.train) + len(data.val) <= cfg["n_molecules"] * cfg["conformers"]
    assert len(data.train) + len(data.val) >= cfg["n_molecules"] * 2
    train_m, val_m = set(data.info["train_molecules"]), set(data.info["val_molecules"])
    assert not train_m & val_m and len(train_m | val_m) == data.info["n_molecules"]
    for g in _all_graphs(data):
        pairs = set(map(tuple, g["edge_index"].t().tolist()))
        assert len(pairs) // 2 >= g["x"].shape[0] - 1  # one molecule: a connected bond graph
    y = torch.stack([g["y"] for g in data.train.graphs])
    assert abs(float(y.mean())) < 1e-4 and abs(float(y.std()) - 1) < 1e-3


def test_deterministic_cached_and_seed_dependent(tiny, tmp_path):
    a = C.generate("smoke", 0, False)
    c = check_deterministic_and_cached(W, a, tmp_path)
    assert a.info["smiles"] != c.info["smiles"]


def test_feature_ground_truth(data):
    graphs = _all_graphs(data)
    y = np.array([g["y"].item() for g in graphs])
    mean_x = np.stack([g["x"].mean(0).numpy() for g in graphs])
    for k in data.noise_features + data.nuisance_features:
        assert abs(np.corrcoef(mean_x[:, k], y)[0, 1]) < 0.35
    # electrostatics dominate MMFF94 energies across molecules
    k = data.feature_names.index("coulomb_site")
    assert np.corrcoef(mean_x[:, k], y)[0, 1] > 0.6


def test_smoke_training_beats_mean(data):
    pred, y = smoke_predictions(W, data)
    assert W.metrics(torch.zeros_like(y), y)["r2"] < 0.1  # predicting the train mean
    assert W.metrics(pred, y)["r2"] > 0.5


def test_model_deterministic_and_fx_traceable(data):
    model = seeded_model(W, data)
    inputs, _ = data.example_batch("val", 8)
    traced, out = check_fx_traceable(model, inputs, pyg_tracer(), atol=1e-8)
    called = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    assert pyg_nn.global_mean_pool in called
    assert out.shape == (8, 1)
