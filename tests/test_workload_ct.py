"""ct_lesion workload: phantoms, low-dose scan + FBP, ground truth, model, smoke training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

from lumos.workloads import ct, get_workload  # noqa: E402
from workload_checks import (  # noqa: E402
    check_deterministic_and_cached,
    check_fx_traceable,
    check_partition,
    check_registered,
    one_thread,  # noqa: F401 (autouse)
    seeded_model,
    smoke_predictions,
)

WL = get_workload("ct_lesion")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return WL.data("smoke", seed=0, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_registered_and_described():
    check_registered(WL, "ct_lesion", "cnn2d", "classification", "auc")
    assert "skimage" in WL.requires


def test_ellipse_table_renders_skimage_template():
    """The unperturbed table is scikit-image's Shepp-Logan phantom (shipped, offline)."""
    from skimage.data import shepp_logan_phantom

    template = shepp_logan_phantom()  # 400 x 400, values in [0, 1]
    ours = ct.render(ct.SHEPP_LOGAN, template.shape[0], supersample=1)
    assert np.corrcoef(ours.ravel(), template.ravel())[0, 1] > 0.95
    assert np.mean(np.abs(ours - template) > 0.05) < 0.01


def test_shapes_dtypes_labels_and_partition(data):
    check_partition(data, 1, ["calibration_map"], n_noise=2)
    n = ct.SIZES["smoke"]["grid"]
    x, y = data.train.inputs[0], data.train.target
    assert x.shape[1:] == (4, n, n) and y.shape[1:] == (1,)
    assert set(torch.unique(torch.cat([y, data.val.target])).tolist()) == {0.0, 1.0}
    assert data.info["positive_fraction"] == 0.5
    assert len(data.train) + len(data.val) == ct.SIZES["smoke"]["n"]
    assert data.feature_dim == 0
    assert data.feature_names[0] == "fbp_image"
    assert data.noise_features == [1, 2]
    assert data.nuisance_features == [3]


def test_lesion_changes_phantom_and_reconstruction_only_inside_the_head():
    n = 32
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    healthy = ct.render(ct.random_phantom(rng_a, lesion=False), n)
    sick = ct.render(ct.random_phantom(rng_b, lesion=True), n)
    diff = sick - healthy
    assert diff.min() >= 0 and 0 < diff.max() <= ct.SIZES["full"]["contrast"][1] + 1e-9
    brain = healthy > 0.05  # the lesion sits inside the skull
    assert diff[~brain].sum() < 0.2 * diff.sum()
    # noiseless scan (huge dose): the reconstructions differ where the lesion is
    circle = ct.inside_circle(n)
    ra = ct.scan(healthy * circle, np.random.default_rng(0), i0=1e12)
    rb = ct.scan(sick * circle, np.random.default_rng(0), i0=1e12)
    where = diff > 0.5 * diff.max()
    assert (rb - ra)[where].mean() > 3 * np.abs(rb - ra)[~brain].mean()
    assert np.corrcoef(ra.ravel(), healthy.ravel())[0, 1] > 0.9


def test_irrelevant_channels_carry_no_label_signal(data):
    x, y = data.train.inputs[0], data.train.target[:, 0]
    yc = y - y.mean()
    for c in data.irrelevant_features:
        for stat in (x[:, c].mean(dim=(1, 2)), x[:, c].std(dim=(1, 2)), x[:, c].amax(dim=(1, 2))):
            s = stat - stat.mean()
            corr = float((s * yc).sum() / (s.norm() * yc.norm()))
            assert abs(corr) < 0.3, (data.feature_names[c], corr)


def test_deterministic_cached_and_different_across_seeds(data, tmp_path):
    other = check_deterministic_and_cached(WL, data, tmp_path)
    assert not torch.equal(other.train.inputs[0], data.train.inputs[0])


def test_model_is_fx_traceable(data):
    _, out = check_fx_traceable(seeded_model(WL, data), data.example_batch("val", 4)[0], atol=1e-6)
    assert out.shape == (4, 1)


def test_smoke_training_beats_chance(data):
    pred, y = smoke_predictions(WL, data)
    m = WL.metrics(pred, y)
    assert m["auc"] > 0.65, m  # 51 validation scans; measured 0.73
