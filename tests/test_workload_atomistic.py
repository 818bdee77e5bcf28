"""The atomistic_energy workload: EMT per-atom energies from Behler-Parrinello descriptors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("ase")

from lumos.workloads import atomistic as mod  # noqa: E402
from lumos.workloads import get_workload  # noqa: E402
from workload_checks import (  # noqa: E402
    all_rows,
    check_deterministic_and_cached,
    check_fx_traceable,
    check_imports_lazy,
    check_partition,
    one_thread,  # noqa: F401 (autouse)
    seeded_model,
    smoke_predictions,
)

WL = get_workload("atomistic_energy")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return WL.data("smoke", seed=0, cache_dir=tmp_path_factory.mktemp("cache"))


def test_shapes_dtypes_and_partition(data):
    names, angular = mod.feature_names()
    check_partition(data, len(names), ["thermostat_T_label"], n_noise=8)
    xt, yt = all_rows(data.train)
    xv, yv = all_rows(data.val)
    n_feat = len(data.feature_names)
    assert xt.shape[1] == xv.shape[1] == n_feat and yt.shape[1] == yv.shape[1] == 1
    assert len(xt) > 300 and len(xv) > 50
    assert data.feature_dim == -1
    assert data.info["redundant_features"] == [data.feature_names.index(a) for a in angular]
    assert torch.isfinite(xt).all() and torch.isfinite(yt).all()
    assert torch.allclose(yt.std(0), torch.ones(1), atol=1e-4)  # standardised with train stats


def test_noise_uncorrelated_physics_correlated(data):
    xt, yt = all_rows(data.train)
    corr = torch.corrcoef(torch.cat([xt, yt], 1).T)[-1, :-1].abs()
    assert corr[data.noise_features].max() < 4.0 / len(xt) ** 0.5
    assert corr[data.true_features].max() > 0.5


def test_deterministic_cached_and_seed_dependent(data, tmp_path):
    other = check_deterministic_and_cached(WL, data, tmp_path)
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
    pred, yv = smoke_predictions(WL, data)
    m = WL.metrics(pred, yv)
    baseline = WL.metrics(torch.full_like(yv, float(data.train.target.mean())), yv)
    assert baseline["r2"] < 0.05
    assert m["r2"] > 0.9, m
    assert m["mae"] < 0.5 * baseline["mae"]


def test_model_is_fx_traceable(data):
    model = seeded_model(WL, data)
    check_fx_traceable(model, data.example_batch("val", 8)[0])
    assert all(isinstance(m, (torch.nn.Linear, torch.nn.SiLU)) for m in model)


def test_optional_packages_imported_lazily():
    # `import lumos.workloads.atomistic` must work without ASE: only lazy (in-function) imports
    check_imports_lazy(mod, {"__future__", "numpy", "torch"})
    assert "ase" in WL.requires
