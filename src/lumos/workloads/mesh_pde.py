"""Steady heat conduction in a cooled plate, solved with P1 finite elements on random meshes.

Each sample is a triangle mesh of the unit square (a structured grid of random resolution whose
interior nodes are randomly jittered) carrying random fields at its nodes: a heat source
``f(x, y)`` (a few Gaussian hot spots on a weak background), a thermal conductivity ``kappa(x, y)``
and a convective heat-transfer coefficient ``h(x, y)`` (log-normal smooth random fields). The
plate sits in a stratified environment whose fixed ambient temperature ``T_amb`` rises linearly
in ``y`` (and a little in ``x``). scikit-fem solves the thin-plate (fin) equation

    -div(kappa grad u) + h (u - T_amb) = f   in the square,    u = T_amb on its boundary,

with P1 elements; the target is the nodal temperature ``u`` (node-level regression). The cooling
term gives the physics a decay length sqrt(kappa / h) of one to two mesh spacings, so a
message-passing network of a few layers can see what it needs (a pure Poisson problem has a
global Green's function that no 4-hop GNN can represent). ``T_amb`` is not a feature: the model
must infer it from the coordinates, which makes them truly needed.

Node features: coordinates, boundary flag, f, kappa, h (true); the volumetric heat capacity
``rho c_p(x, y)`` (nuisance: a smooth random field of the same kind, which only enters the
transient equation, not the steady state); i.i.d. noise columns.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ._common import graph_split, node_rows, regression_metrics
from .base import (
    ANNEALED_LR,
    TrainRecipe,
    Workload,
    WorkloadData,
    append_noise_columns,
    progress_bar,
    seed_everything,
    split_indices,
)

TRUE_NAMES = ["x", "y", "boundary", "source_f", "conductivity_kappa", "cooling_h"]
NUISANCE_NAMES = ["heat_capacity_rho_cp"]
N_NOISE = 6
SIZES = {
    "smoke": {"n_meshes": 48, "nodes_per_side": (9, 13)},
    "full": {"n_meshes": 240, "nodes_per_side": (13, 21)},
}
JITTER = 0.3  # interior node jitter, fraction of the grid spacing
KAPPA0 = 1.0
H0 = 60.0  # decay length sqrt(KAPPA0 / H0) ~ 0.13
AMBIENT_GRADIENT = (0.4, 0.8)  # d T_amb / dx, d T_amb / dy
VAL_FRACTION = 0.2


def _smooth_field(rng: np.random.Generator, xy: np.ndarray, modes: int = 3) -> np.ndarray:
    """A smooth random field (unit-ish variance) from a few random Fourier modes."""
    out = np.zeros(xy.shape[0])
    for kx in range(modes + 1):
        for ky in range(modes + 1):
            if kx == ky == 0:
                continue
            amp = rng.normal() / (1.0 + kx**2 + ky**2)
            phase = rng.uniform(0, 2 * np.pi, size=2)
            out += (
                amp
                * np.cos(np.pi * kx * xy[:, 0] + phase[0])
                * np.cos(np.pi * ky * xy[:, 1] + phase[1])
            )
    return out / max(out.std(), 1e-8)


def _source(rng: np.random.Generator, xy: np.ndarray) -> np.ndarray:
    """Heat source: 2-5 Gaussian hot spots (some negative: sinks) on a weak smooth background."""
    f = 20.0 * (1.0 + 0.3 * _smooth_field(rng, xy, modes=2))
    for _ in range(rng.integers(2, 6)):
        c = rng.uniform(0.1, 0.9, size=2)
        width = rng.uniform(0.04, 0.15)
        amp = rng.uniform(-60.0, 200.0)
        f += amp * np.exp(-((xy - c) ** 2).sum(1) / (2 * width**2))
    return f


def _mesh(rng: np.random.Generator, n: int):
    from skfem import MeshTri

    grid = np.linspace(0.0, 1.0, n)
    mesh = MeshTri.init_tensor(grid, grid)
    p = mesh.p.copy()
    interior = np.setdiff1d(np.arange(p.shape[1]), mesh.boundary_nodes())
    p[:, interior] += rng.uniform(-JITTER, JITTER, size=(2, interior.size)) / (n - 1)
    return MeshTri(p, mesh.t)


def ambient(xy: np.ndarray) -> np.ndarray:
    """The fixed ambient temperature field (stratified: warmer upwards, and towards x = 1)."""
    return AMBIENT_GRADIENT[0] * xy[:, 0] + AMBIENT_GRADIENT[1] * xy[:, 1]


def _solve(mesh, f: np.ndarray, kappa: np.ndarray, h: np.ndarray) -> np.ndarray:
    from skfem import Basis, BilinearForm, ElementTriP1, LinearForm, condense, solve
    from skfem.helpers import dot, grad

    @BilinearForm
    def a(u, v, w):
        return w["kappa"] * dot(grad(u), grad(v)) + w["h"] * u * v

    @LinearForm
    def rhs(v, w):
        return (w["f"] + w["h"] * w["t_amb"]) * v

    basis = Basis(mesh, ElementTriP1())
    t_amb = ambient(mesh.p.T)
    h_q = basis.interpolate(h)
    A = a.assemble(basis, kappa=basis.interpolate(kappa), h=h_q)
    b = rhs.assemble(basis, f=basis.interpolate(f), h=h_q, t_amb=basis.interpolate(t_amb))
    return solve(*condense(A, b, x=t_amb, D=basis.get_dofs()))


def _sample(seed: int, k: int, size: str) -> dict[str, Tensor]:
    rng = np.random.default_rng(seed_everything(seed, "mesh_pde", size, k))
    lo, hi = SIZES[size]["nodes_per_side"]
    mesh = _mesh(rng, int(rng.integers(lo, hi + 1)))
    xy = mesh.p.T
    kappa = KAPPA0 * np.exp(0.5 * _smooth_field(rng, xy))
    h = H0 * np.exp(0.5 * _smooth_field(rng, xy))
    f = _source(rng, xy)
    rho_cp = 2.0e6 * np.exp(0.3 * _smooth_field(rng, xy))  # J/(m^3 K): irrelevant when steady
    u = _solve(mesh, f, kappa, h)
    boundary = np.zeros(xy.shape[0])
    boundary[mesh.boundary_nodes()] = 1.0
    x = np.stack([xy[:, 0], xy[:, 1], boundary, f, kappa, h, rho_cp], axis=1)
    e = torch.from_numpy(mesh.facets.astype(np.int64))
    return {
        "x": torch.from_numpy(x).float(),
        "edge_index": torch.cat([e, e.flip(0)], dim=1),
        "y": torch.from_numpy(u).float().unsqueeze(1),
    }


def generate(size: str, seed: int, progress: bool = False) -> WorkloadData:
    n = SIZES[size]["n_meshes"]
    samples = [
        _sample(seed, k, size)
        for k in progress_bar(range(n), total=n, desc="mesh_pde: FEM solves", enabled=progress)
    ]
    counts = [s["x"].shape[0] for s in samples]
    starts = np.concatenate([[0], np.cumsum(counts)])
    x = torch.cat([s["x"] for s in samples])
    nuisance = [x.shape[1] - 1]
    x, noise = append_noise_columns(x, N_NOISE, seed_everything(seed, "mesh_pde"), dim=-1)
    y = torch.cat([s["y"] for s in samples])

    train_idx, val_idx = split_indices(n, VAL_FRACTION, seed)
    train_nodes = node_rows(starts, train_idx.tolist())
    x_mean, x_std = x[train_nodes].mean(0), x[train_nodes].std(0).clamp_min(1e-6)
    y_mean, y_std = y[train_nodes].mean(0), y[train_nodes].std(0).clamp_min(1e-6)
    x = (x - x_mean) / x_std
    y = (y - y_mean) / y_std
    edges = [s["edge_index"] for s in samples]

    names = TRUE_NAMES + NUISANCE_NAMES + [f"noise_{k}" for k in range(N_NOISE)]
    return WorkloadData(
        train=graph_split(x, y, starts, edges, train_idx.tolist(), node_level=True),
        val=graph_split(x, y, starts, edges, val_idx.tolist(), node_level=True),
        feature_arg="x",
        feature_dim=-1,
        feature_names=names,
        true_features=list(range(len(TRUE_NAMES))),
        noise_features=noise,
        nuisance_features=nuisance,
        info={
            "pde": "-div(kappa grad u) + h (u - T_amb) = f, u = T_amb on the boundary",
            "ambient_gradient": list(AMBIENT_GRADIENT),
            "solver": "scikit-fem, P1 triangles, jittered structured meshes",
            "n_meshes": n,
            "n_train": len(train_idx),
            "n_val": len(val_idx),
            "n_nodes": int(starts[-1]),
            "target": "nodal temperature rise u",
            "y_mean": float(y_mean),
            "y_std": float(y_std),
            "x_mean": x_mean.tolist(),
            "x_std": x_std.tolist(),
        },
    )


# ---- model ---------------------------------------------------------------------------------------
class MeshGAT(nn.Module):
    """4 GAT layers (4 heads x 16 = 64 channels), residual from layer 2 on, Linear per node.

    The residual stream ties the channels of every layer together; LUMOS gates channel c of
    every head (16 units, each a sixteenth of every layer's channels), as a head has more
    channels than there are heads (with whole heads as the unit it could prune only in 4
    blocks)."""

    def __init__(self, in_dim: int, hidden: int = 64, heads: int = 4, layers: int = 4) -> None:
        super().__init__()
        from torch_geometric.nn import GATConv

        self.convs = nn.ModuleList(
            GATConv(in_dim if k == 0 else hidden, hidden // heads, heads=heads)
            for k in range(layers)
        )
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = self.act(self.convs[0](x, edge_index))
        for conv in self.convs[1:]:
            h = h + self.act(conv(h, edge_index))
        return self.head(h)


def build_model(data: WorkloadData) -> nn.Module:
    return MeshGAT(len(data.feature_names))


def metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    return regression_metrics(pred, target)


WORKLOAD = Workload(
    name="mesh_pde",
    title="Steady heat conduction in a cooled plate (P1 FEM on random triangle meshes)",
    description=(
        "scikit-fem solves -div(kappa grad u) + h (u - T_amb) = f (thin plate cooled by a "
        "stratified ambient T_amb(x, y), u = T_amb on the edges) with P1 elements on jittered "
        "triangle meshes of the unit square; "
        "random hot spots f, log-normal conductivity kappa and cooling coefficient h are node "
        "features and the nodal temperature u is the node-level target of a GAT. Planted: 6 "
        "i.i.d. noise node columns and the heat capacity rho*c_p (nuisance: it only enters the "
        "transient equation, not the steady state)."
    ),
    architecture="gnn",
    task="regression",
    primary="r2",
    higher_is_better=True,
    generate=generate,
    build_model=build_model,
    metrics=metrics,
    recipes={
        "smoke": TrainRecipe(epochs=20, batch_size=8, lr=3e-3),
        "full": TrainRecipe(epochs=60, batch_size=8, lr=2e-3, lr_schedule=ANNEALED_LR),
    },
    requires=("skfem", "torch_geometric"),
)
