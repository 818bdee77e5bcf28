"""scikit-learn estimators: ``LumosRegressor`` and ``LumosClassifier``.

They put an MLP behind the scikit-learn API so a researcher with a table gets, from one ``fit``,
the columns that matter (``selected_features_``, ``feature_importances_``) and a smaller plain
PyTorch model (``compact()``), and can tune ``budget`` with ``GridSearchCV`` like any other
hyper-parameter. Each estimator is also a feature selector (``transform`` keeps the selected
columns), so it can sit in the middle of a ``Pipeline``.

scikit-learn is an optional dependency of LUMOS: this module is imported only when
``lumos.LumosRegressor`` / ``lumos.LumosClassifier`` is first used.

Exemptions from ``sklearn.utils.estimator_checks.check_estimator``: none. Both estimators pass
every check, with their default parameters and with the small ones the test suite uses. Sample
weights, sparse inputs and multi-label targets are not supported; they are rejected with clear
errors, which the checks accept (see docs/estimators.md).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.feature_selection import SelectorMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        "lumos.LumosRegressor / lumos.LumosClassifier need scikit-learn >= 1.6: "
        "pip install 'scikit-learn>=1.6'."
    ) from exc

from . import SparseModel, sparsify
from .copying import copy_model
from .errors import ConfigurationError, LumosWarning
from .measure import count_params
from .options import DEFAULT_FEATURE_PENALTY, GateOptions
from .selection import confirm_features
from .training import History, train

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU}

#: rows per forward pass in predict (keeps memory flat on large tables).
PREDICT_BATCH = 8192

#: ``epochs="auto"``: a dense probe of the same network is trained on all but a held-out
#: share of the rows for at most ``AUTO_MAX_EPOCHS`` epochs, stopped ``AUTO_PATIENCE`` epochs
#: after its validation loss last improved; LUMOS then trains ``AUTO_FACTOR`` times the best
#: epoch count (within ``[AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS]``) on every row. Tables below
#: ``AUTO_MIN_ROWS`` rows are too small to hold any out and train ``AUTO_MAX_EPOCHS``.
AUTO_MAX_EPOCHS = 100
AUTO_MIN_EPOCHS = 15
#: ... and at least this many optimiser steps (small tables: more epochs, up to the next)
AUTO_MIN_STEPS = 1500
AUTO_MAX_STEPS_EPOCHS = 400
AUTO_PATIENCE = 10
AUTO_FACTOR = 1.5
AUTO_VALIDATION = 0.2
AUTO_MIN_ROWS = 50


def build_mlp(n_in: int, hidden: Sequence[int], n_out: int, activation: str) -> nn.Sequential:
    """``Linear, act, ..., Linear``: the network both estimators train (and sparsify)."""
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def _batch_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> DataLoader:
    """Shuffled mini-batches gathered with one index op each (no per-row collate)."""
    dataset = TensorDataset(x, y)
    generator = torch.Generator().manual_seed(seed)
    sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, False)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


class _LumosEstimator(SelectorMixin, BaseEstimator):
    """Shared machinery: validation, scaling, sparsify + train, compaction, prediction."""

    def __init__(
        self,
        hidden=(128, 128),
        *,
        budget=0.25,
        epochs="auto",
        lr=1e-3,
        batch_size=64,
        feature_penalty=DEFAULT_FEATURE_PENALTY,
        activation="silu",
        standardize=True,
        random_state=None,
        device=None,
        verbose=0,
        confirm=True,
        budget_on="params",
        width_multiple=1,
    ):
        self.hidden = hidden
        self.budget = budget
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.feature_penalty = feature_penalty
        self.activation = activation
        self.standardize = standardize
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        self.confirm = confirm
        self.budget_on = budget_on
        self.width_multiple = width_multiple

    # ---- what subclasses define ----------------------------------------------------------
    def _encode_targets(self, y: np.ndarray) -> tuple[torch.Tensor, int]:
        """Targets as the tensor the loss reads, and the network's output width."""
        raise NotImplementedError

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _row_losses(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of each row (its mean is :meth:`_loss`)."""
        raise NotImplementedError

    def _null_loss(self, target: torch.Tensor) -> float:
        """The loss of the best constant prediction of ``target``."""
        raise NotImplementedError

    # ---- fit -----------------------------------------------------------------------------
    def _check_params(self) -> tuple[int, ...]:
        hidden = _hidden_widths(self.hidden)
        if self.budget is not None and not (
            isinstance(self.budget, numbers.Real) and 0.0 < self.budget <= 1.0
        ):
            raise ConfigurationError(
                f"budget must be None (no size limit) or a fraction in (0, 1] of the dense "
                f"parameter count, got {self.budget!r}; e.g. budget=0.25."
            )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if name == "epochs" and value == "auto":
                continue
            if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)) or (
                value < 1
            ):
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}.")
        if not (isinstance(self.lr, numbers.Real) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigurationError(f"lr must be a positive number, got {self.lr!r}.")
        fp = self.feature_penalty
        if not (isinstance(fp, numbers.Real) and fp >= 0 and math.isfinite(fp)):
            raise ConfigurationError(
                f"feature_penalty must be a number >= 0 (0 turns feature selection off), "
                f"got {fp!r}."
            )
        if self.budget_on not in ("params", "flops", "latency"):
            raise ConfigurationError(
                f"budget_on must be 'params', 'flops' or 'latency' (what budget measures), "
                f"got {self.budget_on!r}.")
        GateOptions(width_multiple=self.width_multiple)  # refuses a bad one, naming it
        if not isinstance(self.confirm, (bool, np.bool_)):
            raise ConfigurationError(
                f"confirm must be True (test the weakest kept columns on held-out rows) or "
                f"False, got {self.confirm!r}.")
        if self.activation not in ACTIVATIONS:
            raise ConfigurationError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}."
            )
        return hidden

    def _fit(self, X: np.ndarray, y: np.ndarray):
        hidden = self._check_params()
        device = _check_device(self.device)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

        if self.standardize:
            self._x_mean = X.mean(axis=0, dtype=np.float64)
            self._x_scale = _safe_scale(X.std(axis=0, dtype=np.float64))
        else:
            self._x_mean = np.zeros(X.shape[1])
            self._x_scale = np.ones(X.shape[1])
        x = torch.tensor((X - self._x_mean) / self._x_scale, dtype=torch.float32)
        target, n_out = self._encode_targets(y)
        names = [str(n) for n in self._input_names()]

        gated = self.budget is not None or self.feature_penalty > 0
        forked = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):  # leave the caller's torch RNG as it was
            torch.manual_seed(seed)
            net = build_mlp(X.shape[1], hidden, n_out, self.activation)
            self.n_params_dense_ = count_params(net)
            model: nn.Module = net
            if gated:
                model = sparsify(
                    net,
                    x[: min(len(x), 8)],
                    budget=None if self.budget is None else float(self.budget),
                    budget_on=self.budget_on,
                    gates=GateOptions(width_multiple=self.width_multiple),
                    feature_penalty=_column_pressure(float(self.feature_penalty), X.shape[1]),
                    feature_names=names if len(set(names)) == len(names) else None,
                )
            model.to(device)
            x, target = x.to(device), target.to(device)
            held = None
            if isinstance(model, SparseModel) and self.confirm and self.feature_penalty > 0 \
                    and len(x) >= CONFIRM_MIN_ROWS:
                order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))
                held = order[: int(len(x) * CONFIRM_FRACTION)].to(device)
                rest = order[len(held):].to(device)
                x_fit, t_fit = x[rest], target[rest]
            else:
                x_fit, t_fit = x, target
            self.epochs_ = (self._auto_epochs(x_fit, t_fit, hidden, n_out, seed, device)
                            if self.epochs == "auto" else int(self.epochs))
            loader = _batch_loader(x_fit, t_fit, int(self.batch_size), seed)
            self.history_ = train(
                model,
                loader,
                epochs=self.epochs_,
                loss_fn=self._loss,
                lr=float(self.lr),
                seed=seed,
                progress=bool(self.verbose),
                on_epoch=self._print_epoch if self.verbose and self.verbose > 1 else None,
            )
        model.eval()
        self.selection_ = None
        if isinstance(model, SparseModel) and held is not None:
            with torch.random.fork_rng(devices=forked):
                torch.manual_seed(seed + 2)
                self.selection_ = self._confirm(model, x_fit, t_fit, x[held], target[held],
                                                names, seed)
        if isinstance(model, SparseModel):
            kept = model.selected_features()["input"]
            self.support_ = np.zeros(X.shape[1], dtype=bool)
            self.support_[[names.index(k) if isinstance(k, str) else k for k in kept]] = True
            self.feature_importances_ = _importances(model, x)
            self._report = model.report()
            compacted = model.compact()
        else:
            self.support_ = np.ones(X.shape[1], dtype=bool)
            self.feature_importances_ = _importances(net, x)
            self._report = (
                "LUMOS report\n\ndense MLP (budget=None, feature_penalty=0): no gates, every "
                f"feature and neuron kept\nparams: {self.n_params_dense_}"
            )
            compacted = net
        self.compacted_model_ = self._fold_scaling(compacted, len(hidden))
        self.n_params_ = count_params(self.compacted_model_)
        self.selected_features_ = self.get_feature_names_out()
        self.n_iter_ = len(self.history_.loss)
        return self

    def _confirm(self, model: SparseModel, x_fit: torch.Tensor, t_fit: torch.Tensor,
                 x_val: torch.Tensor, t_val: torch.Tensor, names: list[str],
                 seed: int) -> dict:
        """:func:`lumos.confirm_features` on the rows held out of training (``confirm=True``),
        re-fitting for ``CONFIRM_EPOCHS`` of the training epochs after each closing."""
        epochs = max(CONFIRM_MIN_EPOCHS, math.ceil(CONFIRM_EPOCHS * self.epochs_))

        def held_out() -> torch.Tensor:
            return self._row_losses(model(x_val), t_val)

        evidence = confirm_features(
            model, held_out, lambda: self._refit(model, x_fit, t_fit, epochs, seed),
            null_loss=self._null_loss(t_val), tolerance=CONFIRM_TOLERANCE,
            share=CONFIRM_SHARE, candidate=CONFIRM_CANDIDATE, z_min=CONFIRM_Z, data=x_fit,
            redundancy=CONFIRM_REDUNDANCY)
        if "input" not in evidence.z:
            return {}
        z = evidence.z["input"].numpy()
        unsure = [names[j] for j in evidence.unsure["input"]]
        size, rows = len(z), len(x_fit) + len(x_val)
        few_rows = rows < CONFIRM_ROWS_PER_COLUMN * size
        if unsure or few_rows:
            why = (f"closing kept column(s) {unsure} changes the loss on {len(x_val)} "
                   f"held-out rows by less than {CONFIRM_Z:g} standard errors" if unsure else
                   f"{rows} rows for {size} columns is under {CONFIRM_ROWS_PER_COLUMN} per "
                   "column, where another sample of the rows may select differently")
            warnings.warn(
                f"the selection may be unstable: {why}. More rows (or fewer candidate "
                "columns) make it firm; selection_['z'] has each kept column's evidence.",
                LumosWarning, stacklevel=4)
        return {
            "held_out_rows": len(x_val),
            "tested": [names[j] for j in evidence.tested["input"]],
            "dropped": [names[j] for j in evidence.dropped["input"]],
            "loss_rise": evidence.loss_rise["input"].numpy(),
            "z": z,
            "unsure": unsure,
            "unstable": bool(unsure) or few_rows,
        }

    def _refit(self, model: SparseModel, x: torch.Tensor, target: torch.Tensor, epochs: int,
               seed: int) -> None:
        """A few epochs of the weights alone (the gates stay frozen where they are)."""
        weights = [p for n, p in model.named_parameters() if not n.startswith("gates.")]
        opt = torch.optim.Adam(weights, lr=float(self.lr))
        model.train()
        for _ in range(epochs):
            for xb, tb in _batch_loader(x, target, int(self.batch_size), seed):
                opt.zero_grad(set_to_none=True)
                self._loss(model(xb), tb).backward()
                opt.step()
        model.eval()

    def _auto_epochs(self, x: torch.Tensor, target: torch.Tensor, hidden: tuple[int, ...],
                     n_out: int, seed: int, device: torch.device) -> int:
        """How long to train (``epochs="auto"``): as long as a dense probe keeps improving on
        held-out rows, times ``AUTO_FACTOR`` for the budget's warm-up and recovery.

        A fixed count cannot suit both ends: a clean physical law on 500 rows still improves
        after 100 epochs, while 331 noisy rows (scikit-learn's diabetes table) overfit after
        about 20 and end below a linear model.
        """
        n = len(x)
        if n < AUTO_MIN_ROWS:
            return AUTO_MAX_EPOCHS
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x.device)
        held = order[: max(int(n * AUTO_VALIDATION), 10)]
        kept = order[len(held):]
        probe = build_mlp(x.shape[1], hidden, n_out, self.activation).to(device)
        x_val, t_val = x[held], target[held]
        best = [math.inf, 0]

        def on_epoch(epoch: int, history: History) -> bool:
            probe.eval()
            with torch.no_grad():
                loss = float(self._loss(probe(x_val), t_val))
            probe.train()
            if loss < best[0]:
                best[:] = [loss, epoch + 1]
            return epoch + 1 - best[1] >= AUTO_PATIENCE

        train(probe, _batch_loader(x[kept], target[kept], int(self.batch_size), seed),
              epochs=AUTO_MAX_EPOCHS, loss_fn=self._loss, lr=float(self.lr), seed=seed,
              on_epoch=on_epoch, progress=False)
        epochs = min(max(math.ceil(AUTO_FACTOR * best[1]), AUTO_MIN_EPOCHS), AUTO_MAX_EPOCHS)
        if self.budget is None and self.feature_penalty == 0:
            return int(epochs)  # no gates: the dense probe's count
        # the gates need steps, not epochs: 400 rows are 7 batches an epoch
        per_epoch = math.ceil(n / int(self.batch_size))
        return int(max(epochs, min(math.ceil(AUTO_MIN_STEPS / per_epoch), AUTO_MAX_STEPS_EPOCHS)))

    def _input_names(self) -> np.ndarray:
        """Names of all input columns (pandas names, else ``x0, x1, ...``)."""
        names = getattr(self, "feature_names_in_", None)
        if names is None:
            names = np.asarray([f"x{i}" for i in range(self.n_features_in_)], dtype=object)
        return names

    def _print_epoch(self, epoch: int, history: History) -> None:
        kept = f", kept {history.realized_fraction[-1]:.3f}" if history.realized_fraction else ""
        print(f"epoch {epoch + 1}/{self.epochs_}: loss {history.loss[-1]:.5g}{kept}")

    def _output_scaling(self) -> tuple[np.ndarray, np.ndarray] | None:
        return None

    @torch.no_grad()
    def _fold_scaling(self, model: nn.Module, n_hidden: int) -> nn.Module:
        """Fold input (and target) standardisation into the first (and last) Linear, so the
        compacted model takes raw columns and returns raw units: no wrapper class needed."""
        first = model.get_submodule("0")
        last = model.get_submodule(str(2 * n_hidden))
        kept = np.flatnonzero(self.support_)
        if not (isinstance(first, nn.Linear) and first.in_features == len(kept)):
            raise RuntimeError(  # pragma: no cover - guards the layout this module builds
                "internal error: the compacted MLP does not start with a Linear reading the kept "
                "features; please report this to the LUMOS developers."
            )
        mean = torch.as_tensor(self._x_mean[kept], dtype=torch.float64, device=first.weight.device)
        scale = torch.as_tensor(
            self._x_scale[kept], dtype=torch.float64, device=first.weight.device
        )
        w = first.weight.double() / scale
        first.bias.copy_(first.bias.double() - w @ mean)
        first.weight.copy_(w)
        out = self._output_scaling()
        if out is not None:
            y_mean, y_scale = (
                torch.as_tensor(v, dtype=torch.float64, device=last.weight.device) for v in out
            )
            last.weight.copy_(last.weight.double() * y_scale[:, None])
            last.bias.copy_(last.bias.double() * y_scale + y_mean)
        return model

    # ---- results -------------------------------------------------------------------------
    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self, "support_")
        return self.support_

    def _forward(self, X) -> np.ndarray:
        """Raw network outputs (float64) for validated rows of ``X``."""
        check_is_fitted(self, "compacted_model_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        model = self.compacted_model_
        device = next(model.parameters()).device
        x = torch.tensor(X, dtype=torch.float64, device=device)
        # float64 so a row's prediction does not depend on which rows share its batch
        model64 = copy_model(model).double().eval()
        with torch.no_grad():
            out = [model64(x[i : i + PREDICT_BATCH]) for i in range(0, len(x), PREDICT_BATCH)]
        return torch.cat(out).cpu().numpy()

    def compact(self) -> nn.Module:
        """A copy of the fitted, compacted plain PyTorch model.

        It takes all ``n_features_in_`` raw columns (float32; unscaled, it picks the kept ones
        itself) and returns predictions in the target's units (regressor) or class logits
        (classifier, columns in the order of ``classes_``). It reloads without LUMOS.
        """
        check_is_fitted(self, "compacted_model_")
        return copy_model(self.compacted_model_)

    def report(self) -> str:
        """What the fit kept: widths per layer, features, parameters and FLOPs."""
        check_is_fitted(self, "compacted_model_")
        return self._report


def _check_device(device) -> torch.device:
    """``device`` as a torch.device that exists here (``None``: the CPU)."""
    if device is None:
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigurationError(
            f"device must be None, 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(
            "device='cuda' but torch sees no CUDA device (a CPU build of torch, or no GPU); "
            "use device=None to train on the CPU."
        )
    return device


def _hidden_widths(hidden) -> tuple[int, ...]:
    """``hidden`` as a tuple of widths (an int is one layer; ``()`` is a linear model)."""
    widths = (hidden,) if isinstance(hidden, numbers.Integral) else hidden
    try:
        widths = tuple(widths)
    except TypeError:
        widths = None
    if widths is None or not all(
        isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1 for h in widths
    ):
        raise ConfigurationError(
            f"hidden must be a tuple of positive layer widths, e.g. (128, 128), got {hidden!r}."
        )
    return tuple(int(h) for h in widths)


#: rows (at most) over which ``feature_importances_`` averages the input gradients
IMPORTANCE_ROWS = 4096
#: share of the rows held out of training to confirm the selection (``confirm=True``)
CONFIRM_FRACTION = 0.2
#: tables with fewer rows are not split: every row trains, and nothing is confirmed
CONFIRM_MIN_ROWS = 100
#: a kept column whose held-out loss rise is under this share of the largest is put to the test
CONFIRM_CANDIDATE = 0.1
#: it is dropped when, re-fitted without it, the held-out loss rises by at most this fraction
CONFIRM_TOLERANCE = 0.01
#: ... or by at most this share of what the inputs explain at all (the loss of a constant
#: prediction: the target's variance; for classes, their entropy): near the noise floor 1% of
#: the loss is far less than any column that matters is worth
CONFIRM_SHARE = 0.001
#: the re-fit: this share of the training epochs (at least CONFIRM_MIN_EPOCHS)
CONFIRM_EPOCHS = 0.2
CONFIRM_MIN_EPOCHS = 5
#: a kept column whose zeroing moves the held-out loss by fewer standard errors is "unsure"
CONFIRM_Z = 2.0
#: fewer rows per column than this: the selection is flagged as possibly unstable
CONFIRM_ROWS_PER_COLUMN = 10
#: kept columns correlated at least this much (|r| over the training rows) are judged in pairs:
#: the cheaper to close is dropped if its closing stands (a proxy beside its variable)
CONFIRM_REDUNDANCY = 0.8


#: up to this many columns ``feature_penalty`` is the sparse model's (a mean over the columns);
#: beyond, it grows with the count, so that each column's pressure stays that of this many
FEATURE_REFERENCE_COLUMNS = 16


def _column_pressure(feature_penalty: float, columns: int) -> float:
    """The sparse model's ``feature_penalty`` for a table of ``columns`` columns.

    ``sparsify`` presses on the *mean* keep probability, so each column's share shrinks as
    1/columns: among 200 distractors a column is pressed 12 times less than among 16 and
    stays open on the little it helps the training loss. Past ``FEATURE_REFERENCE_COLUMNS``
    the estimators keep each column's pressure fixed instead.
    """
    return feature_penalty * max(1.0, columns / FEATURE_REFERENCE_COLUMNS)


def _importances(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Each column's share of the trained function's sensitivity: the mean over training
    rows of ``sum_k |d output_k / d x_j|`` on standardised inputs (so the columns compare),
    normalised to sum 1. A closed feature gate gives exactly 0. (The gates' keep
    probabilities saturate at 1 for every kept column and do not rank them; first-layer
    weight norms still mostly reflect their random initialisation after a short fit.)"""
    rows = x[:IMPORTANCE_ROWS].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(rows)
        out = out.reshape(len(rows), -1)
        total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        for k in range(out.shape[1]):
            (grad,) = torch.autograd.grad(out[:, k].sum(), rows, retain_graph=True)
            total += grad.abs().double().mean(dim=0)
    total = total.cpu()
    s = float(total.sum())
    return (total / s if s > 0 else torch.full_like(total, 1.0 / len(total))).numpy()


def _safe_scale(std: np.ndarray) -> np.ndarray:
    """Standard deviations with zeros (constant columns) replaced by 1."""
    std = np.asarray(std, dtype=np.float64).copy()
    std[~(std > 1e-12 * (1 + np.abs(std)))] = 1.0
    return std


class LumosRegressor(RegressorMixin, _LumosEstimator):
    """An MLP regressor that selects its input features and shrinks itself to a budget.

    Parameters
    ----------
    hidden : tuple of int, default=(128, 128)
        Widths of the hidden layers of the dense MLP LUMOS starts from.
    budget : float in (0, 1] or None, default=0.25
        Keep at most this fraction of the dense parameter count. ``None``: no size limit
        (features are still selected while ``feature_penalty > 0``; with ``feature_penalty=0``
        too, a plain dense MLP without gates is trained).
    epochs : int or "auto", default="auto"
        Passes over the training data (the budget and the feature pressure warm up over the
        first half). ``"auto"``: a dense probe of the same network trains on 80% of the rows
        until its validation loss has not improved for 10 epochs, and LUMOS trains 1.5 times
        its best epoch count (15 to 100; tables under 50 rows: 100), and at least 1,500
        optimiser steps when it has gates (small tables: up to 400 epochs). The count used
        is ``epochs_``.
    lr : float, default=1e-3
        Adam learning rate of the weights (gates learn at ``max(50 * lr, 0.05)``).
    batch_size : int, default=64
    feature_penalty : float, default=0.07
        Pressure on the input-feature gates; 0 keeps every feature.
    activation : {"silu", "relu", "tanh", "gelu"}, default="silu"
    standardize : bool, default=True
        Scale inputs and targets to zero mean and unit variance for training. The scaling is
        folded into the first and last layer afterwards, so predictions and the compacted
        model are in the original units.
    random_state : int, RandomState instance or None, default=None
        Seeds the weights, the gate noise and the batch order (``None``: a new seed per fit).
        The caller's global torch RNG is left as it was.
    device : str or torch.device or None, default=None
        Where to train and predict (``None``: CPU). The fitted models stay on this device.
    verbose : int, default=0
        1: a progress bar; 2: also one line per epoch.
    budget_on : {"params", "flops", "latency"}, default="params"
        What ``budget`` measures: the parameter count, the multiply-adds of a forward (for
        an MLP nearly the same; it matters for models with convolutions), or each layer's
        FLOPs weighted by its time per FLOP measured on the device (:mod:`lumos.latency`).
    width_multiple : int or "auto", default=1
        Cut each hidden width the budget leaves to a multiple of this (1: any width), so the
        compacted layers fit the device's vector and GEMM tiles; ``"auto"``: the multiple this
        device runs fastest per unit of width, measured once (:mod:`lumos.widths`).
    confirm : bool, default=True
        Hold out 20% of the rows (tables of 100 rows or more, features selected) and test the
        weakest kept columns on them: each kept column with under 10% of the largest
        importance, or whose zeroing does not raise the held-out loss by 2 standard errors,
        is closed and the network re-fitted briefly; the column stays closed when the
        held-out loss rises by at most 1% (or 0.1% of the target's variance, for
        classifiers of the label entropy). Drops the proxies (correlated copies) of true
        variables and memorised noise that training alone keeps. ``False``: every row
        trains and the selection is training's.

    Attributes
    ----------
    compacted_model_ : torch.nn.Module
        The plain compacted network (see :meth:`compact`).
    selected_features_ : ndarray of str
        Names of the kept columns (pandas column names, else ``x0, x1, ...``).
    support_ : ndarray of bool
        Mask of the kept columns (also ``get_support()``).
    feature_importances_ : ndarray of float
        Each column's share of the trained network's sensitivity to its inputs (mean absolute
        input gradient over the training rows, on standardised inputs), summing to 1: a
        ranking of every column, kept or not (exactly 0 for a dropped one). For the dense MLP
        (no gates) the same measure.
    selection_ : dict or None
        What ``confirm`` found (None when it did not run): ``held_out_rows``; ``tested`` and
        ``dropped`` (column names); ``loss_rise`` and ``z`` (arrays over all columns, 0 for
        closed ones): how much the held-out loss rises, relatively and in standard errors,
        when a kept column alone is zeroed, the evidence that it matters; ``unsure`` (kept
        columns under 2 standard errors) and ``unstable`` (those, or under 10 rows per
        column: a ``LumosWarning`` says so).
    n_params_, n_params_dense_ : int
        Parameters of the compacted and of the dense network.
    history_ : lumos.training.History
        Per-epoch loss, penalty and kept fraction.
    n_iter_ : int
        Epochs run.
    epochs_ : int
        The epoch count trained (``epochs``, or what ``"auto"`` chose).
    n_features_in_, feature_names_in_
        As in scikit-learn.

    Notes
    -----
    Multi-output regression: give ``y`` of shape ``(n_samples, n_outputs)``; every output
    shares the network and the selected features. Sample weights and sparse matrices are not
    supported. The estimator passes ``check_estimator`` without exemptions.
    """

    def fit(self, X, y):
        """Train, select features, compact. Returns ``self``."""
        X, y = validate_data(
            self, X, y, dtype=[np.float64, np.float32], multi_output=True, y_numeric=True
        )
        y = np.asarray(y, dtype=np.float64)
        self._y_ndim = y.ndim
        y2 = y.reshape(len(y), -1)
        if self.standardize:
            self._y_mean = y2.mean(axis=0)
            self._y_scale = _safe_scale(y2.std(axis=0))
        else:
            self._y_mean = np.zeros(y2.shape[1])
            self._y_scale = np.ones(y2.shape[1])
        return self._fit(X, y2)

    def _encode_targets(self, y):
        scaled = (y - self._y_mean) / self._y_scale
        return torch.tensor(scaled, dtype=torch.float32), y.shape[1]

    def _loss(self, pred, target):
        return F.mse_loss(pred, target)

    def _row_losses(self, pred, target):
        return (pred - target).pow(2).reshape(len(pred), -1).mean(dim=1)

    def _null_loss(self, target):
        return float(target.double().var(dim=0, unbiased=False).mean())

    def _output_scaling(self):
        return self._y_mean, self._y_scale

    def predict(self, X) -> np.ndarray:
        """Predictions in the units of ``y``: shape ``(n,)`` if fitted on 1-d ``y``."""
        out = self._forward(X)
        return out[:, 0] if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class LumosClassifier(ClassifierMixin, _LumosEstimator):
    """An MLP classifier (softmax, cross-entropy) that selects its input features and shrinks
    itself to a budget.

    Parameters are those of :class:`LumosRegressor`; ``standardize`` scales the inputs only.
    The network has one output (logit) per class, binary problems included.

    Attributes
    ----------
    classes_ : ndarray
        Class labels, in the order of ``predict_proba``'s columns and of the compacted model's
        logits. Other attributes as in :class:`LumosRegressor`.

    Notes
    -----
    Multi-class targets are supported; multi-label / multi-output classification is not.
    A ``y`` with a single class raises a ``ValueError``. The estimator passes
    ``check_estimator`` without exemptions.
    """

    def fit(self, X, y):
        """Train, select features, compact. Returns ``self``."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ConfigurationError(
                f"y holds only one class ({self.classes_[0]!r}); a classifier needs samples of "
                "at least 2 classes."
            )
        return self._fit(X, codes.reshape(-1))

    def _encode_targets(self, y):
        return torch.as_tensor(y, dtype=torch.long), len(self.classes_)

    def _loss(self, pred, target):
        return F.cross_entropy(pred, target)

    def _row_losses(self, pred, target):
        return F.cross_entropy(pred, target, reduction="none")

    def _null_loss(self, target):
        freq = torch.bincount(target).double() / len(target)
        freq = freq[freq > 0]
        return float(-(freq * freq.log()).sum())

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        logits = torch.from_numpy(self._forward(X))
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row."""
        logits = self._forward(X)
        return self.classes_[np.argmax(logits, axis=1)]
