"""Atomistic energy: per-atom EMT energies of strained, rattled Cu/Au/Pt FCC cells from
Behler-Parrinello symmetry functions (a PureMD/ReaxFF-style machine-learned potential task).

Each structure is a 2x2x2 conventional FCC supercell (32 sites) of pure Cu, Au, Pt or a random
Cu-Au-Pt alloy at its Vegard lattice constant, with a random homogeneous strain, 0-2 vacancies and
Gaussian thermal-like displacements. ASE's effective-medium-theory calculator gives the energy of
every atom (``atoms.get_potential_energies()``). Each atom is one sample; its inputs are the
one-hot species of the atom, element-resolved radial G2 functions and angular G4/G5 functions of
its neighbourhood (cosine cutoff), all computed here with numpy and ASE neighbour lists.

Planted irrelevant features: a per-structure "thermostat temperature" label (drawn independently
of everything, so it describes the MD run the frame notionally came from but does not enter the
geometry or the energy) and i.i.d. noise columns. Train/val are split by *structure*, so atoms of
one cell never sit on both sides (the per-structure label cannot leak the cell's strain).

EMT is a radial-density potential (no explicit angular terms), so the angular functions carry
information that is redundant with the radial ones; they are still functions of the environment
the energy depends on and are counted as true features (``info['redundant_features']`` lists
them).
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

SPECIES = ("Cu", "Au", "Pt")
#: FCC lattice constants (Angstrom) near the EMT minimum of each element.
LATTICE = {"Cu": 3.597, "Au": 4.066, "Pt": 3.931}
R_CUT_RADIAL = 6.0  # Angstrom; covers the EMT cutoff (~5.4-6.0 A for these metals)
R_CUT_ANGULAR = 4.6  # Angstrom; first two neighbour shells
#: radial G2 functions (eta [1/A^2], R_s [A]): wide centred Gaussians + shell-resolving ones.
G2_PARAMS = (
    (0.02, 0.0),
    (0.1, 0.0),
    (0.3, 0.0),
    (0.7, 0.0),
    (4.0, 2.6),
    (4.0, 2.9),
    (2.0, 3.7),
    (2.0, 4.5),
)
#: angular G4 (eta, zeta, lambda) and G5 (eta, zeta, lambda) functions.
G4_PARAMS = tuple((eta, zeta, lam) for eta in (0.01, 0.1) for zeta in (1, 4) for lam in (-1, 1))
G5_PARAMS = tuple((0.01, zeta, lam) for zeta in (1, 4) for lam in (-1, 1))

SIZES = {
    # structures, noise columns
    "smoke": (20, 8),
    "full": (640, 8),
}
VAL_FRACTION = 0.2


def _cutoff(r: np.ndarray, rc: float) -> np.ndarray:
    return np.where(r < rc, 0.5 * (np.cos(np.pi * r / rc) + 1.0), 0.0)


def feature_names() -> tuple[list[str], list[str]]:
    """(physical descriptor names, angular descriptor names) in column order."""
    names = [f"is_{s}" for s in SPECIES]
    names += [f"G2[{s}](eta={e:g},Rs={rs:g})" for s in SPECIES for e, rs in G2_PARAMS]
    angular = [f"G4(eta={e:g},zeta={z},lambda={lam:+d})" for e, z, lam in G4_PARAMS]
    angular += [f"G5(eta={e:g},zeta={z},lambda={lam:+d})" for e, z, lam in G5_PARAMS]
    return names + angular, angular


def symmetry_functions(atoms) -> np.ndarray:
    """Behler-Parrinello descriptors of every atom, shape ``(n_atoms, n_descriptors)``."""
    from ase.neighborlist import neighbor_list

    n = len(atoms)
    species = np.array([SPECIES.index(s) for s in atoms.get_chemical_symbols()])
    out = [np.eye(len(SPECIES))[species]]

    # radial, resolved by the neighbour's species (one neighbour list, sorted by centre i)
    i_all, j_all, d_all, vec_all = neighbor_list("ijdD", atoms, R_CUT_RADIAL)
    order = np.argsort(i_all, kind="stable")  # ASE sorts by i already; the pairing relies on it
    i_all, j_all, d_all, vec_all = i_all[order], j_all[order], d_all[order], vec_all[order]
    fc = _cutoff(d_all, R_CUT_RADIAL)
    slot = i_all * len(SPECIES) + species[j_all]
    g2 = np.empty((n, len(SPECIES), len(G2_PARAMS)))
    for k, (eta, rs) in enumerate(G2_PARAMS):
        val = np.exp(-eta * (d_all - rs) ** 2) * fc
        g2[:, :, k] = np.bincount(slot, val, minlength=n * len(SPECIES)).reshape(n, -1)
    out.append(g2.reshape(n, -1))

    # angular: all neighbour pairs (j, k), j < k, of each centre i
    near = d_all < R_CUT_ANGULAR
    i, d, vec = i_all[near], d_all[near], vec_all[near]
    m = len(i)
    group_end = np.searchsorted(i, i, side="right")
    partners = group_end - np.arange(m) - 1
    a = np.repeat(np.arange(m), partners)
    offset = np.arange(len(a)) - np.repeat(np.cumsum(partners) - partners, partners)
    b = a + 1 + offset
    centre = i[a]
    rij, rik = d[a], d[b]
    rjk = np.linalg.norm(vec[b] - vec[a], axis=1)
    cos = np.einsum("ij,ij->i", vec[a], vec[b]) / (rij * rik)
    fc_ij, fc_ik = _cutoff(rij, R_CUT_ANGULAR), _cutoff(rik, R_CUT_ANGULAR)
    fc_jk = _cutoff(rjk, R_CUT_ANGULAR)
    angular = []
    for eta, zeta, lam in G4_PARAMS:
        val = (1 + lam * cos) ** zeta * np.exp(-eta * (rij**2 + rik**2 + rjk**2))
        val = 2.0 ** (1 - zeta) * val * fc_ij * fc_ik * fc_jk
        angular.append(2.0 * np.bincount(centre, val, minlength=n))  # j<k counted once: x2
    for eta, zeta, lam in G5_PARAMS:
        val = (1 + lam * cos) ** zeta * np.exp(-eta * (rij**2 + rik**2))
        val = 2.0 ** (1 - zeta) * val * fc_ij * fc_ik
        angular.append(2.0 * np.bincount(centre, val, minlength=n))
    out.append(np.stack(angular, axis=1))
    return np.concatenate(out, axis=1)


def _structure(rng: np.random.Generator):
    """One random strained, rattled FCC cell with vacancies, and its thermostat label."""
    from ase.build import bulk

    kind = rng.choice(["Cu", "Au", "Pt", "mix"], p=[0.2, 0.2, 0.2, 0.4])
    if kind == "mix":
        frac = rng.dirichlet(np.ones(len(SPECIES)))
    else:
        frac = np.eye(len(SPECIES))[SPECIES.index(str(kind))]
    n_sites = 32
    symbols = rng.choice(np.array(SPECIES), size=n_sites, p=frac)
    a0 = float(np.mean([LATTICE[s] for s in symbols]))  # Vegard's law
    atoms = bulk("Cu", "fcc", a=a0, cubic=True).repeat((2, 2, 2))
    atoms.set_chemical_symbols(list(symbols))
    strain = np.diag(rng.uniform(-0.04, 0.04, 3))
    shear = rng.uniform(-0.02, 0.02, 3)
    strain[0, 1] = strain[1, 0] = shear[0]
    strain[0, 2] = strain[2, 0] = shear[1]
    strain[1, 2] = strain[2, 1] = shear[2]
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    n_vac = int(rng.choice([0, 0, 1, 2]))
    if n_vac:
        del atoms[sorted(rng.choice(n_sites, n_vac, replace=False).tolist(), reverse=True)]
    sigma = rng.uniform(0.0, 0.15)  # Angstrom
    atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)
    label = rng.uniform(100.0, 1500.0)  # Kelvin; drawn independently: enters nothing
    return atoms, label


def generate(size: str, seed: int, progress: bool = False) -> WorkloadData:
    from ase.calculators.emt import EMT

    n_struct, n_noise = SIZES[size]
    rng = np.random.default_rng(seed_everything(seed, "atomistic", "structures"))
    feats, energies, labels, owner = [], [], [], []
    for s in progress_bar(range(n_struct), n_struct, "EMT structures", progress):
        atoms, label = _structure(rng)
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energies())
        feats.append(symmetry_functions(atoms))
        labels.append(np.full(len(atoms), label))
        owner.append(np.full(len(atoms), s))
    x = torch.tensor(np.concatenate(feats), dtype=torch.float32)
    label = torch.tensor(np.concatenate(labels), dtype=torch.float32)[:, None]
    y = torch.tensor(np.concatenate(energies), dtype=torch.float32)[:, None]
    owner_t = torch.tensor(np.concatenate(owner))

    names, angular = feature_names()
    n_true = len(names)
    x = torch.cat([x, label], dim=1)
    names = names + ["thermostat_T_label"]
    x, noise = append_noise_columns(x, n_noise, seed_everything(seed, "atomistic", "noise"))
    names += [f"noise_{k}" for k in range(n_noise)]

    train_s, val_s = split_indices(n_struct, VAL_FRACTION, seed)
    tr = torch.isin(owner_t, train_s).nonzero().squeeze(1)
    va = torch.isin(owner_t, val_s).nonzero().squeeze(1)
    train, val, scalers = standardized_splits(x, y, tr, va)
    return WorkloadData(
        train=train,
        val=val,
        feature_arg="x",
        feature_dim=-1,
        feature_names=names,
        true_features=list(range(n_true)),
        noise_features=noise,
        nuisance_features=[n_true],
        info={
            "simulator": "ase.calculators.emt.EMT (per-atom energies)",
            "target": "per-atom potential energy [eV] (standardised)",
            "n_structures": n_struct,
            "n_atoms_train": int(len(tr)),
            "n_atoms_val": int(len(va)),
            "species": list(SPECIES),
            "r_cut_radial": R_CUT_RADIAL,
            "r_cut_angular": R_CUT_ANGULAR,
            "redundant_features": [names.index(a) for a in angular],
            **scalers,
            "split": "by structure",
        },
    )


def build_model(data: WorkloadData) -> nn.Module:
    return table_mlp(data)


def metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    return regression_metrics(pred, target)


WORKLOAD = Workload(
    name="atomistic_energy",
    title="Per-atom EMT energies from Behler-Parrinello symmetry functions",
    description=(
        "Machine-learned interatomic potential: per-atom effective-medium-theory energies (ASE "
        "EMT) of strained, rattled Cu/Au/Pt FCC cells with vacancies, predicted from the atom's "
        "species and Behler-Parrinello radial (G2, element-resolved) and angular (G4/G5) "
        "symmetry functions. Planted: a per-structure thermostat-temperature label that enters "
        "neither geometry nor energy, and i.i.d. noise columns."
    ),
    architecture="mlp",
    task="regression",
    primary="r2",
    higher_is_better=True,
    generate=generate,
    build_model=build_model,
    metrics=metrics,
    recipes={
        "smoke": TrainRecipe(epochs=20, batch_size=64, lr=2e-3),
        "full": TrainRecipe(epochs=80, batch_size=256, lr=1e-3),
    },
    requires=("ase",),
)
