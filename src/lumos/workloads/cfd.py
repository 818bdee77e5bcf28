"""FluidNet-style pressure projection: predict the pressure that makes a velocity field
divergence-free around obstacles, with a fully-convolutional 2D CNN.

Each sample is an ``n x n`` cell grid with a few random solid obstacles (discs and rectangles)
and a random smooth, divergent 2D velocity field ``(u, v)`` (zero inside solids). The pressure
projection step of an incompressible solver (Tompson et al. 2017, "FluidNet") solves the Poisson
equation ``lap(p) = div(u)`` on the fluid cells, with ``dp/dn = 0`` on solid walls (Neumann) and
``p = 0`` on the outer domain boundary (open boundary), by a sparse direct solve; ``p`` is the
target (zero in solid cells). The discretisation is the 5-point Laplacian and central-difference
divergence on the collocated grid, unit cell size.

Input channels: ``u``, ``v``, the obstacle mask (true: the target depends on all three), two
channels of i.i.d. Gaussian noise, and a smooth "temperature" field (nuisance: a passive scalar
that does not enter the incompressible projection). Numpy + scipy.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .. import metrics as M
from ._common import standardized_splits
from .base import TrainRecipe, Workload, WorkloadData, progress_bar, seed_everything, split_indices

SIZES = {"smoke": {"grid": 16, "n": 256}, "full": {"grid": 32, "n": 2400}}
VAL_FRACTION = 0.2
N_NOISE = 2


# ---- geometry and fields ------------------------------------------------------------------------
def random_obstacles(rng: np.random.Generator, n: int) -> np.ndarray:
    """Boolean solid mask with 1-4 discs/rectangles; fluid pockets cut off from the domain
    boundary are filled (they would make the Neumann problem singular)."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    solid = np.zeros((n, n), dtype=bool)
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0.15 * n, 0.85 * n, size=2)
        if rng.random() < 0.5:
            r = rng.uniform(0.06, 0.16) * n
            solid |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            hy, hx = rng.uniform(0.04, 0.15, size=2) * n
            solid |= (np.abs(yy - cy) <= hy) & (np.abs(xx - cx) <= hx)
    labels, _ = ndimage.label(~solid)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fluid = np.isin(labels, edge[edge > 0])
    return ~fluid


def smooth_random_field(rng: np.random.Generator, n: int, length: float) -> np.ndarray:
    """Unit-variance Gaussian random field with a Gaussian correlation of ``length`` cells."""
    k = 2.0 * np.pi * np.fft.fftfreq(n)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    f = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * np.exp(-0.5 * k2 * length**2))
    f = f.real
    return (f - f.mean()) / (f.std() + 1e-12)


def divergence(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Central-difference divergence (unit cells), zero velocity outside the domain;
    ``u`` along columns (x), ``v`` along rows (y)."""
    up = np.pad(u, 1)
    vp = np.pad(v, 1)
    return 0.5 * (up[1:-1, 2:] - up[1:-1, :-2]) + 0.5 * (vp[2:, 1:-1] - vp[:-2, 1:-1])


def solve_pressure(div: np.ndarray, solid: np.ndarray) -> np.ndarray:
    """Solve ``lap(p) = div`` on fluid cells: Neumann at solids, ``p = 0`` outside the domain."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    n = div.shape[0]
    fluid = ~solid
    index = -np.ones((n, n), dtype=np.int64)
    index[fluid] = np.arange(int(fluid.sum()))
    rows, cols, vals = [], [], []
    iy, ix = np.nonzero(fluid)
    me = index[iy, ix]
    diag = np.zeros(len(me))
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        jy, jx = iy + dy, ix + dx
        inside = (jy >= 0) & (jy < n) & (jx >= 0) & (jx < n)
        nb = np.full(len(me), -1)
        nb[inside] = index[jy[inside], jx[inside]]
        to_fluid = nb >= 0
        outside = ~inside  # Dirichlet p = 0 ghost: contributes -p_c only
        diag -= (to_fluid | outside).astype(np.float64)  # solid neighbours: Neumann, no term
        rows.append(me[to_fluid])
        cols.append(nb[to_fluid])
        vals.append(np.ones(int(to_fluid.sum())))
    rows.append(me)
    cols.append(me)
    vals.append(diag)
    a = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(me), len(me)),
    )
    p = np.zeros((n, n))
    p[fluid] = spsolve(a.tocsc(), div[fluid])
    return p


def simulate(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample: (u, v, solid mask) and the projection pressure."""
    solid = random_obstacles(rng, n)
    length = rng.uniform(0.08, 0.16) * n
    amp = np.exp(rng.uniform(-0.5, 0.5))
    u = amp * smooth_random_field(rng, n, length)
    v = amp * smooth_random_field(rng, n, length)
    u[solid] = 0.0
    v[solid] = 0.0
    p = solve_pressure(divergence(u, v), solid)
    return np.stack([u, v, solid.astype(np.float64)]), p


# ---- workload -----------------------------------------------------------------------------------
def generate(size: str, seed: int, progress: bool) -> WorkloadData:
    cfg = SIZES[size]
    n, n_samples = cfg["grid"], cfg["n"]
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed_everything(seed, "cfd", size, "flow"))
    nrng = np.random.default_rng(seed_everything(seed, "cfd", size, "nuisance"))
    n_ch = 3 + N_NOISE + 1
    x = np.empty((n_samples, n_ch, n, n), dtype=np.float32)
    y = np.empty((n_samples, 1, n, n), dtype=np.float32)
    for i in progress_bar(range(n_samples), n_samples, "cfd", progress):
        x[i, :3], y[i, 0] = simulate(rng, n)
        x[i, 3 : 3 + N_NOISE] = nrng.standard_normal((N_NOISE, n, n))
        x[i, -1] = 300.0 + 5.0 * smooth_random_field(nrng, n, nrng.uniform(0.1, 0.2) * n)
    x = torch.from_numpy(x)
    y = torch.from_numpy(y)
    tr, va = split_indices(n_samples, VAL_FRACTION, seed)
    train, val, scalers = standardized_splits(x, y, tr, va, dim=1)
    names = ["u", "v", "obstacle_mask"] + [f"noise_{j}" for j in range(N_NOISE)]
    names.append("temperature")
    return WorkloadData(
        train=train,
        val=val,
        feature_arg="x",
        feature_dim=0,
        feature_names=names,
        true_features=[0, 1, 2],
        noise_features=list(range(3, 3 + N_NOISE)),
        nuisance_features=[n_ch - 1],
        info={
            "target": "pressure p solving lap(p) = div(u) (unit cells)",
            "grid": n,
            "n_train": int(len(tr)),
            "n_val": int(len(va)),
            **scalers,
            "generation_seconds": time.perf_counter() - t0,
        },
    )


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a (1x1-projected) skip, then ReLU."""

    def __init__(self, ci: int, co: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ci, co, 3, padding=1, bias=False),
            nn.BatchNorm2d(co),
            nn.ReLU(),
            nn.Conv2d(co, co, 3, padding=1, bias=False),
            nn.BatchNorm2d(co),
        )
        self.skip = nn.Conv2d(ci, co, 1, bias=False) if ci != co else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class PressureUNet(nn.Module):
    """A small residual U-Net (3 scales + bottleneck), 1-channel pressure output."""

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1 = ResBlock(in_channels, w)
        self.enc2 = ResBlock(w, 2 * w)
        self.enc3 = ResBlock(2 * w, 4 * w)
        self.mid = ResBlock(4 * w, 4 * w)
        self.pool = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec3 = ResBlock(8 * w, 2 * w)
        self.dec2 = ResBlock(4 * w, w)
        self.dec1 = ResBlock(2 * w, w)
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        m = self.mid(self.pool(e3))
        d3 = self.dec3(torch.cat([self.up(m), e3], dim=1))
        d2 = self.dec2(torch.cat([self.up(d3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], dim=1))
        return self.out(d1)


def build_model(data: WorkloadData) -> nn.Module:
    return PressureUNet(data.train.inputs[0].shape[1])


def metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    out = {
        "r2": M.r2(pred.reshape(-1, 1), target.reshape(-1, 1)),
        "mae": M.mae(pred, target),
        "rel_l2": M.rel_l2(pred, target),
    }
    out["primary"] = out["r2"]
    return out


WORKLOAD = Workload(
    name="cfd_pressure",
    title="FluidNet-style pressure projection around obstacles",
    description=(
        "Pressure projection of an incompressible flow solver: random smooth divergent 2D "
        "velocity fields around random solid obstacles; the target is the pressure solving "
        "lap(p) = div(u) with Neumann walls at solids and p = 0 at the open domain boundary "
        "(sparse direct solve). A residual U-Net maps (u, v, obstacle mask) to p, R^2 over all "
        "cells. Planted: two i.i.d. Gaussian noise channels and a smooth 'temperature' field "
        "(a passive scalar that does not enter the projection)."
    ),
    architecture="cnn2d",
    task="regression",
    primary="r2",
    higher_is_better=True,
    generate=generate,
    build_model=build_model,
    metrics=metrics,
    requires=("scipy",),
    recipes={
        "smoke": TrainRecipe(epochs=4, batch_size=32, lr=2e-3),
        "full": TrainRecipe(epochs=15, batch_size=32, lr=1e-3),
    },
)
