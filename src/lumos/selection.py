"""Confirm a trained selection of input features on held-out data.

Training keeps a feature while it helps the *training* loss at all. A proxy of a true variable
(a measured quantity and a descriptor derived from it carry much of the same variance) or a
column the network has memorised noise with lives on with a small share of the work, and
nothing in the training loss tells it from a variable that matters. Held-out data does:

1. **Evidence.** For each kept feature, its gate alone is closed and the held-out loss is
   measured again: how much it rises (relative to the loss) and by how many standard errors
   (paired over the held-out samples). No re-fit: this is what the trained model draws from
   the feature.
2. **Test.** Kept features with little evidence (under ``z_min`` standard errors, or a rise
   under ``candidate`` of the largest feature's) are closed and the model re-fitted briefly by
   the caller's ``refit``. Those with no evidence (under ``z_min`` in both the paired mean test
   and a sign test) go first, all at once, then one at a time from the weakest, stopping at the
   first that is needed; a feature with half the evidence (``z_min / 2`` in either test) waits
   until the others without it are closed and has its evidence read again in that cleaner model
   (beside memorised noise a weak variable's rise is lost in their spread: damped_oscillator's
   gamma on 375 rows). Those with evidence but a small share are judged *alone*, each against
   what stood: in one group with dozens of memorised noise columns, the re-fit's gain from
   losing the noise hides what a true variable costs (projectile's launch angle among 200 noise
   columns on 500 rows was closed that way). The evidence is then read again and what has become
   weak since (a proxy that did work only beside the noise) is judged alone too, until nothing
   new is weak; each feature is judged alone at most once. Every closing starts from the trained
   model and gets the same one re-fit. The features without evidence are compared with a
   *control*: that re-fit with nothing closed (a re-fit also trains further, and on a model
   short of convergence that gain alone can hide what a closing costs); a feature judged alone,
   with the last closing that stood. A closing stands when the held-out loss rises over the
   control's by at most ``tolerance`` of it or ``share`` of ``null_loss`` (the loss of a
   constant prediction), or when the held-out data cannot tell the rise from noise: under
   ``z_min`` standard errors of the paired difference *and* under ``z_min`` in a sign test (as
   many samples got better as worse). The sign test is there because held-out losses are
   heavy-tailed: a few outlying samples can blow up the standard error of a rise that nearly every
   sample shows, and the mean test alone closed three of coulomb's four variables on 500 rows.
3. **Redundancy.** Given the inputs' rows (``data``), kept features that move together
   (``|r| >= redundancy`` over the rows) are judged in pairs, the most correlated first: each
   is closed in turn from the trained model and re-fitted three times as long, and the one
   whose closing costs less is closed if that closing stands against a control re-fitted as
   long. Each feature is in one judged pair at most, and at most ``MAX_PAIRS`` pairs are
   judged, so the round costs a bounded number of re-fits. A proxy of a variable (a derived
   descriptor, a second measurement) carries much of its variance, so the model leans on both
   and closing either alone, without a re-fit, costs a lot (step 1 gives both strong
   evidence); re-fitted, the variable alone explains what the proxy did and the proxy's
   closing stands. Measured in ``benchmarks/selection``: without this round three laws kept
   a proxy (r = 0.9) beside its variable (Planck and relativistic energy among 200 noise
   columns on 500 rows, a damped oscillator on 4,000 rows); with it, none.
4. **Answer.** The evidence again, for the features that stay; those still under ``z_min``
   are *unsure* and the selection *unstable*.

The estimators (:class:`lumos.LumosRegressor`) run this on 20% of the rows they hold out;
any training loop can (see :func:`confirm_features`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import ConfigurationError, InputError
from .sparse_model import SparseModel


@dataclass
class FeatureEvidence:
    """What :func:`confirm_features` found, per feature input of the model.

    ``loss_rise[name][i]``: relative rise of the held-out loss when feature ``i`` alone is
    closed (0 for closed features); ``z``: that rise in standard errors of the paired
    difference (``inf`` when it is exact, e.g. one held-out value); ``tested`` / ``dropped``:
    feature indices put to the test and closed by it; ``unsure``: kept features under
    ``z_min``; ``unstable``: whether any feature is unsure.
    """

    loss_rise: dict[str, Tensor] = field(default_factory=dict)
    z: dict[str, Tensor] = field(default_factory=dict)
    tested: dict[str, list[int]] = field(default_factory=dict)
    dropped: dict[str, list[int]] = field(default_factory=dict)
    unsure: dict[str, list[int]] = field(default_factory=dict)

    @property
    def unstable(self) -> bool:
        return any(self.unsure.values())


def confirm_features(
    sm: SparseModel,
    held_out_losses: Callable[[], Tensor],
    refit: Callable[[], None] | None = None,
    *,
    null_loss: float | None = None,
    tolerance: float = 0.01,
    share: float = 0.001,
    candidate: float = 0.1,
    z_min: float = 2.0,
    data: Tensor | dict[str, Tensor] | None = None,
    redundancy: float = 0.8,
) -> FeatureEvidence:
    """Close the kept input features that held-out data does not support (module docstring).

    Call it after training (the gates are frozen where they are, if training has not done so).
    The model is left with the closed features closed and, where ``refit`` ran, the re-fitted
    weights; a test that fails puts the model back as the last closing that stood left it.

    Args:
        sm: the trained sparse model.
        held_out_losses: computes the loss of each held-out sample with ``sm`` as it is now
            (eval mode, no grad is fine), as a 1-D tensor; a single number works too but
            gives no standard errors (every rise then counts as sure).
        refit: re-fits the weights briefly with the gates as they are (a few epochs of the
            task loss); None: features are only closed where the loss allows it as is.
        null_loss: the held-out loss of a constant prediction (e.g. the target's variance),
            for ``share``; None: only ``tolerance`` applies.
        tolerance: a closing stands when the held-out loss rises by at most this fraction...
        share: ... or by at most this fraction of ``null_loss``.
        candidate: features whose rise is under this share of the largest are tested.
        z_min: features whose rise is under this many standard errors are tested (alone
            when the sign test sees at least this many), and a closing whose rise over the
            control is under this many, in both the paired mean and the sign test, stands.
        data: rows of the model's feature inputs (the tensor of a model with one feature
            input, or a dict by input name), for the redundancy round; None skips it.
        redundancy: kept features whose values correlate at least this much (absolute
            Pearson r over ``data``, each position along the feature dim a column) are
            judged in pairs.

    Returns:
        A :class:`FeatureEvidence`.

    Raises:
        ConfigurationError: a threshold is negative or ``redundancy`` is outside (0, 1];
            InputError: ``held_out_losses`` returned no finite losses, or ``data`` does not
            match the model's feature inputs.

    Example:
        >>> import torch, lumos
        >>> from lumos.training import train
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(256, 4), torch.zeros(256, 1)
        >>> x[:, 3] = 0.9 * x[:, 0] + 0.44 * torch.randn(256)  # a proxy of column 0
        >>> y[:, 0] = 2 * x[:, 0] - x[:, 1]
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
        ...                           torch.nn.Linear(16, 1))
        >>> sm = lumos.sparsify(net, x[:8], feature_penalty=0.0)
        >>> _ = train(sm, (x[:192], y[:192]), epochs=60, lr=1e-2, progress=False)
        >>> def losses():
        ...     with torch.no_grad():
        ...         return (sm(x[192:]) - y[192:]).pow(2).squeeze(1)
        >>> def refit():
        ...     train(sm, (x[:192], y[:192]), epochs=10, lr=1e-2, progress=False)
        >>> ev = lumos.confirm_features(sm, losses, refit, null_loss=float(y.var()),
        ...                             data=x[:192])  # rows for the redundancy round
        >>> sorted(sm.selected_features()["input"])
        [0, 1]
    """
    for name, value in (("tolerance", tolerance), ("share", share), ("candidate", candidate),
                        ("z_min", z_min)):
        if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
            raise ConfigurationError(f"confirm_features: {name} must be a number >= 0, got "
                                     f"{value!r}.")
    if not (isinstance(redundancy, (int, float)) and 0.0 < redundancy <= 1.0):
        raise ConfigurationError(f"confirm_features: redundancy must lie in (0, 1], got "
                                 f"{redundancy!r}.")
    correlations = _feature_correlations(sm, data)
    was_training = sm.training
    sm.eval()
    if not sm.gates.frozen:
        sm.gates.freeze(sm.kept_mask())
    try:
        return _Confirmation(sm, held_out_losses, refit, null_loss, tolerance, share,
                             candidate, z_min, correlations, redundancy).run()
    finally:
        sm.train(was_training)


class _Confirmation:
    def __init__(self, sm: SparseModel, losses: Callable[[], Tensor],
                 refit: Callable[[], None] | None, null_loss: float | None, tolerance: float,
                 share: float, candidate: float, z_min: float,
                 correlations: dict[str, Tensor] | None = None, redundancy: float = 0.8) -> None:
        self.sm, self.losses, self.refit = sm, losses, refit
        self.null, self.tolerance, self.share = null_loss, tolerance, share
        self.candidate, self.z_min = candidate, z_min
        self.correlations, self.redundancy = correlations or {}, redundancy
        #: the pair round's control: held-out losses with ``pair_control_for`` closed
        self.pair_control: Tensor = torch.empty(0)
        self.pair_control_for: list[tuple[str, int]] | None = None
        #: (input name, index in that input) -> gate index
        self.gates = {(name, i): gates.start + i
                      for name, (size, gates) in sm._feature_gates().items()
                      if gates is not None for i in range(size)}
        #: set by run() before any closing: the trained state, the last closing that stood,
        #: and the per-sample held-out loss of a re-fit with nothing closed
        self.trained: dict[str, Tensor] = {}
        self.stood: dict[str, Tensor] = {}
        self.control: Tensor = torch.empty(0)
        #: the per-sample held-out loss of the last closing that stood (the control until one)
        self.stood_losses: Tensor = torch.empty(0)

    def held_out(self) -> Tensor:
        self.sm.eval()
        with torch.no_grad():
            value = torch.as_tensor(self.losses()).detach().double().flatten()
        if value.numel() == 0 or not bool(torch.isfinite(value).all()):
            raise InputError(
                "confirm_features: held_out_losses() must return the finite loss of each "
                f"held-out sample, got {value.numel()} values"
                + ("" if value.numel() == 0 else " with NaN or inf") + ".")
        return value

    def kept(self) -> list[tuple[str, int]]:
        values = self.sm.gates.frozen_values
        return [key for key, g in self.gates.items() if float(values[g]) > 0]

    def evidence(self) -> tuple[dict, dict, dict]:
        """Per kept feature: the relative rise of the held-out loss when it alone is closed,
        that rise in paired standard errors, and in a sign test's (:func:`_sign_z`)."""
        current = self.held_out()
        scale = max(float(current.mean()), 1e-12)
        rise: dict = {}
        z: dict = {}
        sign: dict = {}
        values = self.sm.gates.frozen_values
        for key in self.kept():
            g = self.gates[key]
            saved = values[g].clone()
            values[g] = 0.0
            try:
                diff = self.held_out() - current
            finally:
                values[g] = saved
            rise[key] = float(diff.mean()) / scale
            z[key] = _z(diff)
            sign[key] = _sign_z(diff)
        return rise, z, sign

    def closed_and_refitted(self, columns: list[tuple[str, int]], refits: int = 1) -> Tensor:
        """From the trained model, close ``columns`` and re-fit (``refits`` times); the
        held-out losses."""
        self.sm.load_state_dict(self.trained)
        index = torch.tensor([self.gates[c] for c in columns], dtype=torch.long,
                             device=self.sm.gates.shut.device)
        self.sm.gates.shut_gates(index)
        self.sm.gates.frozen_values[index] = 0.0
        if self.refit is not None:
            for _ in range(refits):
                self.refit()
        return self.held_out()

    def closing_stands(self, columns: list[tuple[str, int]]) -> bool:
        """From the trained model, close ``columns``, re-fit, and keep that if the held-out
        loss allows (module docstring); otherwise go back to the last closing that stood."""
        return self.keep_if_allowed(self.closed_and_refitted(columns))

    def keep_if_allowed(self, losses: Tensor) -> bool:
        """Keep the model as it is if ``losses`` (its held-out losses) rise over the
        control's by no more than allowed, else go back to the last closing that stood."""
        base = float(self.control.mean())
        allowed = self.tolerance * base
        if self.null is not None:
            allowed = max(allowed, self.share * self.null)
        if losses.shape == self.control.shape:
            diff = losses - self.control
            rise = float(diff.mean())
            unclear = _z(diff) < self.z_min and _sign_z(diff) < self.z_min
        else:  # held_out_losses() changed its length: no pairing, every rise is sure
            rise, unclear = float(losses.mean()) - base, False
        if rise <= allowed or unclear:
            self.stood = copy.deepcopy(self.sm.state_dict())
            self.stood_losses = losses
            return True
        self.sm.load_state_dict(self.stood)
        return False

    def redundant_pairs(self) -> list[tuple[tuple[str, int], tuple[str, int]]]:
        """Pairs of kept features of one input whose values correlate at least
        ``redundancy``, the most correlated first."""
        kept = self.kept()
        pairs = []
        for x, (name, i) in enumerate(kept):
            r = self.correlations.get(name)
            if r is None:
                continue
            for other, j in kept[x + 1:]:
                if other == name and float(r[i, j]) >= self.redundancy:
                    pairs.append((float(r[i, j]), (name, i), (name, j)))
        return [(a, b) for _, a, b in sorted(pairs, key=lambda t: -t[0])]

    def close_cheaper(self, dropped: list[tuple[str, int]], first: tuple[str, int],
                      second: tuple[str, int]) -> tuple[str, int] | None:
        """Close each of two correlated features in turn (with ``dropped``, re-fitted
        ``PAIR_REFITS`` times) and keep the cheaper closing if it stands against a control
        re-fitted as long with only ``dropped`` closed; the feature it closed, or None."""
        if self.pair_control_for != dropped:
            self.pair_control = self.closed_and_refitted(dropped, PAIR_REFITS)
            self.pair_control_for = list(dropped)
        self.control = self.pair_control
        losses_first = self.closed_and_refitted(dropped + [first], PAIR_REFITS)
        state_first = copy.deepcopy(self.sm.state_dict())
        losses_second = self.closed_and_refitted(dropped + [second], PAIR_REFITS)
        if float(losses_first.mean()) <= float(losses_second.mean()):
            self.sm.load_state_dict(state_first)
            losses, key = losses_first, first
        else:
            losses, key = losses_second, second
        return key if self.keep_if_allowed(losses) else None

    def run(self) -> FeatureEvidence:
        rise, z, sign = self.evidence()
        top = max(rise.values(), default=0.0)
        weak = sorted((k for k in rise if rise[k] < self.candidate * top or z[k] < self.z_min),
                      key=lambda k: rise[k])
        # supported: either test sees the rise (the mean test alone misses a variable whose
        # closing hurts nearly every sample when a few outliers blow up its standard error)
        unsupported = [k for k in weak if max(z[k], sign[k]) < self.z_min]
        supported = [k for k in weak if max(z[k], sign[k]) >= self.z_min]
        dropped: list[tuple[str, int]] = []
        paired: list[tuple[str, int]] = []  # judged in the redundancy round
        if weak or self.redundant_pairs():
            self.trained = copy.deepcopy(self.sm.state_dict())
            self.stood = self.trained
            if self.refit is not None:
                self.refit()
            self.control = self.stood_losses = self.held_out()
            self.sm.load_state_dict(self.trained)
        if weak:
            # Some evidence (half of z_min in either test) is held back from the first group:
            # beside the memorised noise a weak true variable's rise is lost in their spread
            # (damped_oscillator's gamma on 375 rows: sign z 1.96). Once the noise is closed
            # its evidence is read again, in the cleaner model, and judged as any other's.
            hinted = [k for k in unsupported
                      if rise[k] > 0 and max(z[k], sign[k]) >= self.z_min / 2]
            hopeless = [k for k in unsupported if k not in hinted]
            if hinted and hopeless and self.closing_stands(hopeless):
                dropped = list(hopeless)
                rise, z, sign = self.evidence()
                unsupported = [k for k in hinted if max(z[k], sign[k]) < self.z_min]
                supported = supported + [k for k in hinted if k not in unsupported]
                self.control = self.stood_losses
            if unsupported and self.closing_stands(dropped + unsupported):
                dropped += unsupported
            else:
                for key in unsupported:
                    if not self.closing_stands(dropped + [key]):
                        break
                    dropped.append(key)
            # A small share with held-out evidence is judged alone, against what stood: in a
            # group with the unsupported ones, the re-fit's gain from losing dozens of memorised
            # noise columns hides the loss of a true variable (projectile's angle on 500 rows).
            # Closings move the work between the features that stay, so the evidence is read
            # again after each round and what has become weak is judged the same way (a proxy
            # that looked needed beside the noise); each feature is judged alone once.
            pending = supported
            while True:
                for key in pending:
                    self.control = self.stood_losses
                    if self.closing_stands(dropped + [key]):
                        dropped.append(key)
                rise, z, _ = self.evidence()
                top = max(rise.values(), default=0.0)
                pending = sorted((k for k in rise if k not in weak and (
                    rise[k] < self.candidate * top or z[k] < self.z_min)), key=lambda k: rise[k])
                if not pending:
                    break
                weak += pending
        judged: set[tuple[str, int]] = set()
        for first, second in self.redundant_pairs():
            if {first, second} & (set(dropped) | judged):
                continue  # each feature in one pair at most: the cost is bounded
            if len(judged) >= 2 * MAX_PAIRS:
                break
            judged |= {first, second}
            paired += [k for k in (first, second) if k not in weak and k not in paired]
            key = self.close_cheaper(dropped, first, second)
            if key is not None:
                dropped.append(key)
        rise, z, _ = self.evidence()
        out = FeatureEvidence()
        for name, (size, gates) in self.sm._feature_gates().items():
            if gates is None:
                continue
            out.loss_rise[name] = torch.tensor([rise.get((name, i), 0.0) for i in range(size)])
            out.z[name] = torch.tensor([z.get((name, i), 0.0) for i in range(size)])
            out.tested[name] = [i for n, i in weak + paired if n == name]
            out.dropped[name] = [i for n, i in dropped if n == name]
            out.unsure[name] = [i for (n, i), v in z.items() if n == name and v < self.z_min]
        return out


#: re-fits per closing in the redundancy round (and for its control). A proxy's closing
#: needs the longer re-fit: the variable must take back the work the model split between
#: them (benchmarks/selection, measured: Planck's wavelength proxy on 500 rows cost +43% of
#: the held-out loss after one re-fit and -2% after three; a damped oscillator's frequency
#: proxy on 4,000 rows +0.12% and +0.06% of the target variance, against 0.1% allowed).
PAIR_REFITS = 3
#: the most correlated pairs judged (each costs 2 * PAIR_REFITS re-fits, the control up to as
#: many again): a table of many descriptors that all move together is not re-fitted for hours
MAX_PAIRS = 8


def _feature_correlations(sm: SparseModel, data: Tensor | dict[str, Tensor] | None
                          ) -> dict[str, Tensor]:
    """Absolute Pearson correlation between the feature positions of each feature input of
    ``sm``, over ``data`` (every other position of a row a sample: pixels, nodes, tokens)."""
    if data is None:
        return {}
    inputs = {name: size for name, (size, gates) in sm._feature_gates().items()
              if gates is not None}
    if isinstance(data, Tensor):
        if len(inputs) != 1:
            raise InputError(
                f"confirm_features: data is one tensor but the model has {len(inputs)} feature "
                f"inputs ({sorted(inputs)}); pass a dict of rows by input name.")
        data = {next(iter(inputs)): data}
    if not isinstance(data, dict):
        raise InputError(f"confirm_features: data must be a tensor or a dict of tensors by "
                         f"input name, got {type(data).__name__}.")
    out = {}
    for name, value in data.items():
        if name not in inputs:
            raise InputError(f"confirm_features: data names '{name}', which is not a feature "
                             f"input of the model (those are {sorted(inputs)}).")
        dim, size = sm.inputs.feature_dims[name]
        if not isinstance(value, Tensor) or value.dim() < -dim or value.shape[dim] != size:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise InputError(
                f"confirm_features: data['{name}'] has shape {shape}, but the model reads "
                f"{size} features along dim {dim}; pass rows shaped like its inputs.")
        columns = value.detach().movedim(dim, -1).reshape(-1, size).double().cpu()
        if columns.shape[0] < 3:
            continue
        out[name] = torch.corrcoef(columns.T).abs().nan_to_num(0.0)
    return out


def _sign_z(diff: Tensor) -> float:
    """How many more samples got worse than better, in standard deviations of a fair coin."""
    worse, better = int((diff > 0).sum()), int((diff < 0).sum())
    n = worse + better
    return (worse - better) / math.sqrt(n) if n else 0.0


def _z(diff: Tensor) -> float:
    """The mean of a paired difference in its standard errors (``inf`` when it is exact)."""
    mean = float(diff.mean())
    se = float(diff.std()) / math.sqrt(diff.numel()) if diff.numel() > 1 else 0.0
    return mean / se if se > 0 else (math.inf if mean > 0 else 0.0)
