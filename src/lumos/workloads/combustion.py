"""Hydrogen-air autoignition: a transformer over a short state history predicts the next step.

Cantera integrates adiabatic constant-pressure ignition of H2/air with the ``h2o2.yaml``
mechanism that ships with Cantera (10 species, 29 reactions) from random initial temperature
(1050-1350 K), pressure (1-5 atm, log-uniform) and equivalence ratio (0.5-2, log-uniform). Along
each trajectory, windows of ``K = 5`` states spaced by the fixed chemistry time step
``dt = 4 us`` are sampled (40 % uniformly in time, 60 % in the heat-release zone). Each state
is a token whose features are the thermochemical state (T, P, mass fractions of H2, H, O, O2,
OH, H2O, HO2, H2O2 after a Box-Cox transform with lambda = 0.1, as usual for chemistry
surrogates since radicals span decades; N2 is left out since it closes the sum of mass fractions
and Ar is absent), a nuisance column (the ambient temperature of the lab, which cannot enter an
adiabatic reactor) and i.i.d. noise columns. The target is the change over the next ``dt`` of
T and the mass fractions of H2, O2, H2O and OH (the quantity a chemistry surrogate in a
reacting-flow solver must supply; the state after ``dt`` is the last state plus this change),
standardised. Train/val are split by trajectory.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ._common import encoder_layers, regression_metrics, standardized_splits
from .base import (
    TrainRecipe,
    Workload,
    WorkloadData,
    append_noise_columns,
    progress_bar,
    seed_everything,
    split_indices,
)

MECHANISM = "h2o2.yaml"
SPECIES = ("H2", "H", "O", "O2", "OH", "H2O", "HO2", "H2O2")
TARGET_SPECIES = ("H2", "O2", "H2O", "OH")
DT = 4e-6  # s, the fixed step whose outcome is predicted (also the spacing of the history)
WINDOW = 5  # states per sample (tokens)
T0_RANGE = (1050.0, 1350.0)  # K
P_RANGE = (1.0, 5.0)  # atm, log-uniform
PHI_RANGE = (0.5, 2.0)  # log-uniform
N_NOISE = 5
BOX_COX = 0.1  # lambda of the Box-Cox transform of the input mass fractions (None: linear)
SIZES = {
    # trajectories, windows uniform in time, windows in the heat-release zone
    "smoke": (12, 8, 12),
    "full": (1000, 4, 6),
}
VAL_FRACTION = 0.2


def _trajectory(
    gas,
    eq,
    t0: float,
    p_atm: float,
    phi: float,
    rng: np.random.Generator,
    n_uniform: int,
    n_zone: int,
) -> np.ndarray:
    """States ``(windows, WINDOW + 1, 2 + len(SPECIES))`` of one ignition: the history and the
    state ``DT`` after its last entry. Columns: T [K], P [atm], mass fractions."""
    import cantera as ct

    gas.set_equivalence_ratio(phi, "H2:1", "O2:1, N2:3.76")
    gas.TP = t0, p_atm * ct.one_atm
    x0 = gas.X
    eq.TPX = t0, p_atm * ct.one_atm, x0
    eq.equilibrate("HP")
    t_eq = eq.T
    # pass 1: find the heat-release zone (5 % .. 95 % of the temperature rise)
    reactor = ct.IdealGasConstPressureReactor(gas, clone=True)
    net = ct.ReactorNet([reactor])
    t5 = None
    while net.time < 0.1:
        net.step()
        if t5 is None and t0 + 0.05 * (t_eq - t0) < reactor.T:
            t5 = net.time
        if t0 + 0.95 * (t_eq - t0) < reactor.T:
            break
    t95 = net.time
    t5 = t95 if t5 is None else t5
    t_end = t95 + 0.5 * (t95 - t5) + 5 * DT
    t_min = (WINDOW - 1) * DT
    zone_lo = max(t_min, t5 - 0.2 * (t95 - t5))
    zone_hi = max(t95, zone_lo + 2 * DT)
    ends = np.concatenate(
        [
            rng.uniform(t_min, max(t_end, t_min + 2 * DT), n_uniform),
            rng.uniform(zone_lo, zone_hi, n_zone),
        ]
    )
    offsets = DT * np.arange(-(WINDOW - 1), 2)  # history ... now, now + DT
    times = ends[:, None] + offsets[None, :]
    order = np.argsort(times, axis=None)
    # pass 2: a fresh integration that visits every needed time in order
    gas.TPX = t0, p_atm * ct.one_atm, x0
    reactor = ct.IdealGasConstPressureReactor(gas, clone=True)
    net = ct.ReactorNet([reactor])
    idx = [gas.species_index(s) for s in SPECIES]
    flat = np.empty((times.size, 2 + len(SPECIES)))
    for k in order:
        net.advance(times.flat[k])
        flat[k, 0] = reactor.T
        flat[k, 1] = p_atm
        flat[k, 2:] = reactor.phase.Y[idx]
    return flat.reshape(times.shape[0], times.shape[1], -1)


def simulate(n_traj: int, n_uniform: int, n_zone: int, seed: int, progress: bool = False):
    """Sampled windows of all trajectories: states (n, WINDOW + 1, F), trajectory id and
    initial conditions (n_traj, 3)."""
    import cantera as ct

    rng = np.random.default_rng(seed_everything(seed, "combustion", "conditions"))
    t0 = rng.uniform(*T0_RANGE, n_traj)
    p = np.exp(rng.uniform(np.log(P_RANGE[0]), np.log(P_RANGE[1]), n_traj))
    phi = np.exp(rng.uniform(np.log(PHI_RANGE[0]), np.log(PHI_RANGE[1]), n_traj))
    gas = ct.Solution(MECHANISM)
    eq = ct.Solution(MECHANISM)
    states, traj = [], []
    for i in progress_bar(range(n_traj), n_traj, "ignition runs", progress):
        trng = np.random.default_rng(seed_everything(seed, "combustion", "windows", i))
        s = _trajectory(gas, eq, t0[i], p[i], phi[i], trng, n_uniform, n_zone)
        states.append(s)
        traj.append(np.full(s.shape[0], i))
    return np.concatenate(states), np.concatenate(traj), np.stack([t0, p, phi], 1)


def generate(size: str, seed: int, progress: bool = False) -> WorkloadData:
    n_traj, n_uniform, n_zone = SIZES[size]
    states, traj, init = simulate(n_traj, n_uniform, n_zone, seed, progress)
    names = ["T", "P"] + [f"Y_{s}" for s in SPECIES]
    history = states[:, :WINDOW].copy()  # (n, K, 10)
    if BOX_COX is not None:  # mass fractions span decades (radicals): Box-Cox, as usual for
        lam = BOX_COX  # chemistry surrogates; T and P stay linear
        history[..., 2:] = (np.clip(history[..., 2:], 0.0, None) ** lam - 1.0) / lam
    history = torch.from_numpy(history).float()
    col = [0] + [2 + SPECIES.index(s) for s in TARGET_SPECIES]
    delta = torch.from_numpy(states[:, WINDOW, col] - states[:, WINDOW - 1, col]).float()

    # nuisance: ambient (lab) temperature per run; the reactor is adiabatic, so it never enters
    rng = np.random.default_rng(seed_everything(seed, "combustion", "nuisance"))
    ambient = torch.from_numpy(rng.uniform(285.0, 310.0, n_traj)[traj]).float()
    x = torch.cat([history, ambient[:, None, None].expand(-1, WINDOW, 1)], dim=-1)
    x, noise = append_noise_columns(x, N_NOISE, seed_everything(seed, "combustion"), dim=-1)

    # split by trajectory so no run is seen in both
    tr_traj, va_traj = split_indices(n_traj, VAL_FRACTION, seed)
    traj_t = torch.from_numpy(traj)
    tr = torch.isin(traj_t, tr_traj).nonzero().flatten()
    va = torch.isin(traj_t, va_traj).nonzero().flatten()
    train, val, scalers = standardized_splits(x, delta, tr, va)
    n_true = len(names)
    return WorkloadData(
        train=train,
        val=val,
        feature_arg="x",
        feature_dim=-1,
        feature_names=names + ["nuisance_ambient_T"] + [f"noise_{k}" for k in range(N_NOISE)],
        true_features=list(range(n_true)),
        noise_features=noise,
        nuisance_features=[n_true],
        info={
            "mechanism": MECHANISM,
            "dt_s": DT,
            "window": WINDOW,
            "input_mass_fraction_box_cox_lambda": BOX_COX,
            "targets": ["dT"] + [f"dY_{s}" for s in TARGET_SPECIES],
            "n_trajectories": n_traj,
            "initial_T_P_phi_ranges": [list(T0_RANGE), list(P_RANGE), list(PHI_RANGE)],
            "n_train": len(tr),
            "n_val": len(va),
            **scalers,
        },
    )


class CombustionTransformer(nn.Module):
    """Time steps as tokens: linear embedding, pre-norm encoder layers, then the flattened
    sequence (its order is what tells the head which state is the latest) to an MLP head."""

    def __init__(
        self,
        n_features: int,
        n_tokens: int,
        n_out: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 3,
        d_ff: int = 128,
        d_head: int = 128,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(n_features, d_model)
        self.layers = encoder_layers(d_model, n_heads, d_ff, n_layers)
        self.norm = nn.LayerNorm(d_model)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(n_tokens * d_model, d_head)
        self.act = nn.GELU()
        self.out = nn.Linear(d_head, n_out)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        h = self.flatten(self.norm(h))
        return self.out(self.act(self.fc(h)))


def build_model(data: WorkloadData) -> nn.Module:
    _, n_tokens, n_features = data.train.inputs[0].shape
    return CombustionTransformer(n_features, n_tokens, data.train.target.shape[-1])


def metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    return regression_metrics(pred, target, primary="r2")


WORKLOAD = Workload(
    name="combustion",
    title="H2/air autoignition step (Cantera, transformer over time steps)",
    description=(
        "Adiabatic constant-pressure H2/air ignition simulated with Cantera (h2o2.yaml) from "
        "random T0, P and equivalence ratio. A transformer reads a history of 5 states 4 us "
        "apart (tokens; features T, P and 8 species mass fractions) and predicts the change of "
        "T, Y_H2, Y_O2, Y_H2O, Y_OH over the next 4 us (R^2). Planted: 5 i.i.d. noise columns "
        "and a nuisance column, the ambient lab temperature, which an adiabatic reactor ignores."
    ),
    architecture="attention",
    task="regression",
    primary="r2",
    higher_is_better=True,
    generate=generate,
    build_model=build_model,
    metrics=metrics,
    recipes={
        "smoke": TrainRecipe(epochs=15, batch_size=32, lr=2e-3),
        "full": TrainRecipe(epochs=40, batch_size=64, lr=1e-3),
    },
    requires=("cantera",),
    version=1,
)
