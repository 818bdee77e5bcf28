"""Built-in physics laws: well-posed formulas, deterministic data, honest ground-truth metadata."""

from __future__ import annotations

import numpy as np
import pytest

from lumos.workloads.laws import LAWS, Law, RegressionData, make_law_data, train_val_split

LAW_NAMES = sorted(LAWS)


def _grid_and_random(law: Law, n: int = 4000, seed: int = 0) -> np.ndarray:
    """Random points plus every corner of the range box (where blow-ups would show)."""
    pts = law.sample(n, np.random.default_rng(seed))
    k = law.n_variables
    corners = np.array(
        [[law.ranges[j][(c >> j) & 1] for j in range(k)] for c in range(2**k)], dtype=np.float64
    )
    return np.concatenate([pts, corners], axis=0)


def test_at_least_eight_laws_with_three_to_six_variables() -> None:
    assert len(LAWS) >= 8
    for name, law in LAWS.items():
        assert law.name == name
        assert 3 <= len(law.variables) <= 6, name
        assert len(law.ranges) == len(law.variables), name
        assert len(set(law.variables)) == len(law.variables), name
        assert law.description
        for lo, hi in law.ranges:
            assert lo < hi


@pytest.mark.parametrize("name", LAW_NAMES)
def test_formula_finite_over_ranges(name: str) -> None:
    law = LAWS[name]
    x = _grid_and_random(law)
    y = law.formula(x)
    assert y.shape == (x.shape[0],)
    assert np.all(np.isfinite(y))
    # Well conditioned for an MLP: no target spanning many orders of magnitude.
    assert np.abs(y).max() < 100.0
    assert y.std() > 0


@pytest.mark.parametrize("name", LAW_NAMES)
def test_every_variable_contributes_materially(name: str) -> None:
    """Pinning any one variable at its range midpoint moves the target by > 2% of its std."""
    law = LAWS[name]
    x = law.sample(20000, np.random.default_rng(1))
    y = law.formula(x)
    std = y.std()
    for j, (lo, hi) in enumerate(law.ranges):
        pinned = x.copy()
        pinned[:, j] = 0.5 * (lo + hi)
        effect = np.abs(law.formula(pinned) - y).mean() / std
        assert effect > 0.02, f"{name}: variable {law.variables[j]!r} effect {effect:.4f}"


@pytest.mark.parametrize("name", LAW_NAMES)
def test_shapes_and_metadata(name: str) -> None:
    law = LAWS[name]
    data = make_law_data(name, n_samples=300, n_noise=5, seed=3)
    k = len(law.variables)
    assert isinstance(data, RegressionData)
    assert data.name == name
    assert data.X.shape == (300, k + 5) and data.X.dtype == np.float32
    assert data.y.shape == (300, 1) and data.y.dtype == np.float32
    assert len(data.feature_names) == k + 5
    assert sorted(data.true_features + data.noise_features) == list(range(k + 5))
    assert sorted(data.feature_names[i] for i in data.true_features) == sorted(law.variables)
    assert sorted(data.feature_names[i] for i in data.noise_features) == [
        f"noise_{i}" for i in range(5)
    ]
    np.testing.assert_allclose(data.X.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.X.std(axis=0), 1.0, atol=1e-4)
    assert abs(float(data.y.mean())) < 1e-5 and abs(float(data.y.std()) - 1.0) < 1e-4


def test_defaults_and_law_object() -> None:
    law = LAWS["drag"]
    data = make_law_data(law)
    assert data.X.shape == (4096, len(law.variables) + 12)
    assert data.name == "drag"


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    a = make_law_data("gravity", n_samples=200, n_noise=4, seed=7, noise_std=0.1)
    b = make_law_data("gravity", n_samples=200, n_noise=4, seed=7, noise_std=0.1)
    c = make_law_data("gravity", n_samples=200, n_noise=4, seed=8, noise_std=0.1)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert a.feature_names == b.feature_names
    assert a.true_features == b.true_features
    assert not np.array_equal(a.y, c.y)
    assert not np.allclose(a.X[:, a.noise_features[0]], c.X[:, c.noise_features[0]])


def test_shuffle_moves_columns_but_true_features_follow() -> None:
    name = "bernoulli"
    plain = make_law_data(name, n_samples=500, n_noise=10, seed=5, shuffle_columns=False)
    shuf = make_law_data(name, n_samples=500, n_noise=10, seed=5, shuffle_columns=True)
    k = len(LAWS[name].variables)
    assert plain.true_features == list(range(k))
    assert plain.feature_names[:k] == list(LAWS[name].variables)
    # Same seed: same rows and target, only the columns are permuted.
    np.testing.assert_array_equal(plain.y, shuf.y)
    assert shuf.true_features != list(range(k))
    for col, fname in enumerate(shuf.feature_names):
        np.testing.assert_array_equal(shuf.X[:, col], plain.X[:, plain.feature_names.index(fname)])


@pytest.mark.parametrize("name", LAW_NAMES)
def test_true_columns_reproduce_target(name: str) -> None:
    """Un-standardizing the true columns and re-applying the law gives back y exactly."""
    law = LAWS[name]
    data = make_law_data(name, n_samples=400, n_noise=6, seed=11)
    raw = data.X.astype(np.float64) * data.x_std + data.x_mean
    by_name = {data.feature_names[i]: raw[:, i] for i in data.true_features}
    phys = np.stack([by_name[v] for v in law.variables], axis=1)
    y = (law.formula(phys) - data.y_mean) / data.y_std
    np.testing.assert_allclose(y, data.y[:, 0], atol=1e-4)


def test_label_noise_fraction() -> None:
    clean = make_law_data("ideal_gas", n_samples=20000, n_noise=0, seed=2)
    noisy = make_law_data("ideal_gas", n_samples=20000, n_noise=0, seed=2, noise_std=0.5)
    np.testing.assert_array_equal(clean.X, noisy.X)
    # Clean target has unit std; with noise of half its std the correlation is 1/sqrt(1.25).
    corr = np.corrcoef(clean.y[:, 0], noisy.y[:, 0])[0, 1]
    assert abs(corr - 1.0 / np.sqrt(1.25)) < 0.02


def test_no_noise_columns() -> None:
    data = make_law_data("kepler", n_samples=50, n_noise=0, seed=0)
    assert data.noise_features == []
    assert data.X.shape == (50, 3)


def test_train_val_split() -> None:
    data = make_law_data("drag", n_samples=1000, n_noise=3, seed=0)
    tr, va = train_val_split(data, 0.2, seed=0)
    assert tr.X.shape == (800, data.X.shape[1]) and va.X.shape == (200, data.X.shape[1])
    assert tr.y.shape == (800, 1) and va.y.shape == (200, 1)
    for part in (tr, va):
        assert part.feature_names == data.feature_names
        assert part.true_features == data.true_features
        assert part.noise_features == data.noise_features
        assert part.name == data.name
    # Disjoint and covering: together the rows are a permutation of the original ones.
    rows = np.concatenate([tr.X, va.X])
    np.testing.assert_array_equal(np.sort(rows[:, 0]), np.sort(data.X[:, 0]))
    tr2, va2 = train_val_split(data, 0.2, seed=0)
    np.testing.assert_array_equal(va.X, va2.X)
    _, va3 = train_val_split(data, 0.2, seed=1)
    assert not np.array_equal(va.X, va3.X)


def test_unknown_law_lists_available_names() -> None:
    with pytest.raises(KeyError) as info:
        make_law_data("perpetual_motion")
    msg = str(info.value)
    assert "perpetual_motion" in msg
    for name in LAWS:
        assert name in msg


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_samples": 1}, "n_samples"),
        ({"n_samples": 0}, "n_samples"),
        ({"n_noise": -1}, "n_noise"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"noise_std": float("nan")}, "noise_std"),
    ],
)
def test_argument_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_law_data("gravity", **kwargs)


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.5, 1.5])
def test_split_validation(frac: float) -> None:
    data = make_law_data("gravity", n_samples=10, n_noise=1)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(data, frac)


def test_law_rejects_mismatched_ranges() -> None:
    with pytest.raises(ValueError):
        Law("bad", "bad", ("a", "b"), ((0.0, 1.0),), lambda x: x[:, 0])
    with pytest.raises(ValueError):
        Law("bad", "bad", ("a",), ((1.0, 1.0),), lambda x: x[:, 0])
