"""Cosmological power-spectrum emulator: the linear matter power spectrum P(k, z) of flat LCDM
cosmologies from their parameters (the task of CosmoPower / Euclid / bacco emulators).

Cosmologies fill a Latin hypercube in (Omega_m, Omega_b, h, n_s, sigma_8, z) around Planck 2018;
for each, ``colossus`` evaluates the Eisenstein & Hu (1998) transfer function with baryon
acoustic oscillations, normalised to sigma_8 and scaled by the linear growth factor to redshift z.
The target is log10 P(k) [(Mpc/h)^3] at 48 log-spaced wavenumbers 1e-3..2 h/Mpc (a multi-output
regression; every output standardised with train statistics). Colossus runs with persistence
off (no files written, nothing downloaded) and without interpolation tables.

Planted irrelevant features: the optical depth to reionisation tau (a standard LCDM parameter
that shapes the CMB but not the sigma_8-normalised matter power spectrum; drawn in the same Latin
hypercube) and i.i.d. noise columns.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ._common import regression_metrics, standardized_splits, table_mlp
from .base import (
    TrainRecipe,
    Workload,
    WorkloadData,
    append_noise_columns,
    progress_bar,
    seed_everything,
    split_indices,
)

#: sampled parameters and their ranges; the last one (tau) does not enter P(k).
PARAMETERS = {
    "Omega_m": (0.24, 0.40),
    "Omega_b": (0.040, 0.060),
    "h": (0.60, 0.80),
    "n_s": (0.92, 1.00),
    "sigma_8": (0.70, 0.90),
    "z": (0.0, 2.0),
    "tau_reio": (0.03, 0.09),
}
N_TRUE = 6
K_MIN, K_MAX, N_K = 1e-3, 2.0, 48  # h/Mpc
TRANSFER = "eisenstein98"

SIZES = {
    # cosmologies, noise columns
    "smoke": (120, 8),
    "full": (4000, 8),
}
VAL_FRACTION = 0.2


def wavenumbers() -> np.ndarray:
    return np.logspace(np.log10(K_MIN), np.log10(K_MAX), N_K)


def log_power(params: np.ndarray, k: np.ndarray) -> np.ndarray:
    """log10 P(k) of one parameter vector (columns as :data:`PARAMETERS`)."""
    from colossus.cosmology import cosmology

    om, ob, h, ns, s8, z, _tau = params  # tau does not enter the matter power spectrum
    cosmo = cosmology.Cosmology(
        name="lumos",
        flat=True,
        Om0=float(om),
        Ob0=float(ob),
        H0=100.0 * float(h),
        sigma8=float(s8),
        ns=float(ns),
        interpolation=False,
        persistence="",
        print_info=False,
        print_warnings=False,
    )
    return np.log10(cosmo.matterPowerSpectrum(k, z=float(z), model=TRANSFER))


def sample_parameters(n: int, seed: int) -> np.ndarray:
    """Latin-hypercube sample of ``n`` parameter vectors."""
    from scipy.stats import qmc

    lhs = qmc.LatinHypercube(d=len(PARAMETERS), seed=seed_everything(seed, "cosmo", "lhs"))
    lo = np.array([r[0] for r in PARAMETERS.values()])
    hi = np.array([r[1] for r in PARAMETERS.values()])
    return qmc.scale(lhs.random(n), lo, hi)


def generate(size: str, seed: int, progress: bool = False) -> WorkloadData:
    n, n_noise = SIZES[size]
    params = sample_parameters(n, seed)
    k = wavenumbers()
    logp = np.stack([log_power(p, k) for p in progress_bar(params, n, "colossus P(k)", progress)])
    x = torch.tensor(params, dtype=torch.float32)
    names = list(PARAMETERS)
    x, noise = append_noise_columns(x, n_noise, seed_everything(seed, "cosmo", "noise"))
    names += [f"noise_{j}" for j in range(n_noise)]
    y = torch.tensor(logp, dtype=torch.float32)

    tr, va = split_indices(n, VAL_FRACTION, seed)
    train, val, scalers = standardized_splits(x, y, tr, va)
    return WorkloadData(
        train=train,
        val=val,
        feature_arg="x",
        feature_dim=-1,
        feature_names=names,
        true_features=list(range(N_TRUE)),
        noise_features=noise,
        nuisance_features=list(range(N_TRUE, len(PARAMETERS))),
        info={
            "simulator": f"colossus Cosmology.matterPowerSpectrum(model='{TRANSFER}')",
            "target": "log10 P(k) [(Mpc/h)^3] at k_h_per_Mpc (standardised per k)",
            "k_h_per_Mpc": k.tolist(),
            "parameter_ranges": {p: list(r) for p, r in PARAMETERS.items()},
            **scalers,
        },
    )


def build_model(data: WorkloadData) -> nn.Module:
    return table_mlp(data)


def metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    return regression_metrics(pred, target, ("r2", "mae", "rmse", "rel_l2"))


WORKLOAD = Workload(
    name="cosmo_power_spectrum",
    title="Linear matter power spectrum emulator (colossus, Eisenstein-Hu)",
    description=(
        "Cosmology emulator: log10 of the linear matter power spectrum at 48 wavenumbers "
        "(1e-3..2 h/Mpc) of flat LCDM cosmologies, computed with colossus (Eisenstein & Hu 1998 "
        "transfer function with BAO, sigma_8-normalised, linear growth to redshift z), from "
        "(Omega_m, Omega_b, h, n_s, sigma_8, z) in a Latin hypercube. Planted: the reionisation "
        "optical depth tau, which does not enter the matter power spectrum, and i.i.d. noise "
        "columns."
    ),
    architecture="mlp",
    task="regression",
    primary="r2",
    higher_is_better=True,
    generate=generate,
    build_model=build_model,
    metrics=metrics,
    recipes={
        "smoke": TrainRecipe(epochs=30, batch_size=32, lr=2e-3),
        "full": TrainRecipe(epochs=200, batch_size=64, lr=1e-3),
    },
    requires=("colossus", "scipy"),
)
