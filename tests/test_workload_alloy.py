"""The alloy_mixing workload: EMT mixing energies of random FCC alloys from composition."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ase")

from lumos.training import train  # noqa: E402
from lumos.workloads import alloy as mod  # noqa: E402
from lumos.workloads import get_workload  # noqa: E402

WL = get_workload("alloy_mixing")


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
    """Undo the input standardisation with the scalers recorded in ``info``."""
    return x * torch.tensor(data.info["x_std"]) + torch.tensor(data.info["x_mean"])


def test_shapes_dtypes_and_partition(data):
    xt, yt = _all(data.train)
    xv, yv = _all(data.val)
    n_feat = len(data.feature_names)
    assert xt.dtype == yt.dtype == torch.float32
    assert xt.shape == (len(yt), n_feat) and xv.shape == (len(yv), n_feat)
    assert yt.shape[1] == 1 and len(xt) + len(xv) == mod.SIZES["smoke"][0]
    assert data.feature_dim == -1
    assert data.true_features == list(range(len(mod.feature_names())))
    assert [data.feature_names[i] for i in data.nuisance_features] == ["specimen_mass_g"]
    assert len(data.noise_features) == 8
    assert torch.allclose(xt.mean(0), torch.zeros(n_feat), atol=1e-4)
    assert torch.allclose(yt.std(0), torch.ones(1), atol=1e-4)


def test_composition_columns_are_consistent(data):
    raw = _raw(data, torch.cat([_all(data.train)[0], _all(data.val)[0]])).double()
    n_el = len(mod.ELEMENTS)
    x = raw[:, :n_el]
    assert torch.allclose(x.sum(1), torch.ones(len(x), dtype=x.dtype), atol=1e-5)
    counts = x * 4 * mod.REPEAT**3
    assert torch.allclose(counts, counts.round(), atol=1e-3)  # whole atoms on 32 sites
    n_comp = raw[:, data.feature_names.index("n_components")]
    assert torch.equal(n_comp.round(), (x > 1e-6).sum(1).double())
    assert n_comp.min() >= 2 and n_comp.max() <= 5
    # recomputing the features from the fractions gives the stored columns
    feats = mod.composition_features(x.round(decimals=6).numpy(), mod.element_properties())
    np.testing.assert_allclose(raw[:, : feats.shape[1]].numpy(), feats, rtol=1e-4, atol=1e-4)


def test_pure_element_has_zero_mixing_energy():
    from ase.build import bulk
    from ase.calculators.emt import EMT

    refs = mod._pure_references()
    for e in ("Ni", "Ag", "Al"):
        energy, a, b = refs[e]
        assert 0.1 < b < 3.0  # eV/A^3: 16-480 GPa
        # off-equilibrium start: the harmonic volume relaxation recovers the reference energy
        atoms = bulk(e, "fcc", a=a * 1.004, cubic=True).repeat(mod.REPEAT)
        atoms.calc = EMT()
        relaxed = mod.relaxed_energy(atoms, b)
        unrelaxed = atoms.get_potential_energy() / len(atoms)
        assert unrelaxed - energy > 1e-4
        assert abs(relaxed - energy) < 0.1 * (unrelaxed - energy)
    x = np.eye(len(mod.ELEMENTS))[[0, 3]]
    f = mod.composition_features(x, mod.element_properties())
    stds = [mod.feature_names().index(f"std_{p}") for p in mod.PROPERTIES]
    assert np.all(f[:, stds] == 0) and np.all(f[:, -1] == 0)  # no spread, no entropy


def test_noise_uncorrelated_composition_correlated(data):
    xt, yt = _all(data.train)
    corr = torch.corrcoef(torch.cat([xt, yt], 1).T)[-1, :-1].abs()
    assert corr[data.irrelevant_features].max() < 0.45  # 77 samples: |r| < 0.45 by chance
    assert corr[data.true_features].max() > 0.5


def test_deterministic_cached_and_seed_dependent(data, cache):
    again = WL.data("smoke", seed=0, cache_dir=cache)  # read back from the cache
    fresh = WL.generate("smoke", 0, False)
    other = WL.generate("smoke", 1, False)
    assert list(cache.glob("alloy_mixing-v*-smoke-seed0.pt"))
    for d in (again, fresh):
        for a, b in ((data.train, d.train), (data.val, d.val)):
            assert torch.equal(a.inputs[0], b.inputs[0]) and torch.equal(a.target, b.target)
        assert d.info == data.info
    assert not torch.equal(other.train.target, data.train.target)


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
    assert m["r2"] > 0.6, m
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
    assert names <= {"__future__", "functools", "numpy", "torch"}, names
    assert "ase" in WL.requires
