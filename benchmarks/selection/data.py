"""The benchmark's tables: a physical law, planted noise columns, correlated proxies, raw units.

:func:`make_selection_data` starts from :func:`lumos.workloads.laws.make_law_data` (the law's
variables sampled over their ranges plus ``n_noise`` iid N(0, 1) columns, all standardised) and

* appends ``n_proxies`` proxy columns, ``rho * z(v) + sqrt(1 - rho**2) * eps`` for a true
  variable ``v`` (the proxies cycle over the true variables; each is standardised), so a proxy
  carries ``rho**2`` (81% at the default 0.9) of its variable's variance but the target does
  not depend on it: keeping it instead of, or besides, ``v`` is a wrong answer;
* shuffles all columns (seeded) so no method can rely on column order;
* puts the target in arbitrary units, ``y = a * y_physical + b`` with ``a = 10**U(-3, 3)`` and
  ``b = ±10**U(-3, 3)``, so a method gets no standardised target for free;
* holds out :data:`HOLDOUT` of the rows for the downstream metric; the methods see only the
  training rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lumos.workloads.laws import LAWS, make_law_data

from .unseen import UNSEEN_LAWS, mixed_noise

#: share of the rows held out for the downstream R²
HOLDOUT = 0.25
#: default correlation of a proxy with its variable
RHO = 0.9


@dataclass
class SelectionSet:
    """One benchmark table, split into training and held-out rows, with its ground truth."""

    law: str
    X_train: np.ndarray
    y_train: np.ndarray  # arbitrary units (see the module doc)
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]
    true: list[int]
    noise: list[int]
    proxies: list[int]
    proxy_of: dict[int, int]  # proxy column -> the true column it copies
    info: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    def role(self, j: int) -> str:
        return "true" if j in set(self.true) else "proxy" if j in self.proxy_of else "noise"


def _seed(seed: int, *parts: int) -> np.random.Generator:
    """An rng for one purpose (independent of ``make_law_data``'s own stream)."""
    return np.random.default_rng([int(seed), 16, *parts])


def make_selection_data(law: str, n_rows: int, n_noise: int, n_proxies: int, seed: int = 0,
                        rho: float = RHO, noise_std: float = 0.05,
                        holdout: float = HOLDOUT) -> SelectionSet:
    """A law's table with ``n_noise`` noise and ``n_proxies`` proxy columns (see the module doc).

    ``noise_std``: Gaussian label noise as a fraction of the clean target's std. Same arguments,
    same table."""
    if law not in LAWS and law not in UNSEEN_LAWS:
        raise KeyError(f"unknown law {law!r}; available: {', '.join([*LAWS, *UNSEEN_LAWS])}")
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"rho must be in [0, 1), got {rho}")
    unseen = law in UNSEEN_LAWS
    d = make_law_data(UNSEEN_LAWS[law] if unseen else law, n_samples=n_rows, n_noise=n_noise,
                      seed=seed, noise_std=noise_std, shuffle_columns=True)
    x = d.X.astype(np.float64)
    names = list(d.feature_names)
    true_cols = sorted(d.true_features)
    rng = _seed(seed, n_rows, n_noise, n_proxies)
    if unseen:  # noise columns of other distributions (benchmarks/selection/unseen.py)
        noise_cols = sorted(set(range(x.shape[1])) - set(true_cols))
        x[:, noise_cols] = mixed_noise(len(x), len(noise_cols), rng)

    # proxies of the true variables, cycling over them
    cols, proxy_src = [x], []
    count: dict[int, int] = {}
    for i in range(n_proxies):
        v = true_cols[i % len(true_cols)]
        z = (x[:, v] - x[:, v].mean()) / x[:, v].std()
        p = rho * z + np.sqrt(1.0 - rho**2) * rng.standard_normal(len(x))
        cols.append(((p - p.mean()) / p.std())[:, None])
        count[v] = count.get(v, 0) + 1
        names.append(f"proxy_of_{names[v]}" + (f"_{count[v]}" if count[v] > 1 else ""))
        proxy_src.append(v)
    x = np.concatenate(cols, axis=1)
    base = d.X.shape[1]
    role = ["true" if j in set(true_cols) else "noise" for j in range(base)]
    role += ["proxy"] * n_proxies
    source = [-1] * base + proxy_src  # proxy column -> true column (pre-shuffle indices)

    # shuffle every column again (the proxies would otherwise sit at the end)
    perm = rng.permutation(x.shape[1])
    x = x[:, perm]
    names = [names[j] for j in perm]
    new_of_old = {int(old): new for new, old in enumerate(perm)}
    true = sorted(new_of_old[j] for j in true_cols)
    noise = sorted(new for new, old in enumerate(perm) if role[old] == "noise")
    proxies = sorted(new for new, old in enumerate(perm) if role[old] == "proxy")
    proxy_of = {new: new_of_old[source[old]] for new, old in enumerate(perm)
                if role[old] == "proxy"}

    # the target in arbitrary units
    y_phys = d.y.astype(np.float64)[:, 0] * d.y_std + d.y_mean
    scale = float(10.0 ** rng.uniform(-3, 3))
    offset = float(rng.choice([-1.0, 1.0]) * 10.0 ** rng.uniform(-3, 3))
    y = scale * y_phys + offset

    order = rng.permutation(len(x))
    n_test = max(1, int(round(holdout * len(x))))
    test, train = order[:n_test], order[n_test:]
    return SelectionSet(
        law=law, X_train=x[train], y_train=y[train], X_test=x[test], y_test=y[test],
        feature_names=names, true=true, noise=noise, proxies=proxies, proxy_of=proxy_of,
        info={"rows": n_rows, "train_rows": len(train), "test_rows": len(test),
              "n_noise": n_noise, "n_proxies": n_proxies, "rho": rho, "noise_std": noise_std,
              "y_scale": scale, "y_offset": offset, "seed": seed,
              "proxy_corr": [float(np.corrcoef(x[:, p], x[:, v])[0, 1])
                             for p, v in sorted(proxy_of.items())]},
    )
