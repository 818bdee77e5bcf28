"""MMFF94 energies of thermally sampled conformers of small organic molecules.

Molecules are the small neutral organics (3-12 heavy atoms; C, N, O, F, S, Cl) among the 5000 NCI
compounds that RDKit ships (``RDConfig.RDDataDir/NCI/first_5K.smi``). For each molecule, RDKit's
ETKDGv3 embeds a few conformers; each is relaxed with MMFF94 and then run through a short
Metropolis Monte Carlo walk (single-atom moves, 80 sweeps in ``full``) on the MMFF94 potential at
a temperature ``T`` (log-uniform 100-1500 K, one per conformer), so the snapshots range from
near-minimum to strongly strained geometries. The target is the MMFF94 potential energy of the
final snapshot per atom (kcal/mol/atom), a graph-level regression on the all-atom (explicit-H)
bond graph.

Node features: element one-hot, degree, aromaticity, ring membership, hybridisation, MMFF94
partial charge (chemistry), and invariants of the snapshot geometry: distance to the centroid,
bond-length strain against Pauling bond-order radii, angle strain against VSEPR angles, a
non-bonded r^-6 contact sum and the site Coulomb energy (true). Nuisance: each atom's kinetic
energy from a 300 K Maxwell-Boltzmann velocity draw (the potential energy does not depend on
velocities). Plus i.i.d. noise columns. Conformers of one molecule share a split.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor, nn

from ._common import (
    bond_edges,
    graph_split,
    mlp,
    node_rows,
    regression_metrics,
    standardize_rows,
)
from .base import (
    TrainRecipe,
    Workload,
    WorkloadData,
    append_noise_columns,
    progress_bar,
    seed_everything,
    split_indices,
)

ELEMENTS = ("H", "C", "N", "O", "F", "S", "Cl")
HYBRIDISATIONS = ("SP", "SP2", "SP3")
IDEAL_ANGLE = {"SP": math.pi, "SP2": 2 * math.pi / 3, "SP3": math.acos(-1.0 / 3.0)}
TRUE_NAMES = (
    [f"element_{e}" for e in ELEMENTS]
    + ["degree", "aromatic", "in_ring"]
    + [f"hybrid_{h.lower()}" for h in HYBRIDISATIONS]
    + ["mmff_charge", "dist_centroid", "bond_strain", "angle_strain", "contact_r6", "coulomb_site"]
)
NUISANCE_NAMES = ["kinetic_energy_300K"]
N_NOISE = 8
SIZES = {
    "smoke": {"n_molecules": 30, "conformers": 3, "sweeps": 25},
    "full": {"n_molecules": 600, "conformers": 4, "sweeps": 80},
}
HEAVY_ATOMS = (3, 12)
T_RANGE = (100.0, 1500.0)  # K
K_B = 0.0019872041  # kcal/(mol K)
COULOMB = 332.0716  # kcal/mol * Angstrom / e^2
VAL_FRACTION = 0.2


# ---- molecules -----------------------------------------------------------------------------------
def _nci_smiles() -> list[str]:
    """The SMILES column of RDKit's bundled NCI sample (5000 compounds), in file order."""
    from rdkit import RDConfig

    path = os.path.join(RDConfig.RDDataDir, "NCI", "first_5K.smi")
    with open(path) as fh:
        return [line.split()[0] for line in fh if line.strip()]


def _usable(smiles: str):
    """The molecule if it is a small neutral closed-shell organic in scope, else None."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None or len(Chem.GetMolFrags(mol)) != 1:
        return None
    if not HEAVY_ATOMS[0] <= mol.GetNumAtoms() <= HEAVY_ATOMS[1]:
        return None
    atoms = list(mol.GetAtoms())
    if any(a.GetSymbol() not in ELEMENTS or a.GetFormalCharge() for a in atoms):
        return None
    if any(a.GetNumRadicalElectrons() for a in atoms) or not any(
        a.GetSymbol() == "C" for a in atoms
    ):
        return None
    return mol


def _metropolis(
    ff, x: np.ndarray, temperature: float, sweeps: int, rng
) -> tuple[np.ndarray, float]:
    """Single-atom Metropolis moves on the MMFF94 surface; returns the final snapshot."""
    n = x.shape[0]
    step = 0.025 * math.sqrt(temperature / 300.0)
    beta = 1.0 / (K_B * temperature)
    energy = ff.CalcEnergy(x.ravel().tolist())
    atoms = rng.integers(n, size=sweeps * n)
    moves = rng.normal(scale=step, size=(sweeps * n, 3))
    accept = np.log(rng.random(sweeps * n))
    for i, move, log_u in zip(atoms, moves, accept, strict=True):
        trial = x.copy()
        trial[i] += move
        e_trial = ff.CalcEnergy(trial.ravel().tolist())
        if -beta * (e_trial - energy) >= log_u:
            x, energy = trial, e_trial
    return x, energy


def _node_features(mol, props, pos: np.ndarray) -> np.ndarray:
    """Chemistry + geometry invariants per atom (``TRUE_NAMES`` order)."""
    from rdkit import Chem

    pt = Chem.GetPeriodicTable()
    n = mol.GetNumAtoms()
    topo = Chem.GetDistanceMatrix(mol)
    diff = pos[:, None, :] - pos[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    charge = np.array([props.GetMMFFPartialCharge(i) for i in range(n)])
    far = topo >= 3  # MMFF excludes 1-2 and 1-3 pairs from non-bonded terms
    safe = np.where(far, np.maximum(dist, 0.5), np.inf)
    contact = (safe**-6).sum(1)
    coulomb = COULOMB * charge * (charge[None, :] / safe).sum(1)
    centroid = np.linalg.norm(pos - pos.mean(0), axis=1)

    bond_strain = np.zeros(n)
    for b in mol.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        # Pauling: r(order) = r(1) - 0.71 A * log10(order)
        r0 = pt.GetRcovalent(mol.GetAtomWithIdx(i).GetAtomicNum())
        r0 += pt.GetRcovalent(mol.GetAtomWithIdx(j).GetAtomicNum())
        r0 -= 0.71 * math.log10(b.GetBondTypeAsDouble())
        dev = (dist[i, j] - r0) ** 2
        bond_strain[i] += dev
        bond_strain[j] += dev

    rows = []
    for atom in mol.GetAtoms():
        i = atom.GetIdx()
        hyb = str(atom.GetHybridization())
        nbrs = [a.GetIdx() for a in atom.GetNeighbors()]
        angle_strain = 0.0
        theta0 = IDEAL_ANGLE.get(hyb, IDEAL_ANGLE["SP3"])
        for a in range(len(nbrs)):
            for b in range(a + 1, len(nbrs)):
                u, v = pos[nbrs[a]] - pos[i], pos[nbrs[b]] - pos[i]
                cos = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
                angle_strain += (math.acos(max(-1.0, min(1.0, cos))) - theta0) ** 2
        row = [float(atom.GetSymbol() == e) for e in ELEMENTS]
        row += [float(atom.GetDegree()), float(atom.GetIsAromatic()), float(atom.IsInRing())]
        row += [float(hyb == h) for h in HYBRIDISATIONS]
        row += [charge[i], centroid[i], bond_strain[i], angle_strain, contact[i], coulomb[i]]
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


def _molecule_samples(mol, smiles: str, seed: int, size: str):
    """(node features, edge_index, energy per atom) for each sampled conformer of a molecule."""
    from rdkit import Chem
    from rdkit.Chem import rdDistGeom
    from rdkit.Chem import rdForceFieldHelpers as FF

    cfg = SIZES[size]
    mol = Chem.AddHs(mol)
    if not FF.MMFFHasAllMoleculeParams(mol):
        return []
    props = FF.MMFFGetMoleculeProperties(mol)
    rng = np.random.default_rng(seed_everything(seed, "conformer", smiles))
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = int(rng.integers(1, 2**31 - 1))
    cids = list(rdDistGeom.EmbedMultipleConfs(mol, cfg["conformers"], params))
    edges = bond_edges(mol)
    out = []
    for cid in cids:
        ff = FF.MMFFGetMoleculeForceField(mol, props, confId=cid)
        ff.Minimize(maxIts=500)
        x = np.array(ff.Positions()).reshape(-1, 3)
        temperature = math.exp(rng.uniform(math.log(T_RANGE[0]), math.log(T_RANGE[1])))
        x, energy = _metropolis(ff, x, temperature, cfg["sweeps"], rng)
        out.append((_node_features(mol, props, x), edges, energy / mol.GetNumAtoms()))
    return out


def generate(size: str, seed: int, progress: bool = False) -> WorkloadData:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    lines = _nci_smiles()
    order = np.random.default_rng(seed_everything(seed, "conformer", "molecules")).permutation(
        len(lines)
    )
    wanted = SIZES[size]["n_molecules"]
    molecules: list[list[tuple[np.ndarray, Tensor, float]]] = []
    names: list[str] = []
    seen: set[str] = set()
    bar = progress_bar(range(wanted), desc="conformer_energy: MMFF MC", enabled=progress)
    ticks = iter(bar)
    for k in order:  # molecules in a seeded random order until enough are in scope
        if len(molecules) == wanted:
            break
        mol = _usable(lines[k])
        if mol is None:
            continue
        smiles = Chem.MolToSmiles(mol)
        if smiles in seen:
            continue
        seen.add(smiles)
        samples = _molecule_samples(mol, smiles, seed, size)
        if samples:
            molecules.append(samples)
            names.append(smiles)
            next(ticks, None)
    next(ticks, None)  # let a tqdm bar close

    train_mol, val_mol = split_indices(len(molecules), VAL_FRACTION, seed)
    flat = [(m, s) for m, samples in enumerate(molecules) for s in samples]
    counts = [s[0].shape[0] for _, s in flat]
    starts = np.concatenate([[0], np.cumsum(counts)])
    x = torch.from_numpy(np.concatenate([s[0] for _, s in flat])).float()
    # nuisance: kinetic energy of each atom in a 300 K Maxwell-Boltzmann draw (kcal/mol)
    rng = np.random.default_rng(seed_everything(seed, "conformer", "velocities"))
    kinetic = 0.5 * K_B * 300.0 * rng.chisquare(3, size=x.shape[0])
    x = torch.cat([x, torch.from_numpy(kinetic).float().unsqueeze(1)], dim=1)
    nuisance = [x.shape[1] - 1]
    x, noise = append_noise_columns(x, N_NOISE, seed_everything(seed, "conformer"), dim=-1)
    y = torch.tensor([s[2] for _, s in flat], dtype=torch.float32)

    in_train = set(train_mol.tolist())
    train_g = [g for g, (m, _) in enumerate(flat) if m in in_train]
    val_g = [g for g, (m, _) in enumerate(flat) if m not in in_train]
    x, x_mean, x_std = standardize_rows(x, node_rows(starts, train_g), min_std=1e-6)
    y_mean, y_std = y[train_g].mean(), y[train_g].std()
    y = (y - y_mean) / y_std
    edges = [s[1] for _, s in flat]

    feature_names = list(TRUE_NAMES) + NUISANCE_NAMES + [f"noise_{k}" for k in range(N_NOISE)]
    return WorkloadData(
        train=graph_split(x, y, starts, edges, train_g),
        val=graph_split(x, y, starts, edges, val_g),
        feature_arg="x",
        feature_dim=-1,
        feature_names=feature_names,
        true_features=list(range(len(TRUE_NAMES))),
        noise_features=noise,
        nuisance_features=nuisance,
        info={
            "source": "RDKit NCI first_5K.smi; ETKDGv3 + MMFF94 relax + Metropolis MC at T",
            "n_molecules": len(molecules),
            "n_train": len(train_g),
            "n_val": len(val_g),
            "target": "MMFF94 potential energy per atom",
            "target_units": "kcal/mol/atom",
            "y_mean": float(y_mean),
            "y_std": float(y_std),
            "x_mean": x_mean.tolist(),
            "x_std": x_std.tolist(),
            "smiles": names,
            "train_molecules": train_mol.tolist(),
            "val_molecules": val_mol.tolist(),
        },
    )


# torch_geometric's pooling functions, bound as module globals when a model is built: fx
# autowraps functions it finds among the globals of the traced forward (PyG stays optional).
global_mean_pool = None


def _bind_pyg_pooling() -> None:
    global global_mean_pool
    from torch_geometric.nn import global_mean_pool


# ---- model ---------------------------------------------------------------------------------------
class ConformerGCN(nn.Module):
    """Linear embedding, 4 residual GCN layers, mean pooling (energy per atom), MLP head."""

    def __init__(self, in_dim: int, hidden: int = 128, layers: int = 4) -> None:
        super().__init__()
        _bind_pyg_pooling()
        from torch_geometric.nn import GCNConv

        self.embed = nn.Linear(in_dim, hidden)
        self.convs = nn.ModuleList(GCNConv(hidden, hidden) for _ in range(layers))
        self.act = nn.ReLU()
        self.head = mlp(hidden, 1, [hidden], nn.ReLU)

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor) -> Tensor:
        h = self.act(self.embed(x))
        for conv in self.convs:
            h = h + self.act(conv(h, edge_index))
        return self.head(global_mean_pool(h, batch))


def build_model(data: WorkloadData) -> nn.Module:
    return ConformerGCN(len(data.feature_names))


def metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    return regression_metrics(pred, target, ("r2", "mae"))


WORKLOAD = Workload(
    name="conformer_energy",
    title="MMFF94 energy per atom of thermally sampled conformers (RDKit NCI molecules)",
    description=(
        "Small organic molecules from RDKit's bundled NCI set are embedded with ETKDGv3, relaxed "
        "with MMFF94 and sampled by Metropolis Monte Carlo at a random temperature (100-1500 K); "
        "a GCN on the all-atom bond graph regresses the MMFF94 energy per atom from element, "
        "hybridisation, MMFF charges and geometric invariants (bond/angle strain, contacts, "
        "site Coulomb energy, centroid distance). Planted: 8 i.i.d. noise node columns and each "
        "atom's 300 K kinetic energy (nuisance: the potential energy ignores velocities)."
    ),
    architecture="gnn",
    task="regression",
    primary="r2",
    higher_is_better=True,
    generate=generate,
    build_model=build_model,
    metrics=metrics,
    recipes={
        "smoke": TrainRecipe(epochs=20, batch_size=16, lr=2e-3),
        "full": TrainRecipe(epochs=80, batch_size=64, lr=1e-3),
    },
    requires=("rdkit", "torch_geometric"),
)
