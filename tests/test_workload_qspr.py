"""The critical_temperature workload: real Tc data (chemicals) and RDKit descriptors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("chemicals")
pytest.importorskip("rdkit")

from lumos.workloads import get_workload  # noqa: E402
from lumos.workloads import qspr as mod  # noqa: E402
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

WL = get_workload("critical_temperature")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return WL.data("smoke", seed=0, cache_dir=tmp_path_factory.mktemp("cache"))


def test_shapes_dtypes_and_partition(data):
    shuffled = ["MolWt_shuffled", "TPSA_shuffled"]
    # (a descriptor can be constant on the small smoke subset, e.g. a rare group count)
    check_partition(data, len(mod.feature_names()), shuffled, n_noise=8, constant_columns=True)
    xt, yt = all_rows(data.train)
    xv, yv = all_rows(data.val)
    n_feat = len(data.feature_names)
    assert xt.shape == (len(yt), n_feat) and xv.shape == (len(yv), n_feat) and yt.shape[1] == 1
    assert len(xt) + len(xv) == data.info["n_molecules"] > 150
    assert data.feature_dim == -1
    assert torch.isfinite(xt).all() and torch.isfinite(xv).all()
    # one row per 2D structure, and no molecule on both sides of the split
    smiles_t, smiles_v = data.info["smiles_train"], data.info["smiles_val"]
    assert len(set(smiles_t) | set(smiles_v)) == len(smiles_t) + len(smiles_v)
    tc = torch.cat([yt, yv]) * data.info["y_std"] + data.info["y_mean"]
    assert mod.TC_RANGE[0] <= tc.min() and tc.max() <= mod.TC_RANGE[1]


def test_shuffled_copies_are_permutations(data):
    x_all = torch.cat([all_rows(data.train)[0], all_rows(data.val)[0]])
    raw = physical_inputs(data, x_all).double()
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
    xt, yt = all_rows(data.train)
    # (a descriptor constant on the small smoke subset, e.g. a rare group count, gives nan)
    corr = torch.corrcoef(torch.cat([xt, yt], 1).T)[-1, :-1].abs().nan_to_num(0.0)
    assert corr[data.irrelevant_features].max() < 4.0 / len(xt) ** 0.5
    assert corr[data.feature_names.index("MolWt")] > 0.4
    assert corr[data.true_features].max() > 0.6


def test_deterministic_cached_and_seed_dependent(data, tmp_path):
    other = check_deterministic_and_cached(WL, data, tmp_path)
    assert other.info["smiles_train"] != data.info["smiles_train"]


def test_smoke_training_beats_mean_predictor(data):
    pred, yv = smoke_predictions(WL, data)
    m = WL.metrics(pred, yv)
    baseline = WL.metrics(torch.full_like(yv, float(data.train.target.mean())), yv)
    assert baseline["r2"] < 0.1
    assert m["r2"] > 0.7, m
    assert m["mae"] < 0.6 * baseline["mae"]


def test_model_is_fx_traceable(data):
    check_fx_traceable(seeded_model(WL, data), data.example_batch("val", 8)[0])


def test_optional_packages_imported_lazily():
    check_imports_lazy(mod, {"__future__", "numpy", "torch"})
    assert {"chemicals", "rdkit"} <= set(WL.requires)
