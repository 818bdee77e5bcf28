"""The critical_temperature workload: real Tc data (chemicals) and RDKit descriptors."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("chemicals")
pytest.importorskip("rdkit")

from lumos.training import train  # noqa: E402
from lumos.workloads import get_workload  # noqa: E402
from lumos.workloads import qspr as mod  # noqa: E402

WL = get_workload("critical_temperature")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # small MLPs on a shared 2-core machine: extra intra-op threads only contend
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def data(cache):
    return WL.data("smoke", seed=0, cache_dir=cache)


def _all(split):
    (x,), y = split.batch(slice(None))
    return x, y


def _raw(data, x):
    return x * torch.tensor(data.info["x_std"]) + torch.tensor(data.info["x_mean"])


def test_shapes_dtypes_and_partition(data):
    xt, yt = _all(data.train)
    xv, yv = _all(data.val)
    n_feat = len(data.feature_names)
    assert xt.dtype == yt.dtype == torch.float32
    assert xt.shape == (len(yt), n_feat) and xv.shape == (len(yv), n_feat) and yt.shape[1] == 1
    assert len(xt) + len(xv) == data.info["n_molecules"] > 150
    assert data.feature_dim == -1
    assert data.true_features == list(range(len(mod.feature_names())))
    assert [data.feature_names[i] for i in data.nuisance_features] == [
        "MolWt_shuffled",
        "TPSA_shuffled",
    ]
    assert len(data.noise_features) == 8
    assert torch.isfinite(xt).all() and torch.isfinite(xv).all()
    assert torch.allclose(xt.mean(0), torch.zeros(n_feat), atol=1e-4)
    # one row per 2D structure, and no molecule on both sides of the split
    smiles_t, smiles_v = data.info["smiles_train"], data.info["smiles_val"]
    assert len(set(smiles_t) | set(smiles_v)) == len(smiles_t) + len(smiles_v)
    tc = torch.cat([yt, yv]) * data.info["y_std"] + data.info["y_mean"]
    assert mod.TC_RANGE[0] <= tc.min() and tc.max() <= mod.TC_RANGE[1]


def test_shuffled_copies_are_permutations(data):
    raw = _raw(data, torch.cat([_all(data.train)[0], _all(data.val)[0]])).double()
    for name in mod.SHUFFLED:
        real = raw[:, data.feature_names.index(name)]
        fake = raw[:, data.feature_names.index(f"{name}_shuffled")]
        assert torch.allclose(real.sort().values, fake.sort().values, rtol=1e-4, atol=1e-3)
        assert not torch.allclose(real, fake)


def test_known_molecules():
    smiles, desc, tc = mod.load_molecules(
        {"64-17-5": "CCO", "7732-18-5": "O", "7647-14-5": "[Na+].[Cl-]", "71-43-2": "c1ccccc1"}
    )
    assert smiles == ["CCO", "c1ccccc1"]  # water (no carbon) and the salt are dropped
    np.testing.assert_allclose(tc, [514.0, 562.0], atol=3.0)  # K
    names = mod.feature_names()
    ethanol = dict(zip(names, desc[0], strict=True))
    assert abs(ethanol["MolWt"] - 46.07) < 0.01
    assert (ethanol["n_C"], ethanol["n_O"], ethanol["NumHDonors"], ethanol["fr_Al_OH"]) == (
        2,
        1,
        1,
        1,
    )
    assert dict(zip(names, desc[1], strict=True))["NumAromaticRings"] == 1


def test_noise_uncorrelated_descriptors_correlated(data):
    xt, yt = _all(data.train)
    # (a descriptor constant on the small smoke subset, e.g. a rare group count, gives nan)
    corr = torch.corrcoef(torch.cat([xt, yt], 1).T)[-1, :-1].abs().nan_to_num(0.0)
    assert corr[data.irrelevant_features].max() < 4.0 / len(xt) ** 0.5
    assert corr[data.feature_names.index("MolWt")] > 0.4
    assert corr[data.true_features].max() > 0.6


def test_deterministic_cached_and_seed_dependent(data, cache):
    again = WL.data("smoke", seed=0, cache_dir=cache)  # read back from the cache
    fresh = WL.generate("smoke", 0, False)
    other = WL.generate("smoke", 1, False)
    assert list(cache.glob("critical_temperature-v*-smoke-seed0.pt"))
    for d in (again, fresh):
        for a, b in ((data.train, d.train), (data.val, d.val)):
            assert torch.equal(a.inputs[0], b.inputs[0]) and torch.equal(a.target, b.target)
        assert d.info == data.info
    assert other.info["smiles_train"] != data.info["smiles_train"]


def test_smoke_training_beats_mean_predictor(data):
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
    xv, yv = _all(data.val)
    with torch.no_grad():
        m = WL.metrics(model(xv), yv)
        baseline = WL.metrics(torch.full_like(yv, float(data.train.target.mean())), yv)
    assert baseline["r2"] < 0.1
    assert m["r2"] > 0.7, m
    assert m["mae"] < 0.6 * baseline["mae"]


def test_model_is_fx_traceable(data):
    torch.manual_seed(0)
    model = WL.build_model(data).eval()
    traced = torch.fx.symbolic_trace(model)
    (x,), _ = data.example_batch("val", 8)
    assert torch.equal(traced(x), model(x))


def test_optional_packages_imported_lazily():
    tree = ast.parse(Path(mod.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert names <= {"__future__", "numpy", "torch"}, names
    assert {"chemicals", "rdkit"} <= set(WL.requires)
