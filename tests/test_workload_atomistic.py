"""The atomistic_energy workload: EMT per-atom energies from Behler-Parrinello descriptors."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ase")

from lumos.training import train  # noqa: E402
from lumos.workloads import atomistic as mod  # noqa: E402
from lumos.workloads import get_workload  # noqa: E402

WL = get_workload("atomistic_energy")


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


def test_shapes_dtypes_and_partition(data):
    xt, yt = _all(data.train)
    xv, yv = _all(data.val)
    n_feat = len(data.feature_names)
    assert xt.dtype == yt.dtype == torch.float32
    assert xt.shape[1] == xv.shape[1] == n_feat and yt.shape[1] == yv.shape[1] == 1
    assert len(xt) > 300 and len(xv) > 50
    assert data.feature_arg == "x" and data.feature_dim == -1
    names, angular = mod.feature_names()
    assert data.true_features == list(range(len(names)))
    assert [data.feature_names[i] for i in data.nuisance_features] == ["thermostat_T_label"]
    assert len(data.noise_features) == 8
    assert data.info["redundant_features"] == [data.feature_names.index(a) for a in angular]
    assert torch.isfinite(xt).all() and torch.isfinite(yt).all()
    # standardised with train statistics
    assert torch.allclose(xt.mean(0), torch.zeros(n_feat), atol=1e-4)
    assert torch.allclose(yt.std(0), torch.ones(1), atol=1e-4)


def test_noise_uncorrelated_physics_correlated(data):
    xt, yt = _all(data.train)
    corr = torch.corrcoef(torch.cat([xt, yt], 1).T)[-1, :-1].abs()
    assert corr[data.noise_features].max() < 4.0 / len(xt) ** 0.5
    assert corr[data.true_features].max() > 0.5


def test_deterministic_cached_and_seed_dependent(data, cache):
    again = WL.data("smoke", seed=0, cache_dir=cache)  # read back from the cache
    fresh = WL.generate("smoke", 0, False)
    other = WL.generate("smoke", 1, False)
    assert list(cache.glob("atomistic_energy-v*-smoke-seed0.pt"))
    for d in (again, fresh):
        for a, b in ((data.train, d.train), (data.val, d.val)):
            assert torch.equal(a.inputs[0], b.inputs[0]) and torch.equal(a.target, b.target)
        assert d.info == data.info and d.feature_names == data.feature_names
    assert other.train.target.shape != data.train.target.shape or not torch.equal(
        other.train.target, data.train.target
    )


def _reference_descriptors(atoms) -> np.ndarray:
    """Slow, loop-based Behler-Parrinello functions (explicit periodic images)."""
    pos, cell = atoms.get_positions(), atoms.cell.array
    species = [mod.SPECIES.index(s) for s in atoms.get_chemical_symbols()]
    shifts = np.array([[a, b, c] for a in range(-3, 4) for b in range(-3, 4) for c in range(-3, 4)])
    out = []
    for i in range(len(atoms)):
        nbr = []  # (vector, species) of every image within the radial cutoff
        for j in range(len(atoms)):
            for s in shifts:
                v = pos[j] + s @ cell - pos[i]
                r = np.linalg.norm(v)
                if 1e-8 < r < mod.R_CUT_RADIAL:
                    nbr.append((v, species[j]))
        row = list(np.eye(3)[species[i]])
        g2 = np.zeros((3, len(mod.G2_PARAMS)))
        for v, sp in nbr:
            r = np.linalg.norm(v)
            for k, (eta, rs) in enumerate(mod.G2_PARAMS):
                g2[sp, k] += np.exp(-eta * (r - rs) ** 2) * mod._cutoff(r, mod.R_CUT_RADIAL)
        row += list(g2.ravel())
        near = [v for v, _ in nbr if np.linalg.norm(v) < mod.R_CUT_ANGULAR]
        ang = np.zeros(len(mod.G4_PARAMS) + len(mod.G5_PARAMS))
        rc = mod.R_CUT_ANGULAR
        for a, va in enumerate(near):
            for b, vb in enumerate(near):
                if a == b:
                    continue
                rij, rik, rjk = np.linalg.norm(va), np.linalg.norm(vb), np.linalg.norm(vb - va)
                cos = va @ vb / (rij * rik)
                fc = mod._cutoff(rij, rc) * mod._cutoff(rik, rc)
                for k, (eta, z, lam) in enumerate(mod.G4_PARAMS):
                    e = np.exp(-eta * (rij**2 + rik**2 + rjk**2)) * mod._cutoff(rjk, rc)
                    ang[k] += 2.0 ** (1 - z) * (1 + lam * cos) ** z * e * fc
                for k, (eta, z, lam) in enumerate(mod.G5_PARAMS):
                    e = np.exp(-eta * (rij**2 + rik**2))
                    ang[len(mod.G4_PARAMS) + k] += 2.0 ** (1 - z) * (1 + lam * cos) ** z * e * fc
        out.append(row + list(ang))
    return np.array(out)


def test_symmetry_functions_match_reference_and_are_invariant():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)  # 4 atoms: many periodic images
    atoms.set_chemical_symbols(["Cu", "Au", "Pt", "Au"])
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.02 * np.array([[1, 0.5, 0], [0.5, -1, 0],
                   [0, 0, 0.5]])), scale_atoms=True)  # fmt: skip
    atoms.positions += np.random.default_rng(0).normal(0, 0.08, atoms.positions.shape)
    got = mod.symmetry_functions(atoms)
    assert got.shape == (4, len(mod.feature_names()[0]))
    np.testing.assert_allclose(got, _reference_descriptors(atoms), rtol=1e-9, atol=1e-12)
    # rigid rotation + translation: same descriptors; permuted atoms: permuted rows
    rotated = atoms.copy()
    rotated.rotate(37, "x", rotate_cell=True)
    rotated.rotate(-61, (1, 1, 0), rotate_cell=True)
    rotated.translate([0.3, -1.1, 2.0])
    np.testing.assert_allclose(mod.symmetry_functions(rotated), got, rtol=1e-9, atol=1e-12)
    perm = [2, 0, 3, 1]
    np.testing.assert_allclose(mod.symmetry_functions(atoms[perm]), got[perm], rtol=1e-9)


def test_smoke_training_beats_mean_predictor(data):
    recipe = WL.recipes["smoke"]
    torch.manual_seed(0)
    model = WL.build_model(data)
    train(model, data.loader("train", recipe.batch_size, seed=0), epochs=recipe.epochs,
          loss_fn=WL.loss, lr=recipe.lr, weight_decay=recipe.weight_decay)  # fmt: skip
    xv, yv = _all(data.val)
    with torch.no_grad():
        m = WL.metrics(model(xv), yv)
        baseline = WL.metrics(torch.full_like(yv, float(data.train.target.mean())), yv)
    assert baseline["r2"] < 0.05
    assert m["r2"] > 0.9, m
    assert m["mae"] < 0.5 * baseline["mae"]


def test_model_is_fx_traceable(data):
    torch.manual_seed(0)
    model = WL.build_model(data).eval()
    traced = torch.fx.symbolic_trace(model)
    (x,), _ = data.example_batch("val", 8)
    assert torch.equal(traced(x), model(x))
    assert all(isinstance(m, (torch.nn.Linear, torch.nn.SiLU)) for m in model)


def test_optional_packages_imported_lazily():
    # `import lumos.workloads.atomistic` must work without ASE: only lazy (in-function) imports
    tree = ast.parse(Path(mod.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert names <= {"__future__", "numpy", "torch"}, names
    assert "ase" in WL.requires
