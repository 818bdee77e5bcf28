"""Closed-form physics laws as regression data with planted irrelevant input columns.

Each :class:`Law` is a known formula over a handful of physical variables. :func:`make_law_data`
samples the variables uniformly over their ranges, evaluates the law, and appends columns of pure
noise that the target does not depend on. Because the ground truth is known exactly, the data
answers the question that matters for L0 feature selection: *did the model keep the physical
columns and drop the planted ones?*

Units are dimensionless/convenient (constants such as ``G``, ``k``, ``R``, ``c``, ``sigma`` are set
to 1 or absorbed) and ranges are kept narrow (a factor of 2-4 per variable for multiplicative laws)
so that targets are O(1)-O(10) and well conditioned for an MLP. Every variable moves the target
by a material amount over its range (checked in ``tests/test_laws.py``), so a correct selector has
no excuse for dropping one.

This module depends only on numpy and the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["LAWS", "Law", "RegressionData", "make_law_data", "train_val_split"]


@dataclass(frozen=True)
class Law:
    """A closed-form law ``target = formula(X)`` over named physical variables.

    ``formula`` takes an ``(n, len(variables))`` array whose columns follow ``variables`` and
    returns the ``(n,)`` target. ``ranges`` gives the uniform sampling interval per variable.
    """

    name: str
    description: str
    variables: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...]
    formula: Callable[[np.ndarray], np.ndarray]

    def __post_init__(self) -> None:
        if len(self.variables) != len(self.ranges):
            raise ValueError(
                f"law {self.name!r}: {len(self.variables)} variables but {len(self.ranges)} ranges"
            )
        for var, (lo, hi) in zip(self.variables, self.ranges, strict=True):
            if not lo < hi:
                raise ValueError(f"law {self.name!r}: empty range ({lo}, {hi}) for {var!r}")

    @property
    def n_variables(self) -> int:
        return len(self.variables)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` points uniformly from the variable ranges, shape ``(n, n_variables)``."""
        lo = np.array([r[0] for r in self.ranges], dtype=np.float64)
        hi = np.array([r[1] for r in self.ranges], dtype=np.float64)
        return rng.uniform(lo, hi, size=(n, self.n_variables))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.formula(np.asarray(x, dtype=np.float64)), dtype=np.float64)


# --- formulas (columns in the order of each law's ``variables``) ---------------------------------


def _ideal_gas(x: np.ndarray) -> np.ndarray:
    n, t, v = x.T
    return n * t / v  # P = n R T / V with R = 1


def _van_der_waals(x: np.ndarray) -> np.ndarray:
    n, t, v, a, b = x.T
    return n * t / (v - n * b) - a * n**2 / v**2


def _gravity(x: np.ndarray) -> np.ndarray:
    m1, m2, r = x.T
    return m1 * m2 / r**2  # G = 1


def _coulomb(x: np.ndarray) -> np.ndarray:
    q1, q2, r, eps_r = x.T
    return q1 * q2 / (eps_r * r**2)  # k = 1


def _pendulum(x: np.ndarray) -> np.ndarray:
    length, g, theta0 = x.T
    correction = 1.0 + theta0**2 / 16.0 + 11.0 * theta0**4 / 3072.0
    return 2.0 * np.pi * np.sqrt(length / g) * correction


def _projectile(x: np.ndarray) -> np.ndarray:
    v0, theta, g = x.T
    return v0**2 * np.sin(2.0 * theta) / g


def _drag(x: np.ndarray) -> np.ndarray:
    rho, v, cd, area = x.T
    return 0.5 * rho * v**2 * cd * area


def _relativistic_ke(x: np.ndarray) -> np.ndarray:
    m, v, c = x.T
    gamma = 1.0 / np.sqrt(1.0 - (v / c) ** 2)
    return m * c**2 * (gamma - 1.0)


def _stefan_boltzmann(x: np.ndarray) -> np.ndarray:
    emissivity, area, t = x.T
    return emissivity * area * t**4  # sigma = 1


def _bernoulli(x: np.ndarray) -> np.ndarray:
    p1, rho, v1, v2, dh = x.T
    return p1 + 0.5 * rho * (v1**2 - v2**2) + rho * dh  # g = 1, dh = h1 - h2


def _damped_oscillator(x: np.ndarray) -> np.ndarray:
    amp, gamma, omega, t = x.T
    return amp * np.exp(-gamma * t) * np.cos(omega * t)


def _planck(x: np.ndarray) -> np.ndarray:
    emissivity, lam, t = x.T
    # Grey-body spectral radiance with h = c = k = 1 absorbed: eps / lam^5 / (exp(1/(lam T)) - 1).
    return 10.0 * emissivity / lam**5 / np.expm1(1.0 / (lam * t))


def _kepler(x: np.ndarray) -> np.ndarray:
    a, m_star, m_planet = x.T
    return 2.0 * np.pi * np.sqrt(a**3 / (m_star + m_planet))  # G = 1


_LAW_LIST: tuple[Law, ...] = (
    Law(
        "ideal_gas",
        "Ideal gas pressure P = n R T / V",
        ("n", "T", "V"),
        ((1.0, 3.0), (1.0, 4.0), (1.0, 3.0)),
        _ideal_gas,
    ),
    Law(
        "van_der_waals",
        "Van der Waals pressure P = n R T / (V - n b) - a n^2 / V^2",
        ("n", "T", "V", "a", "b"),
        ((1.0, 2.0), (1.0, 3.0), (2.0, 4.0), (0.5, 2.0), (0.1, 0.5)),
        _van_der_waals,
    ),
    Law(
        "gravity",
        "Newtonian gravity F = G m1 m2 / r^2",
        ("m1", "m2", "r"),
        ((1.0, 4.0), (1.0, 4.0), (1.0, 2.0)),
        _gravity,
    ),
    Law(
        "coulomb",
        "Coulomb force in a dielectric F = k q1 q2 / (eps_r r^2)",
        ("q1", "q2", "r", "eps_r"),
        ((1.0, 3.0), (1.0, 3.0), (0.7, 1.5), (1.0, 3.0)),
        _coulomb,
    ),
    Law(
        "pendulum",
        "Pendulum period with finite-amplitude correction "
        "T = 2 pi sqrt(L/g) (1 + theta0^2/16 + 11 theta0^4/3072)",
        ("L", "g", "theta0"),
        ((0.5, 2.0), (5.0, 15.0), (0.1, 1.5)),
        _pendulum,
    ),
    Law(
        "projectile",
        "Projectile range on flat ground R = v0^2 sin(2 theta) / g",
        ("v0", "theta", "g"),
        ((2.0, 6.0), (0.2, 1.3), (5.0, 15.0)),
        _projectile,
    ),
    Law(
        "drag",
        "Aerodynamic drag force F = 0.5 rho v^2 Cd A",
        ("rho", "v", "Cd", "A"),
        ((1.0, 2.0), (1.0, 3.0), (0.5, 1.2), (1.0, 2.0)),
        _drag,
    ),
    Law(
        "relativistic_ke",
        "Relativistic kinetic energy K = m c^2 (1 / sqrt(1 - v^2/c^2) - 1)",
        ("m", "v", "c"),
        ((1.0, 3.0), (0.3, 0.9), (1.0, 1.5)),
        _relativistic_ke,
    ),
    Law(
        "stefan_boltzmann",
        "Stefan-Boltzmann radiated power P = eps sigma A T^4",
        ("emissivity", "A", "T"),
        ((0.3, 1.0), (1.0, 2.0), (1.0, 1.8)),
        _stefan_boltzmann,
    ),
    Law(
        "bernoulli",
        "Bernoulli downstream pressure P2 = P1 + rho (v1^2 - v2^2) / 2 + rho g (h1 - h2)",
        ("P1", "rho", "v1", "v2", "dh"),
        ((5.0, 10.0), (1.0, 2.0), (1.0, 3.0), (1.0, 3.0), (-1.0, 2.0)),
        _bernoulli,
    ),
    Law(
        "damped_oscillator",
        "Damped oscillator displacement x = A exp(-gamma t) cos(omega t)",
        ("A", "gamma", "omega", "t"),
        ((1.0, 2.0), (0.1, 0.5), (1.0, 2.5), (0.0, 3.0)),
        _damped_oscillator,
    ),
    Law(
        "planck",
        "Grey-body Planck spectral radiance B = eps (2hc^2/lam^5) / (exp(hc/(lam k T)) - 1)",
        ("emissivity", "lam", "T"),
        ((0.5, 1.0), (0.8, 1.6), (0.8, 1.6)),
        _planck,
    ),
    Law(
        "kepler",
        "Kepler's third law T = 2 pi sqrt(a^3 / (G (M + m)))",
        ("a", "M", "m"),
        ((1.0, 2.0), (1.0, 2.0), (0.5, 2.0)),
        _kepler,
    ),
)

LAWS: dict[str, Law] = {law.name: law for law in _LAW_LIST}
"""All built-in laws by name."""


@dataclass
class RegressionData:
    """Standardized regression arrays plus the ground truth about which columns matter.

    ``X`` and ``y`` are float32 with zero-mean, unit-std columns. The statistics used (of the
    whole generated set, before any split) are kept in ``x_mean``/``x_std``/``y_mean``/``y_std``
    so the raw physical values can be recovered as ``X * x_std + x_mean``.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    true_features: list[int]
    noise_features: list[int]
    name: str
    x_mean: np.ndarray | None = None
    x_std: np.ndarray | None = None
    y_mean: float | None = None
    y_std: float | None = None

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


def _resolve_law(law: str | Law) -> Law:
    if isinstance(law, Law):
        return law
    if not isinstance(law, str):
        raise TypeError(f"law must be a law name or a Law, got {type(law).__name__}")
    try:
        return LAWS[law]
    except KeyError:
        raise KeyError(f"unknown law {law!r}; available laws: {', '.join(sorted(LAWS))}") from None


def _standardize(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant column stays constant (0) instead of NaN
    return (a - mean) / std, mean, std


def make_law_data(
    law: str | Law,
    n_samples: int = 4096,
    n_noise: int = 12,
    seed: int = 0,
    noise_std: float = 0.0,
    shuffle_columns: bool = True,
) -> RegressionData:
    """Sample ``law`` and return standardized data with ``n_noise`` planted N(0, 1) columns.

    Args:
        law: a name from :data:`LAWS` or a :class:`Law`.
        n_samples: number of rows (at least 2, so that a standard deviation exists).
        n_noise: number of irrelevant iid N(0, 1) columns appended to the physical ones.
        seed: seed of the ``numpy.random.default_rng`` that draws everything; the same seed gives
            identical data, and with the same seed ``shuffle_columns`` only permutes the columns.
        noise_std: Gaussian label noise, as a fraction of the clean target's std, added to ``y``
            before standardizing.
        shuffle_columns: permute the columns with the seeded rng, so that the physical variables
            are not always the first columns; names and index lists follow the permutation.

    ``X`` and ``y`` are standardized with the mean/std of the full generated set (not of a
    training split): the point of this data is feature selection, and the tiny leak of
    validation statistics into the scaling is harmless and keeps the API simple.
    """
    spec = _resolve_law(law)
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
        raise TypeError(f"n_samples must be an int, got {type(n_samples).__name__}")
    if isinstance(n_noise, bool) or not isinstance(n_noise, (int, np.integer)):
        raise TypeError(f"n_noise must be an int, got {type(n_noise).__name__}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 (a std needs two rows), got {n_samples}")
    if n_noise < 0:
        raise ValueError(f"n_noise must be >= 0, got {n_noise}")
    if not np.isfinite(noise_std) or noise_std < 0:
        raise ValueError(
            f"noise_std must be a finite fraction >= 0 of the target std, got {noise_std}"
        )

    n_samples, n_noise = int(n_samples), int(n_noise)
    rng = np.random.default_rng(seed)
    phys = spec.sample(n_samples, rng)
    y = spec(phys)
    if y.shape != (n_samples,):
        raise ValueError(
            f"law {spec.name!r}: formula returned shape {y.shape}, expected ({n_samples},)"
        )
    if not np.all(np.isfinite(y)):
        raise ValueError(f"law {spec.name!r}: formula produced non-finite values")
    noise = rng.standard_normal((n_samples, n_noise))
    # Always drawn, so that noise_std changes y only (same X and column order for any noise_std).
    label_noise = rng.standard_normal(n_samples)
    if noise_std > 0:
        y = y + noise_std * float(y.std()) * label_noise

    raw = np.concatenate([phys, noise], axis=1)
    names = list(spec.variables) + [f"noise_{i}" for i in range(n_noise)]
    k = spec.n_variables
    d = raw.shape[1]
    # The permutation is drawn last so that it does not change any sampled value.
    perm = rng.permutation(d) if shuffle_columns else np.arange(d)
    raw = raw[:, perm]
    names = [names[j] for j in perm]
    true_features = [i for i, j in enumerate(perm) if j < k]
    noise_features = [i for i, j in enumerate(perm) if j >= k]

    X, x_mean, x_std = _standardize(raw)
    ys, y_mean, y_std = _standardize(y[:, None])
    return RegressionData(
        X=X.astype(np.float32),
        y=ys.astype(np.float32),
        feature_names=names,
        true_features=true_features,
        noise_features=noise_features,
        name=spec.name,
        x_mean=x_mean,
        x_std=x_std,
        y_mean=float(y_mean[0]),
        y_std=float(y_std[0]),
    )


def train_val_split(
    data: RegressionData, val_fraction: float = 0.2, seed: int = 0
) -> tuple[RegressionData, RegressionData]:
    """Split rows into (train, validation) after a seeded shuffle; metadata is copied to both.

    The validation part has ``round(n * val_fraction)`` rows (at least 1), and the training part
    keeps at least one row. Standardization statistics are not recomputed.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = data.n_samples
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise ValueError(
            f"cannot split {n} rows with val_fraction={val_fraction}: no training rows would remain"
        )
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = perm[:n_val], perm[n_val:]

    def part(idx: np.ndarray) -> RegressionData:
        return RegressionData(
            X=data.X[idx],
            y=data.y[idx],
            feature_names=list(data.feature_names),
            true_features=list(data.true_features),
            noise_features=list(data.noise_features),
            name=data.name,
            x_mean=data.x_mean,
            x_std=data.x_std,
            y_mean=data.y_mean,
            y_std=data.y_std,
        )

    return part(train_idx), part(val_idx)
