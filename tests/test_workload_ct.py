"""ct_lesion workload: phantoms, low-dose scan + FBP, ground truth, model, smoke training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

from lumos.training import train  # noqa: E402
from lumos.workloads import ct, get_workload  # noqa: E402

WL = get_workload("ct_lesion")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions run faster on one thread, and far faster on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return WL.data("smoke", seed=0, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_registered_and_described():
    assert WL.name == "ct_lesion"
    assert WL.architecture == "cnn2d" and WL.task == "classification" and WL.primary == "auc"
    assert "skimage" in WL.requires


def test_ellipse_table_renders_skimage_template():
    """The unperturbed table is scikit-image's Shepp-Logan phantom (shipped, offline)."""
    from skimage.data import shepp_logan_phantom

    template = shepp_logan_phantom()  # 400 x 400, values in [0, 1]
    ours = ct.render(ct.SHEPP_LOGAN, template.shape[0], supersample=1)
    assert np.corrcoef(ours.ravel(), template.ravel())[0, 1] > 0.95
    assert np.mean(np.abs(ours - template) > 0.05) < 0.01


def test_shapes_dtypes_labels_and_partition(data):
    n = ct.SIZES["smoke"]["grid"]
    x, y = data.train.inputs[0], data.train.target
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert x.shape[1:] == (4, n, n) and y.shape[1:] == (1,)
    assert set(torch.unique(torch.cat([y, data.val.target])).tolist()) == {0.0, 1.0}
    assert data.info["positive_fraction"] == 0.5
    assert len(data.train) + len(data.val) == ct.SIZES["smoke"]["n"]
    assert data.feature_dim == 0
    assert data.true_features == [0] and data.feature_names[0] == "fbp_image"
    assert data.noise_features == [1, 2]
    assert data.nuisance_features == [3] and data.feature_names[3] == "calibration_map"
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)


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


def test_deterministic_per_seed_and_different_across_seeds(data):
    again = WL.generate("smoke", 0, False)
    assert torch.equal(again.train.inputs[0], data.train.inputs[0])
    assert torch.equal(again.train.target, data.train.target)
    other = WL.generate("smoke", 1, False)
    assert not torch.equal(other.train.inputs[0], data.train.inputs[0])


def test_cache_round_trip(tmp_path, data):
    import lumos.workloads.base as base

    base.cached("ct-roundtrip", tmp_path, lambda: data)
    back = base.cached("ct-roundtrip", tmp_path, lambda: pytest.fail("cache not used"))
    for sa, sb in ((data.train, back.train), (data.val, back.val)):
        assert torch.equal(sa.inputs[0], sb.inputs[0]) and torch.equal(sa.target, sb.target)
    assert back.feature_names == data.feature_names and back.info == data.info


def test_model_is_fx_traceable(data):
    torch.manual_seed(0)
    model = WL.build_model(data).eval()
    (x,), _ = data.example_batch("val", 4)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-6)
        assert model(x).shape == (4, 1)


def test_smoke_training_beats_chance(data):
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
    (x,), y = data.val.batch(slice(None))
    with torch.no_grad():
        m = WL.metrics(model(x), y)
    assert m["auc"] > 0.65, m  # 51 validation scans; measured 0.73
