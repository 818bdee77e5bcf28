"""Feature selection against a known ground truth: LUMOS vs. STG, LassoNet, RF and MI rankings.

Ground-truth sets: every workload (``data.true_features`` / ``data.irrelevant_features``),
``sklearn.datasets.make_friedman1`` with extra noise columns, and closed-form physics laws with
planted noise columns (:func:`lumos.workloads.laws.make_law_data`).

Methods:

* **LUMOS** (self-selecting): ``sparsify(model, budget=b)`` on the workload's own model, trained
  with its recipe; ``sm.selected_features()``. With ``confirm=True`` (``--confirm``): trained on
  80% of the training samples, then :func:`lumos.confirm_features` on the other 20% (re-fits:
  10% of the recipe's epochs, at least 2), as ``LumosRegressor`` does by default; the selection
  training alone made is recorded too (``kept_by_training``).
* **STG** (self-selecting; ``stg`` package, Yamada et al. 2020): the package's
  ``STGRegressionModel`` (gate + MLP, its default ``lam=0.1``, ``sigma=0.5``); kept: deterministic
  gate ``clamp(mu + 0.5, 0, 1) > 0``, what its eval forward multiplies by.
* **LassoNet** (self-selecting; ``lassonet`` package, Lemhadri et al. 2021): the regularisation
  path; kept: the path point with the lowest loss on a held-out part of the training data.
* **Rankings cut at the true count** (given the answer's size, which no self-selecting method
  is): random-forest impurity importance, mutual information, LassoNet's path importance and
  LUMOS's gate probabilities (``sm.feature_scores()``).

STG, LassoNet, RF and MI take tables. Non-tabular inputs are flattened into a table whose
columns each belong to one input feature (see :func:`tabularize`: per-pixel values plus
per-sample channel means for fields, channel statistics for image-to-scalar tasks, per-graph
mean/sum or per-node own + neighbour-mean features for graphs, per-token or flattened
sequences); a feature is kept when any of its columns is, and its ranking score is the best of
its columns'. Every selection is then scored by precision/recall/F1 against the truth and by
the *downstream* metric of the workload's own model trained (same recipe) on the kept features
only (the dropped ones zeroed, which for a first linear/conv layer is the same as removing them).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import lumos
from lumos.training import predict, train
from lumos.workloads import (
    GraphSplit,
    build_dense,
    feature_argument,
    get_workload,
    sparsify_features,
    train_recipe,
)
from lumos.workloads.laws import make_law_data

#: rows of a flattened table (per split) at most; more are subsampled
MAX_ROWS = 20000
#: target columns of a table at most (evenly spaced); enough to tell which inputs matter
MAX_TARGETS = 8
#: share of the training samples LUMOS holds out to confirm its selection on
CONFIRM_FRACTION = 0.2
#: what the LUMOS row is with confirm=True (records of another pipeline are not reused)
CONFIRMED_PIPELINE = "sparsify+train+confirm_features"
SELF_SELECTING = ("lumos", "stg", "lassonet")
RANKINGS = ("rf_at_k", "mi_at_k", "lassonet_at_k", "lumos_at_k")
METHOD_LABELS = {
    "lumos": "LUMOS",
    "stg": "STG",
    "lassonet": "LassoNet (best val. on path)",
    "rf_at_k": "random forest @ true k",
    "mi_at_k": "mutual information @ true k",
    "lassonet_at_k": "LassoNet importance @ true k",
    "lumos_at_k": "LUMOS gate prob. @ true k",
    "all": "all features",
    "true": "true features (oracle)",
}
LAW_SETS = ("drag", "van_der_waals", "kepler", "damped_oscillator")
#: synthetic sets: (rows, epochs of the LUMOS and downstream MLP) per mode
SYNTHETIC = {"smoke": (600, 15), "full": (2000, 40)}


@dataclass
class Table:
    """A flat view of a data set: ``column_feature[j]`` is the input feature of column ``j``."""

    x_train: np.ndarray
    y_train: np.ndarray
    column_feature: list[int]
    note: str
    classification: bool = False


@dataclass
class Task:
    """One ground-truth set: the truth, a table for the table-only peers, LUMOS, downstream."""

    name: str
    kind: str  # "workload" or "synthetic"
    size: str
    feature_names: list[str]
    true: list[int]
    irrelevant: list[int]
    table: Table
    metric: str
    higher_is_better: bool
    #: kept indices, gate probabilities, what confirmation found
    lumos: Callable[[], tuple[list[int], np.ndarray, dict]]
    downstream: Callable[[list[int]], float]
    info: dict = field(default_factory=dict)


# ---- scoring -----------------------------------------------------------------------------------
def scores(kept: list[int], true: list[int]) -> dict:
    kept_s, true_s = set(kept), set(true)
    hit = len(kept_s & true_s)
    precision = hit / len(kept_s) if kept_s else 0.0
    recall = hit / len(true_s) if true_s else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"kept": sorted(kept_s), "n_kept": len(kept_s), "precision": precision,
            "recall": recall, "f1": f1}


def top_k(column_scores: np.ndarray, column_feature: list[int], n_features: int, k: int
          ) -> list[int]:
    """The ``k`` features with the best column score (a feature scores its best column)."""
    best = np.full(n_features, -np.inf)
    for j, f in enumerate(column_feature):
        best[f] = max(best[f], float(column_scores[j]))
    return sorted(int(i) for i in np.argsort(-best, kind="stable")[:k])


def features_of(columns: np.ndarray, column_feature: list[int]) -> list[int]:
    return sorted({column_feature[j] for j in np.flatnonzero(columns)})


# ---- the table-only peers ------------------------------------------------------------------
def standardized(t: Table) -> tuple[np.ndarray, np.ndarray]:
    x = (t.x_train - t.x_train.mean(0)) / (t.x_train.std(0) + 1e-8)
    y = t.y_train
    if not t.classification:
        y = (y - y.mean(0)) / (y.std(0) + 1e-8)
    return x.astype(np.float32), y.astype(np.float32)


def run_stg(t: Table, seed: int, steps: int = 3000, batch: int = 128, lam: float = 0.1
            ) -> np.ndarray:
    """STG's own model and loss (``stg.models.STGRegressionModel``; its ``STG`` wrapper only
    takes one output) trained with Adam; returns the per-column deterministic gate."""
    from stg.models import STGRegressionModel

    x, y = standardized(t)
    torch.manual_seed(seed)
    model = STGRegressionModel(x.shape[1], y.shape[1], [128, 64], device="cpu",
                               activation="tanh", sigma=0.5, lam=lam)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (min(batch, len(xt)),), generator=g)
        loss, _, _ = model({"input": xt[idx], "label": yt[idx]})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.get_gates("prob")


def run_lassonet(t: Table, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """LassoNet's path; returns (columns kept at the best held-out loss, column importance,
    path info)."""
    from lassonet import LassoNetRegressor

    x, y = standardized(t)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    n_val = max(1, len(x) // 5)
    val, tr = perm[:n_val], perm[n_val:]
    model = LassoNetRegressor(hidden_dims=(64,), path_multiplier=1.05, batch_size=256,
                              n_iters=(200, 50), patience=(20, 5), random_state=seed,
                              torch_seed=seed, verbose=0)
    path = model.path(x[tr], y[tr], X_val=x[val], y_val=y[val], disable_lambda_warning=True)
    best = min(path, key=lambda h: h.val_loss)
    importance = model.feature_importances_.numpy()
    info = {"path_points": len(path), "best_lambda": float(best.lambda_),
            "best_n_columns": int(best.selected.sum())}
    return best.selected.numpy(), importance, info


def run_rf(t: Table, seed: int) -> np.ndarray:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    x, y = standardized(t)
    if t.classification:
        rf = RandomForestClassifier(n_estimators=200, min_samples_leaf=2, n_jobs=1,
                                    random_state=seed).fit(x, y.ravel())
    else:
        rf = RandomForestRegressor(n_estimators=200, min_samples_leaf=2, max_features=0.5,
                                   n_jobs=1, random_state=seed)
        rf.fit(x, y.ravel() if y.shape[1] == 1 else y)
    return rf.feature_importances_


def run_mi(t: Table, seed: int) -> np.ndarray:
    """Mutual information of each column with each target column, averaged over targets."""
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

    x, y = standardized(t)
    if t.classification:
        return mutual_info_classif(x, y.ravel(), random_state=seed)
    return np.mean([mutual_info_regression(x, y[:, k], random_state=seed)
                    for k in range(y.shape[1])], axis=0)


# ---- flattening non-tabular data ---------------------------------------------------------------
def _subsample(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, MAX_ROWS, replace=False)) if rows > MAX_ROWS else np.arange(
        rows)


def _targets(y: np.ndarray) -> np.ndarray:
    y = y.reshape(len(y), -1)
    if y.shape[1] > MAX_TARGETS:
        y = y[:, np.linspace(0, y.shape[1] - 1, MAX_TARGETS).round().astype(int)]
    return y


def tabularize(data, architecture: str, classification: bool, seed: int) -> Table:
    """A table for the table-only methods (see the module doc for each kind of input)."""
    split = data.train
    n_feat = len(data.feature_names)
    if isinstance(split, GraphSplit):
        if split.node_level:
            xs, ys = [], []
            for g in split.graphs:
                x, (src, dst) = g["x"], g["edge_index"]
                agg = torch.zeros_like(x).index_add_(0, dst, x[src])
                deg = torch.zeros(len(x)).index_add_(0, dst, torch.ones(len(src))).clamp_min(1)
                xs.append(torch.cat([x, agg / deg[:, None]], 1))
                ys.append(g["y"].reshape(len(x), -1))
            x, y = torch.cat(xs).numpy(), torch.cat(ys).numpy()
            note = "one row per node: its features and the mean over its neighbours"
        else:
            x = torch.stack([torch.cat([g["x"].mean(0), g["x"].sum(0)]) for g in split.graphs])
            y = torch.stack([g["y"].reshape(-1) for g in split.graphs])
            x, y = x.numpy(), y.numpy()
            note = "one row per graph: mean and sum of each node feature"
        columns = list(range(n_feat)) * 2
    else:
        x_t, y_t = split.inputs[0], split.target
        if x_t.dim() == 2:
            x, y, columns = x_t.numpy(), y_t.numpy(), list(range(n_feat))
            note = "the model's own table"
        elif architecture in ("cnn2d", "cnn3d", "fno"):
            spatial = tuple(range(2, x_t.dim()))
            if y_t.dim() == x_t.dim() and y_t.shape[2:] == x_t.shape[2:]:
                c = x_t.shape[1]
                pix = x_t.flatten(2).transpose(1, 2)  # (n, pixels, C)
                mean = x_t.mean(spatial)[:, None, :].expand_as(pix)
                x = torch.cat([pix, mean], 2).reshape(-1, 2 * c).numpy()
                y = y_t.flatten(2).transpose(1, 2).reshape(-1, y_t.shape[1]).numpy()
                columns = list(range(c)) * 2
                note = "one row per grid cell: channel values there and per-sample channel means"
            else:
                stats = [x_t.mean(spatial), x_t.std(spatial), x_t.amax(spatial)]
                x, y = torch.cat(stats, 1).numpy(), y_t.numpy()
                columns = list(range(x_t.shape[1])) * 3
                note = "one row per sample: mean, std and max of each channel"
        else:  # token sequences (batch, tokens, features)
            n, tokens, f = x_t.shape
            if y_t.dim() == 3 and y_t.shape[1] == tokens:
                mean = x_t.mean(1, keepdim=True).expand_as(x_t)
                x = torch.cat([x_t, mean], 2).reshape(-1, 2 * f).numpy()
                y = y_t.reshape(n * tokens, -1).numpy()
                columns = list(range(f)) * 2
                note = "one row per token: its features and their mean over the sequence"
            else:
                x, y = x_t.reshape(n, -1).numpy(), y_t.numpy()
                columns = [j % f for j in range(tokens * f)]
                note = "one row per sequence: all tokens' features side by side"
    keep = _subsample(len(x), seed)
    return Table(np.asarray(x[keep], np.float64), _targets(np.asarray(y[keep], np.float64)),
                 columns, note, classification)


# ---- tasks -------------------------------------------------------------------------------------
class MaskedInput(nn.Module):
    """Calls ``model`` with the features not in ``kept`` zeroed (same as removing them from a
    first linear/conv layer: a zero input contributes nothing and its weights get no gradient)."""

    def __init__(self, model: nn.Module, position: int, dim: int, mask: Tensor) -> None:
        super().__init__()
        self.model = model
        self.position = position
        self.dim = dim
        self.register_buffer("mask", mask)

    def forward(self, *inputs):
        inputs = list(inputs)
        x = inputs[self.position]
        shape = [1] * x.dim()
        shape[self.dim] = -1
        inputs[self.position] = x * self.mask.view(shape).to(x.dtype)
        return self.model(*inputs)


def workload_task(name: str, size: str, budget: float, seed: int, cache_dir=None,
                  confirm: bool = False) -> Task:
    wl = get_workload(name)
    data = wl.data(size, seed=seed, cache_dir=cache_dir)
    recipe = wl.recipes[size]
    val = data.loader("val", 512, shuffle=False)
    names = data.feature_names

    def build() -> nn.Module:
        return build_dense(wl, data, seed=seed)

    def fit(model: nn.Module) -> None:
        train_recipe(model, wl, data, recipe, seed=seed)

    def run_lumos() -> tuple[list[int], np.ndarray, dict]:
        base = build()
        arg = feature_argument(base, data.feature_arg)
        sm = sparsify_features(base, data, budget=budget)
        if not confirm:
            fit(sm)
            kept = [names.index(n) for n in sm.selected_features()[arg]]
            return kept, sm.feature_scores()[arg].numpy(), {}
        g = torch.Generator().manual_seed(seed + 1)
        order = torch.randperm(len(data.train), generator=g)
        n_held = max(1, int(len(order) * CONFIRM_FRACTION))
        fit_data = dataclasses.replace(data, train=data.train.subset(order[n_held:]))
        held = data.train.subset(order[:n_held])
        train_recipe(sm, wl, fit_data, recipe, seed=seed)
        trained = [names.index(n) for n in sm.selected_features()[arg]]
        held_loader = DataLoader(held, batch_size=512, shuffle=False, collate_fn=held.collate)
        classification = wl.task == "classification"

        def losses() -> Tensor:
            pred, target = predict(sm, held_loader)
            return _row_losses(pred, target, classification)

        _, held_target = predict(sm, held_loader)
        return _confirmed(sm, arg, names, trained, n_held, losses,
                          lambda: train_recipe(sm, wl, fit_data, recipe, seed=seed + 3,
                                               epochs=_refit_epochs(recipe.epochs)),
                          _null_loss(held_target, classification))

    def downstream(kept: list[int]) -> float:
        base = build()
        arg = feature_argument(base, data.feature_arg)
        position = list(inspect.signature(base.forward).parameters).index(arg)
        dim = data.feature_dim + 1 if data.feature_dim >= 0 else data.feature_dim
        if isinstance(data.train, GraphSplit):
            dim = data.feature_dim  # graph nodes carry no batch dim
        mask = torch.zeros(len(names))
        mask[kept] = 1.0
        model = MaskedInput(base, position, dim, mask)
        fit(model)
        pred, target = predict(model, val)
        return float(wl.metrics(pred, target)[wl.primary])

    table = tabularize(data, wl.architecture, wl.task == "classification", seed)
    return Task(name=name, kind="workload", size=size, feature_names=names,
                true=list(data.true_features), irrelevant=list(data.irrelevant_features),
                table=table, metric=wl.primary, higher_is_better=wl.higher_is_better,
                lumos=run_lumos, downstream=downstream,
                info={"architecture": wl.architecture, "epochs": recipe.epochs,
                      "train_samples": len(data.train), "table": table.note,
                      "table_shape": list(table.x_train.shape)})


def mlp_task(name: str, x: np.ndarray, y: np.ndarray, names: list[str], true: list[int],
             budget: float, seed: int, epochs: int, note: str, confirm: bool = False) -> Task:
    """A tabular regression set with an MLP (``lumos.demo.demo_mlp``) as the model."""
    from lumos.demo import demo_mlp
    from lumos.metrics import r2

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    n_val = len(x) // 5
    x = (x - x[perm[n_val:]].mean(0)) / (x[perm[n_val:]].std(0) + 1e-8)
    y = y.reshape(len(y), -1)
    y = (y - y[perm[n_val:]].mean(0)) / (y[perm[n_val:]].std(0) + 1e-8)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    tr, va = torch.from_numpy(perm[n_val:]), torch.from_numpy(perm[:n_val])
    d = x.shape[1]

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return demo_mlp(d, 128)

    def run_lumos() -> tuple[list[int], np.ndarray, dict]:
        sm = lumos.sparsify(build(), xt[tr[:8]], budget=budget, feature_names=names)
        if not confirm:
            train(sm, (xt[tr], yt[tr]), epochs=epochs, seed=seed, progress=False)
            arg = next(iter(sm.selected_features()))
            kept = [names.index(n) for n in sm.selected_features()[arg]]
            return kept, sm.feature_scores()[arg].numpy(), {}
        n_held = int(len(tr) * CONFIRM_FRACTION)
        fit_rows, held = tr[n_held:], tr[:n_held]
        train(sm, (xt[fit_rows], yt[fit_rows]), epochs=epochs, seed=seed, progress=False)
        arg = next(iter(sm.selected_features()))
        trained = [names.index(n) for n in sm.selected_features()[arg]]

        def losses() -> Tensor:
            with torch.no_grad():
                return _row_losses(sm(xt[held]), yt[held], False)

        return _confirmed(sm, arg, names, trained, n_held, losses,
                          lambda: train(sm, (xt[fit_rows], yt[fit_rows]),
                                        epochs=_refit_epochs(epochs), seed=seed + 3,
                                        progress=False),
                          _null_loss(yt[held], False))

    def downstream(kept: list[int]) -> float:
        mask = torch.zeros(d)
        mask[kept] = 1.0
        model = build()
        train(model, (xt[tr] * mask, yt[tr]), epochs=epochs, seed=seed, progress=False)
        with torch.no_grad():
            return float(r2(model.eval()(xt[va] * mask), yt[va]))

    irrelevant = [j for j in range(d) if j not in set(true)]
    table = Table(x[perm[n_val:]], y[perm[n_val:]], list(range(d)), "the table itself")
    return Task(name=name, kind="synthetic", size=f"{len(x)} rows", feature_names=names,
                true=true, irrelevant=irrelevant, table=table, metric="r2",
                higher_is_better=True, lumos=run_lumos, downstream=downstream,
                info={"architecture": "mlp", "epochs": epochs, "train_samples": len(x) - n_val,
                      "note": note, "table": table.note, "table_shape": list(x.shape)})


def synthetic_tasks(budget: float, seed: int, smoke: bool, confirm: bool = False) -> list[Task]:
    from sklearn.datasets import make_friedman1

    n, epochs = SYNTHETIC["smoke" if smoke else "full"]
    x, y = make_friedman1(n_samples=n, n_features=25, noise=1.0, random_state=seed)
    tasks = [mlp_task("friedman1", x, y, [f"x{j}" for j in range(25)], list(range(5)),
                      budget, seed, epochs, "make_friedman1: 5 true of 25 columns, noise 1.0",
                      confirm)]
    for law in LAW_SETS[:2] if smoke else LAW_SETS:
        d = make_law_data(law, n_samples=n, n_noise=12, seed=seed, noise_std=0.05)
        tasks.append(mlp_task(f"law:{law}", d.X, d.y, list(d.feature_names),
                              sorted(set(range(d.X.shape[1])) - set(d.noise_features)),
                              budget, seed, epochs, f"{law} law + 12 N(0,1) columns, 5% label "
                              "noise", confirm))
    return tasks


def _row_losses(pred: Tensor, target: Tensor, classification: bool) -> Tensor:
    """The loss of each held-out sample (row of the prediction), as the workload trains."""
    if classification:
        loss = nn.functional.binary_cross_entropy_with_logits(pred, target.to(pred.dtype),
                                                              reduction="none")
    else:
        loss = (pred - target).pow(2)
    return loss.reshape(len(pred), -1).mean(dim=1)


def _null_loss(target: Tensor, classification: bool) -> float:
    """The loss of the best constant prediction: the variance, or the base rate's entropy."""
    t = target.double().reshape(len(target), -1)
    if not classification:
        return float(t.var(dim=0, unbiased=False).mean())
    p = t.mean(dim=0).clamp(1e-6, 1 - 1e-6)
    return float(-(p * p.log() + (1 - p) * (1 - p).log()).mean())


def _refit_epochs(epochs: int) -> int:
    """Epochs of each re-fit during confirmation: 10% of the training's, at least 2."""
    return max(2, math.ceil(0.1 * epochs))


def _confirmed(sm, arg: str, names: list[str], trained: list[int], held: int,
               losses: Callable[[], Tensor], refit: Callable[[], object],
               null_loss: float) -> tuple[list[int], np.ndarray, dict]:
    """:func:`lumos.confirm_features` on a trained model; what ``Task.lumos`` returns."""
    evidence = lumos.confirm_features(sm, losses, refit, null_loss=null_loss)
    kept = [names.index(n) for n in sm.selected_features()[arg]]
    return kept, sm.feature_scores()[arg].numpy(), {
        "kept_by_training": trained, "held_out_samples": held,
        "dropped_by_confirmation": evidence.dropped.get(arg, []),
        "unsure": evidence.unsure.get(arg, []), "unstable": evidence.unstable}


# ---- the comparison ----------------------------------------------------------------------------
def run_task(task: Task, seed: int, methods: tuple[str, ...] = SELF_SELECTING + RANKINGS,
             previous: dict | None = None,
             lumos_result: tuple[list[int], np.ndarray, dict] | None = None,
             stg_steps: int = 3000) -> dict:
    """Every method on one ground-truth set, then the downstream metric of each distinct
    kept set (trained once per set).

    ``lumos_result``: LUMOS's selection made elsewhere (kept, scores, confirmation), used
    instead of running ``task.lumos``. ``previous``: an earlier record of the same set and
    settings; its peers' selections (every method but LUMOS's) and the downstream metrics of
    kept sets it trained are reused.
    """
    t = task.table
    n_feat, k = len(task.feature_names), len(task.true)
    selections: dict[str, dict] = {}
    timings: dict[str, float] = {}
    known: dict[tuple, float] = {}
    if previous is not None:
        for method, s in previous["methods"].items():
            if not method.startswith("lumos") and method in methods:
                selections[method] = s
        methods = tuple(m for m in methods if m.startswith("lumos"))
        known = {tuple(s["kept"]): s["downstream"] for s in previous["methods"].values()
                 if s.get("status") == "ok" and "downstream" in s}
        known[tuple(range(n_feat))] = previous["downstream_all"]
        known[tuple(sorted(task.true))] = previous["downstream_true"]

    def record(method: str, fn: Callable[[], list[int]], extra: Callable[[], dict] | None = None):
        start = time.perf_counter()
        try:
            kept = fn()
            selections[method] = {"status": "ok", **scores(kept, task.true)}
            if extra is not None:
                selections[method].update(extra())
        except Exception as exc:  # a peer failing on a set is a result
            selections[method] = {"status": "error",
                                  "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        timings[method] = time.perf_counter() - start
        selections[method]["wall_s"] = timings[method]

    cache: dict[str, object] = {}
    if "lumos" in methods or "lumos_at_k" in methods:
        lumos_wall = None
        if lumos_result is None:
            start = time.perf_counter()
            lumos_result = task.lumos()
            lumos_wall = time.perf_counter() - start
        result = lumos_result
        record("lumos", lambda: result[0],
               lambda: {"confirmation": result[2]} if result[2] else {})
        if lumos_wall is not None:
            selections["lumos"]["wall_s"] = lumos_wall
        record("lumos_at_k", lambda: top_k(result[1], list(range(n_feat)), n_feat, k))
    if "stg" in methods:
        record("stg", lambda: features_of(run_stg(t, seed, stg_steps) > 0, t.column_feature))
    if "lassonet" in methods or "lassonet_at_k" in methods:
        def lassonet() -> list[int]:
            cache["lassonet"] = run_lassonet(t, seed)
            return features_of(cache["lassonet"][0], t.column_feature)

        record("lassonet", lassonet, lambda: {"path": cache["lassonet"][2]})
        if "lassonet" in cache:
            record("lassonet_at_k",
                   lambda: top_k(cache["lassonet"][1], t.column_feature, n_feat, k))
    if "rf_at_k" in methods:
        record("rf_at_k", lambda: top_k(run_rf(t, seed), t.column_feature, n_feat, k))
    if "mi_at_k" in methods:
        record("mi_at_k", lambda: top_k(run_mi(t, seed), t.column_feature, n_feat, k))

    sets = {"all": list(range(n_feat)), "true": sorted(task.true)}
    sets.update({m: s["kept"] for m, s in selections.items() if s["status"] == "ok"})
    downstream: dict[str, float] = {}
    by_set: dict[tuple, float] = dict(known)
    trained_before = len(by_set)
    for method, kept in sets.items():
        key = tuple(kept)
        if key not in by_set:
            by_set[key] = task.downstream(kept) if kept else float("nan")
        downstream[method] = by_set[key]
    for method, s in selections.items():
        if s["status"] == "ok":
            s["downstream"] = downstream[method]
    return {
        "set": task.name,
        "kind": task.kind,
        "size": task.size,
        "features": len(task.feature_names),
        "true": len(task.true),
        "irrelevant": len(task.irrelevant),
        "feature_names": task.feature_names,
        "true_features": sorted(task.true),
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "downstream_all": downstream["all"],
        "downstream_true": downstream["true"],
        "downstream_trainings": len(by_set) - trained_before,
        "methods": selections,
        "info": task.info,
    }
