"""Critical temperature QSPR: the vapour-liquid critical temperature of organic molecules from
RDKit 2D descriptors (a classic quantitative structure-property relationship task).

Data are real: the critical-temperature tables the ``chemicals`` package ships (IUPAC, CRC,
Matthews, PSRK, Passut-Danner, Yaws, ...; ``chemicals.critical.Tc`` picks the preferred source per
compound, experimental compilations first; many Yaws entries are themselves estimates) and its
offline PubChem-derived identifier database for the SMILES of each CAS number. Molecules are kept
if they are neutral overall, closed-shell, single-fragment, contain carbon and only
C/H/N/O/F/Cl/Br/I/S/P/Si/B; duplicates of one 2D structure (stereoisomers) are averaged. Inputs are
a fixed set of RDKit descriptors (size, shape, connectivity, polarity, hydrogen bonding, rings,
functional-group counts, element counts).

Ground truth on real data is unknown for the descriptors, so all real descriptors count as true.
Planted irrelevant features: shuffled copies of two real descriptors (molecular weight and TPSA
permuted across molecules: a realistic marginal distribution with no relation to the molecule)
and i.i.d. noise columns.
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

#: RDKit descriptors used (names in ``rdkit.Chem.Descriptors.descList``); Ipc enters as log1p.
DESCRIPTORS = (
    "MolWt", "HeavyAtomMolWt", "HeavyAtomCount", "NumValenceElectrons", "NumHeteroatoms",
    "LabuteASA", "TPSA", "MolLogP", "MolMR", "NumHDonors", "NumHAcceptors", "NHOHCount",
    "NOCount", "NumRotatableBonds", "RingCount", "NumAromaticRings", "NumAliphaticRings",
    "NumSaturatedRings", "FractionCSP3", "BertzCT", "BalabanJ", "HallKierAlpha", "Kappa1",
    "Kappa2", "Kappa3", "Chi0v", "Chi1v", "Chi2v", "Chi3v", "Chi4v", "Chi0n", "Chi1n", "Ipc",
    "MaxAbsPartialCharge", "MinPartialCharge", "MaxPartialCharge", "fr_Al_OH", "fr_Ar_OH",
    "fr_COO", "fr_ether", "fr_ester", "fr_ketone", "fr_aldehyde", "fr_amide", "fr_nitrile",
    "fr_NH2", "fr_NH1", "fr_halogen", "fr_benzene", "fr_sulfide", "fr_nitro", "fr_alkyl_halide",
    "fr_SH", "fr_C_O",
)  # fmt: skip
ELEMENT_COUNTS = ("C", "N", "O", "F", "Cl", "Br", "I", "S", "Si", "P")
ALLOWED = {"C", "H", "N", "O", "F", "Cl", "Br", "I", "S", "P", "Si", "B"}
#: shuffled copies of these descriptors are the planted nuisance features.
SHUFFLED = ("MolWt", "TPSA")
TC_RANGE = (100.0, 1200.0)  # Kelvin

SIZES = {
    # identifier database ("small": the common-compound PubChem table chemicals loads first;
    # "large": also the 40 MB one), candidate CAS numbers drawn (None: all), noise columns
    "smoke": ("small", 240, 8),
    "full": ("large", None, 8),
}
VAL_FRACTION = 0.2


def feature_names() -> list[str]:
    names = ["log1p_Ipc" if d == "Ipc" else d for d in DESCRIPTORS]
    return names + [f"n_{e}" for e in ELEMENT_COUNTS]


def candidate_cas() -> list[str]:
    """Sorted CAS numbers of every compound in the critical-temperature tables."""
    import chemicals.critical as critical

    critical._load_critical_data()  # the tables are loaded lazily
    tables = ("CRC", "IUPAC", "Matthews", "PSRKR4", "PassutDanner", "Yaws")
    cas: set[str] = set()
    for t in tables:
        cas |= set(getattr(critical, f"critical_data_{t}").index)
    return sorted(cas)


def molecule_descriptors(mol) -> np.ndarray:
    from rdkit.Chem import Descriptors

    funcs = dict(Descriptors.descList)
    row = [float(funcs[d](mol)) for d in DESCRIPTORS]
    row[DESCRIPTORS.index("Ipc")] = float(np.log1p(row[DESCRIPTORS.index("Ipc")]))
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    row += [float(symbols.count(e)) for e in ELEMENT_COUNTS]
    return np.array(row)


def _usable(mol) -> bool:
    """Neutral (net charge 0: nitro groups and N-oxides stay), closed-shell, contains carbon,
    only common organic elements."""
    from rdkit import Chem

    atoms = list(mol.GetAtoms())
    symbols = {a.GetSymbol() for a in atoms}
    return (
        "C" in symbols
        and symbols <= ALLOWED
        and Chem.GetFormalCharge(mol) == 0
        and all(a.GetNumRadicalElectrons() == 0 for a in atoms)
    )


def smiles_of(cas_numbers, large_db: bool = True) -> dict[str, str]:
    """SMILES of the CAS numbers found in the identifier database ``chemicals`` ships (the
    small common-compound table only unless ``large_db``, which costs a few seconds to load)."""
    from chemicals.identifiers import get_pubchem_db

    db = get_pubchem_db()
    out = {}
    for cas in cas_numbers:
        meta = db.search_CAS(cas, autoload=large_db)
        if meta and meta.smiles:
            out[cas] = meta.smiles
    return out


def load_molecules(smiles_by_cas: dict[str, str], progress: bool = False):
    """``(smiles list, descriptor matrix, Tc [K])`` for the usable compounds among
    ``smiles_by_cas``; one row per distinct 2D structure (stereoisomers averaged)."""
    from chemicals.critical import Tc
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    by_smiles: dict[str, list[float]] = {}
    mols = {}
    items = sorted(smiles_by_cas.items())
    for cas, smiles in progress_bar(items, len(items), "molecules", progress):
        tc = Tc(cas)
        if "." in smiles or tc is None or not TC_RANGE[0] <= tc <= TC_RANGE[1]:
            continue
        mol = Chem.MolFromSmiles(smiles)
        if mol is None or not _usable(mol):
            continue
        key = Chem.MolToSmiles(mol, isomericSmiles=False)
        by_smiles.setdefault(key, []).append(float(tc))
        mols.setdefault(key, mol)
    keys, rows, tcs = [], [], []
    for key in sorted(by_smiles):
        row = molecule_descriptors(mols[key])
        if np.all(np.isfinite(row)):
            keys.append(key)
            rows.append(row)
            tcs.append(float(np.mean(by_smiles[key])))
    return keys, np.array(rows), np.array(tcs)


def generate(size: str, seed: int, progress: bool = False) -> WorkloadData:
    db, n_candidates, n_noise = SIZES[size]
    found = smiles_of(candidate_cas(), large_db=db == "large")
    if n_candidates is not None:
        rng_c = np.random.default_rng(seed_everything(seed, "qspr", "subset"))
        keep = rng_c.choice(np.array(sorted(found)), size=n_candidates, replace=False)
        found = {c: found[c] for c in keep.tolist()}
    smiles, desc, tc = load_molecules(found, progress)
    n = len(smiles)

    names = feature_names()
    n_true = len(names)
    rng = np.random.default_rng(seed_everything(seed, "qspr", "shuffle"))
    shuffled = [desc[rng.permutation(n), DESCRIPTORS.index(d)] for d in SHUFFLED]
    x = torch.tensor(np.column_stack([desc, *shuffled]), dtype=torch.float32)
    names += [f"{d}_shuffled" for d in SHUFFLED]
    x, noise = append_noise_columns(x, n_noise, seed_everything(seed, "qspr", "noise"))
    names += [f"noise_{k}" for k in range(n_noise)]
    y = torch.tensor(tc, dtype=torch.float32)[:, None]

    tr, va = split_indices(n, VAL_FRACTION, seed)
    train, val, scalers = standardized_splits(x, y, tr, va)
    return WorkloadData(
        train=train,
        val=val,
        feature_arg="x",
        feature_dim=-1,
        feature_names=names,
        true_features=list(range(n_true)),
        noise_features=noise,
        nuisance_features=list(range(n_true, n_true + len(SHUFFLED))),
        info={
            "source": "chemicals.critical.Tc (shipped tables), chemicals.identifiers (SMILES)",
            "target": "critical temperature Tc [K] (standardised)",
            "n_molecules": n,
            "smiles_train": [smiles[i] for i in tr.tolist()],
            "smiles_val": [smiles[i] for i in va.tolist()],
            **scalers,
        },
    )


def build_model(data: WorkloadData) -> nn.Module:
    return table_mlp(data)


def metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    return regression_metrics(pred, target)


WORKLOAD = Workload(
    name="critical_temperature",
    title="Critical temperature of organic molecules from RDKit descriptors (QSPR)",
    description=(
        "Quantitative structure-property relationship on real data: vapour-liquid critical "
        "temperatures of ~5000 organic molecules from the tables shipped with the `chemicals` "
        "package (SMILES from its offline identifier database), predicted from 64 RDKit 2D "
        "descriptors. Planted: shuffled copies of molecular weight and TPSA (realistic "
        "marginals, no relation to the molecule) and i.i.d. noise columns."
    ),
    architecture="mlp",
    task="regression",
    primary="r2",
    higher_is_better=True,
    generate=generate,
    build_model=build_model,
    metrics=metrics,
    recipes={
        "smoke": TrainRecipe(epochs=20, batch_size=32, lr=2e-3),
        "full": TrainRecipe(epochs=150, batch_size=64, lr=1e-3, weight_decay=1e-3),
    },
    requires=("chemicals", "rdkit"),
)
