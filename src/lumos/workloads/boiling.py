"""Normal boiling points of organic compounds from their molecular graphs (QSPR with a GNN).

Data are the experimental normal boiling points (Tb, K) of the CRC Handbook organic table that the
``chemicals`` package ships (``chemicals.phase_change.Tb_sources["CRC_ORG"]``), matched by CAS
number to SMILES from the PubChem identifier tables shipped in the same package (the "small" table
for ``smoke``, "small" + "large" for ``full``). RDKit turns each SMILES into a heavy-atom graph:
atoms are nodes with chemical descriptors, bonds are undirected edges (stored in both directions).

Planted features: i.i.d. standard-normal node columns (noise) and a per-atom *isotope label*
(nuisance): each heavy atom is randomly marked as a heavy isotopologue (13C, 15N, 18O, 34S, 37Cl,
81Br, ...) and the feature is its mass-number shift. The tabulated Tb are for natural-abundance
compounds, so the label carries no information about the target.
"""

from __future__ import annotations

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

ELEMENTS = ("C", "N", "O", "F", "Si", "P", "S", "Cl", "Br", "I")
HYBRIDISATIONS = ("SP", "SP2", "SP3")
#: mass-number shift of the heavy isotope an atom is labelled with (mono-isotopic F, P, I: 0).
ISOTOPE_SHIFT = {"C": 1, "N": 1, "O": 2, "F": 0, "Si": 1, "P": 0, "S": 2, "Cl": 2, "Br": 2, "I": 0}
TRUE_NAMES = (
    [f"element_{e}" for e in ELEMENTS]
    + ["degree", "num_h", "formal_charge", "aromatic", "in_ring"]
    + [f"hybrid_{h.lower()}" for h in HYBRIDISATIONS]
    + ["gasteiger_charge", "crippen_logp", "crippen_mr", "tpsa_contrib"]
)
NUISANCE_NAMES = ["isotope_label_shift"]
N_NOISE = 8
SIZES = {
    "smoke": {"tables": ("small",), "max_molecules": 320},
    "full": {"tables": ("small", "large"), "max_molecules": None},
}
TB_RANGE = (150.0, 800.0)  # K; outside this the CRC entries are mostly decomposition/odd values
MAX_HEAVY_ATOMS = 40
YAWS_TOLERANCE = 20.0  # K
VAL_FRACTION = 0.2


# ---- data ----------------------------------------------------------------------------------------
def _pubchem_smiles(tables: tuple[str, ...]) -> dict[str, str]:
    """CAS -> SMILES from the PubChem identifier tables that ``chemicals`` ships."""
    import chemicals
    import pandas as pd

    root = os.path.join(os.path.dirname(chemicals.__file__), "Identifiers")
    out: dict[str, str] = {}
    for table in tables:
        path = os.path.join(root, f"chemical identifiers pubchem {table}.tsv")
        df = pd.read_csv(
            path,
            sep="\t",
            header=None,
            usecols=[1, 4],
            names=["cas", "smiles"],
            dtype=str,
            quoting=3,
            keep_default_na=False,
        )
        for cas, smi in zip(df["cas"], df["smiles"], strict=True):
            if smi and cas not in out:
                out[cas] = smi
    return out


def _crc_boiling_points() -> dict[str, float]:
    """CRC Tb by CAS; entries that Yaws' compilation contradicts by > 20 K are dropped."""
    from chemicals.phase_change import Tb_sources

    crc = Tb_sources["CRC_ORG"]
    crc = crc[crc["Tb"].notna()]
    yaws = Tb_sources["YAWS"]["Tb"].to_dict()
    out = {}
    for cas, tb in zip(crc.index, crc["Tb"], strict=True):
        other = yaws.get(cas)
        if other is not None and np.isfinite(other) and abs(other - tb) > YAWS_TOLERANCE:
            continue
        out[str(cas)] = float(tb)
    return out


def _mol_features(mol) -> np.ndarray | None:
    """Node features of the chemistry (``TRUE_NAMES`` order), None if an atom is out of scope.

    Besides the graph descriptors: Gasteiger partial charges, Wildman-Crippen atomic logP and
    molar-refractivity contributions (polarity, polarisability) and Ertl TPSA contributions
    (polar surface: hydrogen bonding), all standard per-atom RDKit descriptors.
    """
    from rdkit.Chem import rdMolDescriptors, rdPartialCharges

    rdPartialCharges.ComputeGasteigerCharges(mol)
    crippen = rdMolDescriptors._CalcCrippenContribs(mol)
    tpsa = rdMolDescriptors._CalcTPSAContribs(mol)
    rows = []
    for atom in mol.GetAtoms():
        sym = atom.GetSymbol()
        if sym not in ELEMENTS:
            return None
        row = [float(sym == e) for e in ELEMENTS]
        row += [
            float(atom.GetDegree()),
            float(atom.GetTotalNumHs()),
            float(atom.GetFormalCharge()),
            float(atom.GetIsAromatic()),
            float(atom.IsInRing()),
        ]
        hyb = str(atom.GetHybridization())
        row += [float(hyb == h) for h in HYBRIDISATIONS]
        q = atom.GetDoubleProp("_GasteigerCharge")
        i = atom.GetIdx()
        row += [q if np.isfinite(q) else 0.0, crippen[i][0], crippen[i][1], tpsa[i]]
        rows.append(row)
    return np.asarray(rows, dtype=np.float32)


def _molecules(size: str, progress: bool):
    """(canonical smiles, Tb, mol) for every usable CRC compound, sorted by SMILES."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    smiles = _pubchem_smiles(SIZES[size]["tables"])
    tb = _crc_boiling_points()
    by_smiles: dict[str, list[float]] = {}
    mols = {}
    cas_list = sorted(c for c in tb if c in smiles)
    for cas in progress_bar(cas_list, desc="boiling_point: molecules", enabled=progress):
        t = tb[cas]
        if not TB_RANGE[0] <= t <= TB_RANGE[1]:
            continue
        mol = Chem.MolFromSmiles(smiles[cas])
        if mol is None or len(Chem.GetMolFrags(mol)) != 1:
            continue
        n = mol.GetNumAtoms()
        if n < 2 or n > MAX_HEAVY_ATOMS or not any(a.GetSymbol() == "C" for a in mol.GetAtoms()):
            continue
        if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
            continue
        can = Chem.MolToSmiles(mol)
        by_smiles.setdefault(can, []).append(t)
        mols.setdefault(can, mol)
    out = []
    for can in sorted(by_smiles):
        values = by_smiles[can]
        if max(values) - min(values) > 10.0:  # conflicting entries (isomers collapsed) are dropped
            continue
        out.append((can, float(np.mean(values)), mols[can]))
    return out


def generate(size: str, seed: int, progress: bool = False) -> WorkloadData:
    rows = []
    for can, t, mol in _molecules(size, progress):
        feats = _mol_features(mol)
        if feats is not None:
            rows.append((can, t, mol, feats))
    cap = SIZES[size]["max_molecules"]
    if cap is not None and len(rows) > cap:
        rng = np.random.default_rng(seed_everything(seed, "boiling", "subsample"))
        keep = np.sort(rng.choice(len(rows), size=cap, replace=False))
        rows = [rows[i] for i in keep]

    counts = [r[3].shape[0] for r in rows]
    x = torch.from_numpy(np.concatenate([r[3] for r in rows]))
    # nuisance: random heavy-isotope label per atom -> mass-number shift (0 for mono-isotopic)
    rng = np.random.default_rng(seed_everything(seed, "boiling", "isotope"))
    labelled = rng.random(x.shape[0]) < 0.3
    shift = np.array(
        [ISOTOPE_SHIFT[a.GetSymbol()] for r in rows for a in r[2].GetAtoms()], dtype=np.float32
    )
    x = torch.cat([x, torch.from_numpy(labelled * shift).unsqueeze(1)], dim=1)
    nuisance = [x.shape[1] - 1]
    x, noise = append_noise_columns(x, N_NOISE, seed_everything(seed, "boiling"), dim=-1)

    y = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    train_idx, val_idx = split_indices(len(rows), VAL_FRACTION, seed)
    starts = np.concatenate([[0], np.cumsum(counts)])
    x, x_mean, x_std = standardize_rows(x, node_rows(starts, train_idx.tolist()), min_std=1e-3)
    y_mean, y_std = y[train_idx].mean(), y[train_idx].std()
    y = (y - y_mean) / y_std
    edges = [bond_edges(r[2]) for r in rows]

    names = list(TRUE_NAMES) + NUISANCE_NAMES + [f"noise_{k}" for k in range(N_NOISE)]
    return WorkloadData(
        train=graph_split(x, y, starts, edges, train_idx.tolist()),
        val=graph_split(x, y, starts, edges, val_idx.tolist()),
        feature_arg="x",
        feature_dim=-1,
        feature_names=names,
        true_features=list(range(len(TRUE_NAMES))),
        noise_features=noise,
        nuisance_features=nuisance,
        info={
            "source": "CRC Handbook organic Tb (chemicals CRC_ORG) + PubChem SMILES (chemicals)",
            "n_molecules": len(rows),
            "n_train": len(train_idx),
            "n_val": len(val_idx),
            "target": "normal boiling point Tb",
            "target_units": "K",
            "y_mean": float(y_mean),
            "y_std": float(y_std),
            "x_mean": x_mean.tolist(),
            "x_std": x_std.tolist(),
            "smiles_val": [rows[i][0] for i in val_idx.tolist()],
        },
    )


# torch_geometric's pooling functions, bound as module globals when a model is built: fx
# autowraps functions it finds among the globals of the traced forward (PyG stays optional).
global_add_pool = global_mean_pool = None


def _bind_pyg_pooling() -> None:
    global global_add_pool, global_mean_pool
    from torch_geometric.nn import global_add_pool, global_mean_pool


# ---- model ---------------------------------------------------------------------------------------
class BoilingPointGIN(nn.Module):
    """GIN (4 layers, MLP inside each) with sum + mean pooling and an MLP head."""

    def __init__(self, in_dim: int, hidden: int = 64, layers: int = 4) -> None:
        super().__init__()
        _bind_pyg_pooling()
        from torch_geometric.nn import GINConv

        self.convs = nn.ModuleList()
        for k in range(layers):
            inner = mlp(in_dim if k == 0 else hidden, hidden, [hidden], nn.ReLU)
            self.convs.append(GINConv(inner, train_eps=True))
        self.act = nn.ReLU()
        self.head = mlp(2 * hidden, 1, [hidden], nn.ReLU)

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor) -> Tensor:
        h = x
        for conv in self.convs:
            h = self.act(conv(h, edge_index))
        # sum pooling scales with molecular size (Tb does); mean pooling carries composition
        pooled = torch.cat([global_add_pool(h, batch) * 0.1, global_mean_pool(h, batch)], dim=1)
        return self.head(pooled)


def build_model(data: WorkloadData) -> nn.Module:
    return BoilingPointGIN(len(data.feature_names))


def metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    return regression_metrics(pred, target, ("r2", "mae"))


WORKLOAD = Workload(
    name="boiling_point",
    title="Normal boiling points of organic molecules (CRC Handbook) from molecular graphs",
    description=(
        "QSPR of the normal boiling point: experimental Tb of organic compounds from the CRC "
        "Handbook table shipped by `chemicals`, SMILES from its PubChem identifier tables, "
        "turned into RDKit heavy-atom graphs (element, degree, H count, charge, aromaticity, "
        "ring membership, hybridisation per atom; bonds as edges); a GIN regresses Tb. "
        "Planted: 8 i.i.d. noise node columns and a random heavy-isotope label per atom "
        "(nuisance: the tabulated Tb are for natural-abundance compounds)."
    ),
    architecture="gnn",
    task="regression",
    primary="r2",
    higher_is_better=True,
    generate=generate,
    build_model=build_model,
    metrics=metrics,
    recipes={
        "smoke": TrainRecipe(epochs=15, batch_size=32, lr=2e-3),
        "full": TrainRecipe(epochs=80, batch_size=32, lr=1e-3, weight_decay=1e-5),
    },
    requires=("rdkit", "chemicals", "pandas", "torch_geometric"),
)
