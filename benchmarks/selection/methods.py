"""The selection methods the benchmark compares, one function each.

Every method is ``select(X_train, y_train, seed) -> Selection``: raw training rows (``y`` in
arbitrary units; a method that wants a standardised target standardises it itself), a seed,
and back the kept column indices, one score per column (higher = more important), the wall
time and anything else worth recording. Methods registered with ``given_k=True`` also get the
true number of variables ``k`` (``select(X, y, seed, k=k)``) and keep their top ``k``: an
oracle advantage no self-selecting method has, marked as such in the results.

Register a new method with ``@method("name", "label")``; ``METHODS`` maps names to them.

**LUMOS** is :func:`select_lumos`, the first function below: the lead swaps the algorithm
behind it (estimator parameters in :data:`LUMOS_PARAMS`).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Selection:
    """What a method returns: kept columns, a score per column, seconds, anything else."""

    kept: list[int]
    scores: np.ndarray
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    fn: Callable[..., Selection]
    given_k: bool = False  # gets the true count k (oracle advantage)
    note: str = ""


METHODS: dict[str, Method] = {}


def method(name: str, label: str, given_k: bool = False, note: str = ""):
    """Register ``fn`` as a method; fills ``Selection.seconds`` with its wall time if unset."""

    def wrap(fn: Callable[..., Selection]) -> Callable[..., Selection]:
        @functools.wraps(fn)
        def timed(*args, **kwargs) -> Selection:
            start = time.perf_counter()
            sel = fn(*args, **kwargs)
            if not sel.seconds:
                sel.seconds = time.perf_counter() - start
            sel.kept = sorted(int(j) for j in sel.kept)
            sel.scores = np.asarray(sel.scores, dtype=np.float64)
            return sel

        METHODS[name] = Method(name, label, timed, given_k, note)
        return timed

    return wrap


# ---- LUMOS: the method under study ---------------------------------------------------------------
#: ``LumosRegressor`` parameters: the defaults a user gets (``epochs="auto"``, budget 0.25, ...)
LUMOS_PARAMS: dict = {"epochs": "auto"}
#: fitted attributes recorded, when the estimator has them, as its selection confidence:
#: these by name (``selection_``: what ``confirm=True`` found), and any other whose name holds
#: one of the hints (so a new ``feature_pvalues_`` shows up without a change here)
CONFIDENCE_ATTRS = ("selection_",)
CONFIDENCE_HINTS = ("confiden", "stabil", "uncertain", "pvalue", "p_value", "evidence")


@method("lumos", "LUMOS (LumosRegressor defaults)")
def select_lumos(X: np.ndarray, y: np.ndarray, seed: int) -> Selection:
    """``lumos.LumosRegressor`` as a user would run it: its selected features (``get_support``,
    the index form of ``selected_features_``) and ``feature_importances_``, plus any selection
    confidence it reports and the warnings it gives."""
    import lumos

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = lumos.LumosRegressor(random_state=seed, **LUMOS_PARAMS).fit(X, y)
    kept = [int(j) for j in est.get_support(indices=True)]
    extra = {"epochs": int(getattr(est, "epochs_", -1)), "n_params": int(est.n_params_),
             "n_params_dense": int(est.n_params_dense_)}
    confidence = {}
    for attr in sorted(vars(est)):
        if attr in CONFIDENCE_ATTRS or (attr.endswith("_") and not attr.startswith("_") and any(
                h in attr.lower() for h in CONFIDENCE_HINTS)):
            confidence[attr] = _jsonable(getattr(est, attr))
    if confidence:
        extra["confidence"] = confidence
    messages = sorted({str(w.message)[:300] for w in caught
                       if not issubclass(w.category, DeprecationWarning)})
    if messages:
        extra["warnings"] = messages
    return Selection(kept, np.asarray(est.feature_importances_), extra=extra)


# ---- self-selecting peers (benchmarks/peers/features.py runs them) -------------------------------
def _table(X: np.ndarray, y: np.ndarray):
    from benchmarks.peers.features import Table

    return Table(np.asarray(X, np.float64), np.asarray(y, np.float64).reshape(len(y), -1),
                 list(range(X.shape[1])), "the benchmark table")


#: STG optimiser steps (``benchmarks.peers.features.run_stg``'s default)
STG_STEPS = 3000


@method("stg", "STG (stg package)")
def select_stg(X: np.ndarray, y: np.ndarray, seed: int) -> Selection:
    """``stg.models.STGRegressionModel`` (lam 0.1, sigma 0.5) as in the peers benchmark; kept:
    the deterministic gate > 0; score: the gate value."""
    from benchmarks.peers.features import run_stg

    gates = np.asarray(run_stg(_table(X, y), seed, steps=STG_STEPS))
    return Selection(list(np.flatnonzero(gates > 0)), gates, extra={"steps": STG_STEPS})


@method("lassonet", "LassoNet (best val. on path)")
def select_lassonet(X: np.ndarray, y: np.ndarray, seed: int) -> Selection:
    """LassoNet's regularisation path (peers benchmark settings); kept: the path point with
    the lowest loss on a fifth of the training rows; score: LassoNet's path importance."""
    from benchmarks.peers.features import run_lassonet

    kept, importance, info = run_lassonet(_table(X, y), seed)
    return Selection(list(np.flatnonzero(kept)), importance, extra={"path": info})


# ---- rankings cut at the true count (oracle k) ---------------------------------------------------
def _top(scores: np.ndarray, k: int) -> list[int]:
    return [int(j) for j in np.argsort(-np.asarray(scores), kind="stable")[:k]]


@method("rf_at_k", "random forest @ true k", given_k=True)
def select_rf(X: np.ndarray, y: np.ndarray, seed: int, k: int) -> Selection:
    """Impurity importance of a 200-tree random forest (peers benchmark), top ``k``."""
    from benchmarks.peers.features import run_rf

    imp = np.asarray(run_rf(_table(X, y), seed))
    return Selection(_top(imp, k), imp)


@method("mi_at_k", "mutual information @ true k", given_k=True)
def select_mi(X: np.ndarray, y: np.ndarray, seed: int, k: int) -> Selection:
    """scikit-learn's kNN mutual information of each column with y (peers benchmark), top k."""
    from benchmarks.peers.features import run_mi

    mi = np.asarray(run_mi(_table(X, y), seed))
    return Selection(_top(mi, k), mi)


# ---- stability selection and knockoffs ---------------------------------------------------------
def _standardized(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = (X - X.mean(0)) / (X.std(0) + 1e-12)
    y = np.asarray(y, np.float64).ravel()
    return x, (y - y.mean()) / (y.std() + 1e-12)


#: randomized-lasso stability selection (ours): subsamples, keep-threshold, reweighting floor
STABILITY = {"n_subsamples": 50, "threshold": 0.6, "weakness": 0.5}


@method("stability", "stability selection (ours: randomized lasso)",
        note="implemented in this benchmark (no maintained package installs here): "
             "Meinshausen & Bühlmann 2010 randomized lasso at LassoCV's alpha, linear")
def select_stability(X: np.ndarray, y: np.ndarray, seed: int) -> Selection:
    """Randomized-lasso stability selection (Meinshausen & Bühlmann 2010), ours: the alpha of a
    5-fold ``LassoCV`` on all training rows; then ``n_subsamples`` lassos at that alpha, each on
    half the rows with every column scaled by U(weakness, 1); score: the share of fits that
    select a column; kept: share >= threshold. A linear model: a variable whose effect is far
    from monotone can be missed."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso, LassoCV

    x, t = _standardized(X, y)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        alpha = float(LassoCV(cv=5, alphas=50, random_state=seed).fit(x, t).alpha_)
        hits = np.zeros(x.shape[1])
        n, b = len(x), STABILITY["n_subsamples"]
        for _ in range(b):
            rows = rng.choice(n, n // 2, replace=False)
            w = rng.uniform(STABILITY["weakness"], 1.0, x.shape[1])
            coef = Lasso(alpha=alpha, max_iter=2000).fit(x[rows] * w, t[rows]).coef_
            hits += coef != 0
    share = hits / b
    return Selection(list(np.flatnonzero(share >= STABILITY["threshold"])), share,
                     extra={"alpha": alpha, **STABILITY})


#: knockoff filter target false-discovery rate
KNOCKOFF_FDR = 0.1


@method("knockoffs", "model-X knockoffs (knockpy, lasso stat.)",
        note="knockpy's KnockoffFilter: Gaussian model-X knockoffs (Ledoit-Wolf covariance), "
             "lasso coefficient-difference statistic, FDR 0.1 (knockoff filter, offset 0); "
             "linear")
def select_knockoffs(X: np.ndarray, y: np.ndarray, seed: int) -> Selection:
    """``knockpy.KnockoffFilter(ksampler="gaussian", fstat="lasso")`` at FDR
    :data:`KNOCKOFF_FDR` with the knockoff (not knockoff+) threshold; score: the knockoff
    statistic W."""
    from knockpy.knockoff_filter import KnockoffFilter
    from knockpy.knockoff_stats import data_dependent_threshhold

    x, t = _standardized(X, y)
    state = np.random.get_state()
    np.random.seed(seed)  # knockpy draws from numpy's global RNG
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kf = KnockoffFilter(ksampler="gaussian", fstat="lasso")
            kf.forward(X=x, y=t, fdr=KNOCKOFF_FDR, shrinkage="ledoitwolf")
    finally:
        np.random.set_state(state)
    w = np.asarray(kf.W, np.float64)
    # offset 0 (the knockoff filter, modified FDR): knockoff+ (offset 1) needs at least 1/FDR
    # selections before it selects any, more than the 3 to 5 variables of a law
    threshold = float(data_dependent_threshhold(W=w, fdr=KNOCKOFF_FDR, offset=0))
    return Selection(list(np.flatnonzero(w >= threshold)), w,
                     extra={"fdr": KNOCKOFF_FDR, "offset": 0, "threshold": threshold})


def available(name: str) -> str | None:
    """Why ``name`` cannot run here (a missing package), or ``None``."""
    import importlib.util

    needs = {"stg": "stg", "lassonet": "lassonet", "knockoffs": "knockpy"}.get(name)
    if needs and importlib.util.find_spec(needs) is None:
        return f"package {needs!r} not installed"
    return None


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)[:500]
