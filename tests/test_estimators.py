"""scikit-learn estimators: the API contract (check_estimator), feature selection, compaction,
pipelines and the optional dependency."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pd = pytest.importorskip("pandas")

from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import lumos  # noqa: E402
from lumos import LumosClassifier, LumosRegressor  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny MLPs: on a shared machine, intra-op threads cost more than they give."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# small enough that the ~120 checks (a few hundred fits) run in seconds
TINY = dict(hidden=(16,), epochs=20, lr=1e-2, batch_size=32, random_state=0)


@parametrize_with_checks([LumosRegressor(**TINY), LumosClassifier(**TINY)])
def test_sklearn_api(estimator, check):
    check(estimator)


def planted(n=400, n_noise=6, seed=0):
    """y depends on columns a, b, c only; the rest is noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3 + n_noise))
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.5 * X[:, 1]
    columns = ["a", "b", "c"] + [f"noise{i}" for i in range(n_noise)]
    return pd.DataFrame(X, columns=columns), y


def test_selects_the_planted_features_and_keeps_pandas_names():
    X, y = planted(n=1000)
    reg = LumosRegressor(hidden=(32, 32), epochs=25, lr=5e-3, random_state=0).fit(X, y)
    kept = set(reg.selected_features_)
    assert {"a", "b", "c"} <= kept
    assert len(kept) <= 4, kept  # the noise columns are dropped
    assert list(reg.get_feature_names_out()) == list(reg.selected_features_)
    importances = reg.feature_importances_
    assert importances.sum() == pytest.approx(1.0)
    assert importances[:3].min() > 5 * importances[3:].max()  # the planted columns rank first
    assert len(set(np.round(importances[:3], 6))) == 3  # and are ranked among themselves
    assert reg.score(X, y) > 0.9
    assert list(reg.set_output(transform="pandas").transform(X).columns) == sorted(
        kept, key=list(X.columns).index
    )
    assert "a" in reg.report()


def with_proxies(n=1500, n_noise=6, seed=0, rho=0.9):
    """planted()'s law plus a weak true column d, and two proxies (rho=0.9) of a and b."""
    rng = np.random.default_rng(seed)
    X, y = planted(n, n_noise, seed)
    X["d"] = rng.normal(size=n)
    y = y + 0.25 * X["d"].to_numpy()
    for v in ("a", "b"):
        X[f"proxy_{v}"] = rho * X[v] + np.sqrt(1 - rho**2) * rng.normal(size=n)
    return X, 1e3 * y + 50.0  # arbitrary units


def test_confirmation_drops_proxies_and_keeps_a_weak_true_column():
    X, y = with_proxies()
    reg = LumosRegressor(hidden=(32, 32), epochs=30, lr=5e-3, random_state=0).fit(X, y)
    assert set(reg.selected_features_) == {"a", "b", "c", "d"}
    sel = reg.selection_
    assert sel["held_out_rows"] == 300
    assert set(sel["dropped"]) <= set(sel["tested"])
    kept = reg.get_support()
    assert (sel["z"][kept] >= 2).all() and (sel["z"][~kept] == 0).all()
    assert (sel["loss_rise"][kept] > 0).all()
    assert reg.score(X, y) > 0.9


def test_without_confirmation_every_row_trains_and_nothing_is_tested():
    X, y = with_proxies(n=600)
    reg = LumosRegressor(hidden=(16,), epochs=10, random_state=0, confirm=False).fit(X, y)
    assert reg.selection_ is None
    small = LumosRegressor(hidden=(16,), epochs=10, random_state=0).fit(X[:80], y[:80])
    assert small.selection_ is None  # too few rows to hold any out


def test_an_unstable_selection_is_flagged():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 30))
    y = 0.3 * X[:, 0] + rng.normal(size=150)  # a weak signal in few noisy rows
    with pytest.warns(lumos.LumosWarning, match="selection may be unstable"):
        reg = LumosRegressor(hidden=(16,), epochs=20, feature_penalty=0.01,
                             random_state=0).fit(X, y)
    assert reg.selection_["unstable"]


def test_compacted_model_is_plain_smaller_and_matches_predict():
    X, y = planted(seed=1)
    X = X.to_numpy() * 100.0 + 7.0  # unscaled inputs: the folded scaling must undo this
    y = 50.0 * y - 3.0
    reg = LumosRegressor(hidden=(32, 32), epochs=30, budget=0.2, random_state=0).fit(X, y)
    assert reg.n_params_ <= 0.2 * reg.n_params_dense_
    small = reg.compact()
    buffer = io.BytesIO()
    torch.save(small, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        out = reloaded(torch.tensor(X, dtype=torch.float32)).squeeze(1).double().numpy()
    np.testing.assert_allclose(out, reg.predict(X), rtol=1e-4, atol=1e-3 * np.abs(y).max())
    assert sum(p.numel() for p in small.parameters()) == reg.n_params_


def test_multi_output_regression_with_different_scales():
    X, y = planted(seed=2)
    Y = np.stack([1000.0 * y, 0.01 * X["a"].to_numpy()], axis=1)
    reg = LumosRegressor(hidden=(32,), epochs=40, lr=3e-3, budget=None, random_state=0)
    pred = reg.fit(X, Y).predict(X)
    assert pred.shape == Y.shape
    for k in range(2):  # each output is fitted in its own units
        r2 = 1 - ((pred[:, k] - Y[:, k]) ** 2).sum() / ((Y[:, k] - Y[:, k].mean()) ** 2).sum()
        assert r2 > 0.7, (k, r2)


def test_multiclass_with_string_labels():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(450, 6))
    labels = np.array(["low", "mid", "high"])
    y = labels[(X[:, 0] > -0.4).astype(int) + (X[:, 0] > 0.4).astype(int)]
    clf = LumosClassifier(hidden=(32,), epochs=40, lr=3e-3, random_state=0).fit(X, y)
    assert set(clf.classes_) == set(labels)
    assert clf.score(X, y) > 0.9
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert "x0" in clf.selected_features_
    with torch.no_grad():
        logits = clf.compact()(torch.tensor(X, dtype=torch.float32))
    np.testing.assert_array_equal(clf.classes_[logits.argmax(1).numpy()], clf.predict(X))


def test_grid_search_over_budget_in_a_pipeline():
    X, y = planted(n=300, seed=3)
    pipe = make_pipeline(StandardScaler(), LumosRegressor(hidden=(32,), epochs=15, random_state=0))
    grid = GridSearchCV(pipe, {"lumosregressor__budget": [0.1, None]}, cv=2).fit(X, y)
    assert grid.best_params_["lumosregressor__budget"] in (0.1, None)
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()
    small = pipe.set_params(lumosregressor__budget=0.1).fit(X, y)[-1]
    assert small.n_params_ <= 0.1 * small.n_params_dense_


def test_dense_mode_has_no_gates():
    X, y = planted(n=200, seed=4)
    reg = LumosRegressor(hidden=(16,), epochs=5, budget=None, feature_penalty=0).fit(X, y)
    assert reg.support_.all()
    assert reg.n_params_ == reg.n_params_dense_
    assert isinstance(reg.compact(), torch.nn.Sequential)


def test_random_state_reproduces_and_leaves_global_rng_alone():
    X, y = planted(n=200, seed=5)
    state = torch.random.get_rng_state()
    a = LumosRegressor(**TINY).fit(X, y).predict(X)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = LumosRegressor(**TINY).fit(X, y).predict(X)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"hidden": (16, 0)}, "hidden"),
        ({"hidden": "wide"}, "hidden"),
        ({"budget": 1.5}, "budget"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"feature_penalty": -0.1}, "feature_penalty"),
        ({"activation": "swish"}, "activation"),
        ({"device": "tpu:what"}, "device"),
        ({"confirm": "yes"}, "confirm"),
        ({"budget_on": "memory"}, "budget_on"),
    ],
)
def test_bad_parameters_raise_lumos_errors(params, needle):
    X, y = planted(n=50)
    with pytest.raises(lumos.LumosError, match=needle):
        LumosRegressor(**params).fit(X, y)


def test_verbose_prints_epochs(capsys):
    X, y = planted(n=50)
    LumosRegressor(hidden=(8,), epochs=2, verbose=2).fit(X, y)
    assert "epoch 2/2" in capsys.readouterr().out


def test_import_lumos_without_sklearn():
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import lumos\n"
        "assert 'LumosRegressor' not in lumos.__all__\n"
        "try:\n    lumos.LumosRegressor\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install" in out.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_and_predict_on_cuda():
    X, y = planted(n=200)
    reg = LumosRegressor(hidden=(16,), epochs=5, device="cuda", random_state=0).fit(X, y)
    assert next(reg.compact().parameters()).is_cuda
    assert np.isfinite(reg.predict(X)).all()
