"""Laws and data the selection rule was never developed on (``--laws unseen``).

Every threshold in :mod:`lumos.selection` and the estimators' defaults was chosen while looking
at the 13 laws of :data:`lumos.workloads.laws.LAWS` with Gaussian noise columns. A rule tuned to
them can pass there and fail on the next table a scientist brings, so this set is kept apart:
six more laws with forms the 13 do not have (a fourth power, an Arrhenius exponential of a
ratio, a logarithm of a ratio, a rational Doppler factor, a sum of a product and a sine, a
squared sinc), and noise columns that are not Gaussian (uniform, Student-t with 3 degrees of
freedom, log-normal, binary, Gaussian, in turn: heavy tails, skew and ties that a method tuned
on N(0, 1) distractors has not met). Results are written apart from the main table
(``selection_unseen.{json,md}``) and are not used to choose anything.
"""

from __future__ import annotations

import numpy as np

from lumos.workloads.laws import Law


def _poiseuille(x: np.ndarray) -> np.ndarray:
    r, dp, mu, length = x.T
    return np.pi * r**4 * dp / (8.0 * mu * length)


def _arrhenius(x: np.ndarray) -> np.ndarray:
    a, ea, t = x.T
    return a * np.exp(-ea / t)  # R = 1


def _rocket(x: np.ndarray) -> np.ndarray:
    ve, m0, m1 = x.T
    return ve * np.log(m0 / m1)


def _doppler(x: np.ndarray) -> np.ndarray:
    f, v_r, v_s = x.T
    return f * (1.0 + v_r) / (1.0 - v_s)  # c = 1


def _lorentz(x: np.ndarray) -> np.ndarray:
    q, e, v, b, theta = x.T
    return q * (e + v * b * np.sin(theta))


def _single_slit(x: np.ndarray) -> np.ndarray:
    i0, a, theta, lam = x.T
    beta = np.pi * a * np.sin(theta) / lam
    return i0 * (np.sin(beta) / beta) ** 2


UNSEEN_LAWS: dict[str, Law] = {law.name: law for law in (
    Law("poiseuille", "Poiseuille flow rate Q = pi r^4 dp / (8 mu L)",
        ("r", "dp", "mu", "L"), ((0.5, 1.5), (1.0, 5.0), (0.5, 2.0), (1.0, 3.0)), _poiseuille),
    Law("arrhenius", "Arrhenius rate k = A exp(-Ea / (R T))",
        ("A", "Ea", "T"), ((1.0, 5.0), (1.0, 4.0), (0.5, 2.0)), _arrhenius),
    Law("rocket", "Tsiolkovsky rocket equation dv = ve ln(m0 / m1)",
        ("ve", "m0", "m1"), ((1.0, 4.0), (3.0, 6.0), (1.0, 2.5)), _rocket),
    Law("doppler", "Doppler shift f' = f (c + v_r) / (c - v_s)",
        ("f", "v_r", "v_s"), ((1.0, 3.0), (0.0, 0.5), (0.0, 0.5)), _doppler),
    Law("lorentz", "Lorentz force magnitude F = q (E + v B sin theta)",
        ("q", "E", "v", "B", "theta"), ((1.0, 3.0), (0.0, 2.0), (1.0, 3.0), (0.5, 1.5),
                                        (0.2, 1.4)), _lorentz),
    Law("single_slit", "Single-slit diffraction I = I0 (sin b / b)^2, b = pi a sin(theta) / lam",
        ("I0", "a", "theta", "lam"), ((1.0, 2.0), (1.0, 2.0), (0.05, 0.5), (0.5, 1.0)),
        _single_slit),
)}

#: the distributions the noise columns of an unseen set cycle through
NOISE_KINDS = ("uniform", "student_t3", "lognormal", "binary", "gaussian")


def mixed_noise(n_rows: int, n_cols: int, rng: np.random.Generator) -> np.ndarray:
    """``n_cols`` standardised noise columns drawn from :data:`NOISE_KINDS` in turn."""
    cols = []
    for j in range(n_cols):
        kind = NOISE_KINDS[j % len(NOISE_KINDS)]
        if kind == "uniform":
            c = rng.uniform(-1.0, 1.0, n_rows)
        elif kind == "student_t3":
            c = rng.standard_t(3, n_rows)
        elif kind == "lognormal":
            c = rng.lognormal(0.0, 1.0, n_rows)
        elif kind == "binary":
            c = (rng.random(n_rows) < 0.3).astype(np.float64)
        else:
            c = rng.standard_normal(n_rows)
        sd = c.std()
        cols.append((c - c.mean()) / (sd if sd > 0 else 1.0))
    return np.stack(cols, axis=1) if cols else np.zeros((n_rows, 0))
