"""The alloy_mixing workload: EMT mixing energies of random FCC alloys from composition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("ase")

from lumos.workloads import alloy as mod  # noqa: E402
from lumos.workloads import get_workload  # noqa: E402
from workload_checks import (  # noqa: E402
    all_rows,
    check_deterministic_and_cached,
    check_fx_traceable,
    check_imports_lazy,
    check_partition,
    one_thread,  # noqa: F401 (autouse)
    physical_inputs,
    seeded_model,
    smoke_predictions,
)

WL = get_workload("alloy_mixing")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return WL.data("smoke", seed=0, cache_dir=tmp_path_factory.mktemp("cache"))


def test_shapes_dtypes_and_partition(data):
    check_partition(data, len(mod.feature_names()), ["specimen_mass_g"], n_noise=8)
    xt, yt = all_rows(data.train)
    xv, yv = all_rows(data.val)
    n_feat = len(data.feature_names)
    assert xt.shape == (len(yt), n_feat) and xv.shape == (len(yv), n_feat)
    assert yt.shape[1] == 1 and len(xt) + len(xv) == mod.SIZES["smoke"][0]
    assert data.feature_dim == -1
    assert torch.allclose(yt.std(0), torch.ones(1), atol=1e-4)


def test_composition_columns_are_consistent(data):
    x_all = torch.cat([all_rows(data.train)[0], all_rows(data.val)[0]])
    raw = physical_inputs(data, x_all).double()
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
    xt, yt = all_rows(data.train)
    corr = torch.corrcoef(torch.cat([xt, yt], 1).T)[-1, :-1].abs()
    assert corr[data.irrelevant_features].max() < 0.45  # 77 samples: |r| < 0.45 by chance
    assert corr[data.true_features].max() > 0.5


def test_deterministic_cached_and_seed_dependent(data, tmp_path):
    other = check_deterministic_and_cached(WL, data, tmp_path)
    assert not torch.equal(other.train.target, data.train.target)


def test_smoke_training_beats_mean_predictor(data):
    pred, yv = smoke_predictions(WL, data)
    m = WL.metrics(pred, yv)
    baseline = WL.metrics(torch.full_like(yv, float(data.train.target.mean())), yv)
    assert baseline["r2"] < 0.1
    assert m["r2"] > 0.6, m
    assert m["mae"] < 0.6 * baseline["mae"]


def test_model_is_fx_traceable(data):
    check_fx_traceable(seeded_model(WL, data), data.example_batch("val", 8)[0])


def test_optional_packages_imported_lazily():
    check_imports_lazy(mod, {"__future__", "functools", "numpy", "torch"})
    assert "ase" in WL.requires
