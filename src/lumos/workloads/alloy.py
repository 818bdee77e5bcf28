"""Alloy mixing energy: EMT mixing energies of random FCC solid solutions from composition and
composition-weighted element properties (a materials-informatics / high-entropy-alloy task).

Each sample is a random substitutional FCC alloy of 2-5 elements drawn from Cu, Ag, Au, Ni, Pd,
Pt, Al (the metals ASE's effective-medium theory is fitted to) on a 2x2x2 conventional supercell
(32 sites) at Vegard's law, volume-relaxed in the harmonic approximation (energy and pressure of
the Vegard cell and the composition-averaged bulk modulus give the zero-pressure energy), atoms on
ideal lattice sites. The target
is the mixing energy per atom relative to the relaxed pure elements,
``E_mix = E(alloy)/N - sum_e x_e E_e``. Inputs are the atomic fractions, the composition mean and
standard deviation of element properties (atomic number and mass, covalent radius and FCC lattice
constant from ``ase.data``; Pauling electronegativity, valence electrons and cohesive energy from
standard tables), the number of components and the ideal configurational entropy.

Ground truth: every composition-derived column is a deterministic function of the composition the
energy depends on, so all are *true* (several, e.g. the lattice-constant mismatch, are highly
informative; others, e.g. the mean mass, are exact functions of the fractions but physically
uninvolved). Planted irrelevant features: the specimen mass in grams (an extensive label, drawn
independently; the per-atom mixing energy is intensive) and i.i.d. noise columns. The remaining
scatter at fixed composition comes from the random site occupation.
"""

from __future__ import annotations

import functools

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

ELEMENTS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
#: Pauling electronegativity (CRC Handbook).
PAULING = {"Cu": 1.90, "Ag": 1.93, "Au": 2.54, "Ni": 1.91, "Pd": 2.20, "Pt": 2.28, "Al": 1.61}
#: valence (s + d, or s + p for Al) electrons.
VALENCE = {"Cu": 11, "Ag": 11, "Au": 11, "Ni": 10, "Pd": 10, "Pt": 10, "Al": 3}
#: experimental cohesive energy, eV/atom (Kittel, Introduction to Solid State Physics).
COHESIVE = {"Cu": 3.49, "Ag": 2.95, "Au": 3.81, "Ni": 4.44, "Pd": 3.89, "Pt": 5.84, "Al": 3.39}
PROPERTIES = ("Z", "mass", "covalent_radius", "fcc_a", "pauling_en", "valence_e", "cohesive_e")
REPEAT = 2  # 2x2x2 conventional cells = 32 sites

SIZES = {
    # alloys, noise columns
    "smoke": (96, 8),
    "full": (4000, 8),
}
VAL_FRACTION = 0.2


def element_properties() -> np.ndarray:
    """``(len(ELEMENTS), len(PROPERTIES))`` table of element properties."""
    from ase.data import atomic_masses, atomic_numbers, covalent_radii, reference_states

    rows = []
    for e in ELEMENTS:
        z = atomic_numbers[e]
        rows.append(
            [
                z,
                atomic_masses[z],
                covalent_radii[z],
                reference_states[z]["a"],
                PAULING[e],
                VALENCE[e],
                COHESIVE[e],
            ]
        )
    return np.array(rows, dtype=np.float64)


def feature_names() -> list[str]:
    names = [f"x_{e}" for e in ELEMENTS]
    names += [f"mean_{p}" for p in PROPERTIES] + [f"std_{p}" for p in PROPERTIES]
    return names + ["n_components", "config_entropy"]


def composition_features(x: np.ndarray, props: np.ndarray) -> np.ndarray:
    """Features of compositions ``x`` (n, len(ELEMENTS)), columns as :func:`feature_names`."""
    mean = x @ props
    var = np.einsum("ne,nep->np", x, (props[None] - mean[:, None]) ** 2)
    n_comp = (x > 0).sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(x > 0, x * np.log(x), 0.0).sum(axis=1, keepdims=True)
    return np.concatenate([x, mean, np.sqrt(np.maximum(var, 0.0)), n_comp, entropy], axis=1)


def _energy_and_pressure(atoms, scale: float, cell0: np.ndarray) -> tuple[float, float, float]:
    """Energy, pressure and volume with the cell scaled isotropically by ``scale``."""
    atoms.set_cell(cell0 * scale, scale_atoms=True)
    energy = atoms.get_potential_energy()
    pressure = -float(np.trace(atoms.get_stress(voigt=False))) / 3.0
    return energy, pressure, atoms.get_volume()


def relaxed_energy(atoms, bulk_modulus: float) -> float:
    """Energy per atom at zero pressure under isotropic scaling of the cell (harmonic).

    With pressure ``P`` at the starting volume ``V`` and bulk modulus ``B`` the quadratic E(V)
    has its minimum ``E - P^2 V / (2 B)`` below. Starting from Vegard's law (volume error ~1 %)
    the correction is a few meV/atom, and using the composition-averaged bulk modulus of the pure
    elements (within ~20 % of the alloy's) errs by well under 1 meV/atom."""
    energy = atoms.get_potential_energy()
    pressure = -float(np.trace(atoms.get_stress(voigt=False))) / 3.0
    return (energy - pressure**2 * atoms.get_volume() / (2.0 * bulk_modulus)) / len(atoms)


@functools.lru_cache(maxsize=1)
def _pure_references() -> dict[str, tuple[float, float, float]]:
    """(relaxed per-atom energy [eV], lattice constant [A], bulk modulus [eV/A^3]) of each pure
    FCC element in EMT (conventional 4-atom cell, secant iterations on P(V) = 0)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    refs = {}
    for e in ELEMENTS:
        atoms = bulk(e, "fcc", cubic=True)
        atoms.calc = EMT()
        cell0 = atoms.cell.array.copy()
        scale, (_, p, v) = 1.0, _energy_and_pressure(atoms, 1.0, cell0)
        for _ in range(20):
            s2 = scale * (1.0 + (0.002 if p > 0 else -0.002))
            _, p2, v2 = _energy_and_pressure(atoms, s2, cell0)
            bulk_modulus = -v2 * (p2 - p) / (v2 - v)
            v_new = v2 - p2 * (v2 - v) / (p2 - p)
            scale = s2 * (v_new / v2) ** (1.0 / 3.0)
            energy, p, v = _energy_and_pressure(atoms, scale, cell0)
            if abs(p) < 1e-7:
                break
        refs[e] = (energy / len(atoms), float(atoms.cell.array[0, 0]), float(bulk_modulus))
    return refs


def _composition(rng: np.random.Generator, n_sites: int) -> np.ndarray:
    """Atom counts of a random 2-5 component alloy (every chosen element present)."""
    k = int(rng.integers(2, 6))
    chosen = rng.choice(len(ELEMENTS), size=k, replace=False)
    frac = rng.dirichlet(np.ones(k))
    counts = 1 + rng.multinomial(n_sites - k, frac)
    out = np.zeros(len(ELEMENTS), dtype=np.int64)
    out[chosen] = counts
    return out


def generate(size: str, seed: int, progress: bool = False) -> WorkloadData:
    from ase.build import bulk
    from ase.calculators.emt import EMT

    n_alloys, n_noise = SIZES[size]
    rng = np.random.default_rng(seed_everything(seed, "alloy", "compositions"))
    props = element_properties()
    refs = _pure_references()
    ref_energy = np.array([refs[e][0] for e in ELEMENTS])
    ref_a = np.array([refs[e][1] for e in ELEMENTS])  # EMT lattice constants, for Vegard's law
    ref_b = np.array([refs[e][2] for e in ELEMENTS])
    n_sites = 4 * REPEAT**3
    fractions, energies = [], []
    for _ in progress_bar(range(n_alloys), n_alloys, "EMT alloys", progress):
        counts = _composition(rng, n_sites)
        x = counts / n_sites
        symbols = np.repeat(np.array(ELEMENTS), counts)
        rng.shuffle(symbols)
        atoms = bulk("Cu", "fcc", a=float(x @ ref_a), cubic=True).repeat(REPEAT)
        atoms.set_chemical_symbols(list(symbols))
        atoms.calc = EMT()
        energies.append(relaxed_energy(atoms, float(x @ ref_b)) - float(x @ ref_energy))
        fractions.append(x)
    x_comp = np.array(fractions)
    feats = composition_features(x_comp, props)
    specimen_mass = np.exp(rng.uniform(np.log(0.1), np.log(10.0), size=(n_alloys, 1)))

    names = feature_names()
    n_true = len(names)
    x = torch.tensor(np.concatenate([feats, specimen_mass], axis=1), dtype=torch.float32)
    names.append("specimen_mass_g")
    x, noise = append_noise_columns(x, n_noise, seed_everything(seed, "alloy", "noise"))
    names += [f"noise_{k}" for k in range(n_noise)]
    y = torch.tensor(energies, dtype=torch.float32)[:, None]

    tr, va = split_indices(n_alloys, VAL_FRACTION, seed)
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
            "simulator": "ase.calculators.emt.EMT, volume-relaxed random FCC solid solutions",
            "target": "mixing energy per atom [eV/atom] vs relaxed pure elements (standardised)",
            "n_sites": n_sites,
            "elements": list(ELEMENTS),
            "pure_reference_energies_eV": ref_energy.tolist(),
            "pure_emt_lattice_constants_A": ref_a.tolist(),
            "pure_emt_bulk_moduli_eV_per_A3": ref_b.tolist(),
            "element_properties": {p: props[:, k].tolist() for k, p in enumerate(PROPERTIES)},
            **scalers,
        },
    )


def build_model(data: WorkloadData) -> nn.Module:
    return table_mlp(data)


def metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    return regression_metrics(pred, target)


WORKLOAD = Workload(
    name="alloy_mixing",
    title="Mixing energy of random FCC alloys (EMT) from composition descriptors",
    description=(
        "Materials informatics: the mixing energy per atom of random 2-5 component FCC solid "
        "solutions of Cu/Ag/Au/Ni/Pd/Pt/Al (32-site supercells, volume-relaxed with ASE's EMT "
        "calculator) predicted from atomic fractions and composition means/spreads of element "
        "properties. Planted: the specimen mass in grams (extensive, irrelevant to an intensive "
        "per-atom energy) and i.i.d. noise columns."
    ),
    architecture="mlp",
    task="regression",
    primary="r2",
    higher_is_better=True,
    generate=generate,
    build_model=build_model,
    metrics=metrics,
    recipes={
        "smoke": TrainRecipe(epochs=40, batch_size=32, lr=2e-3),
        "full": TrainRecipe(epochs=200, batch_size=64, lr=1e-3, weight_decay=1e-3),
    },
    requires=("ase",),
)
