"""Wall time of the PySCF labels at the default level, and CPKS vs finite-field agreement.

Usage::

    python benchmarks/qm_timings.py [--threads 2] [--ff ethanol pyridine] [--molecules ...]

Geometries: RDKit ETKDG + MMFF from SMILES (seeded). Prints one table row per molecule as it
finishes, followed by its CPKS vs finite-field agreement per tensor component.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

from densnet_core import qm
from densnet_core.level import DEFAULT_LEVEL
from densnet_core.units import BOHR_PER_ANGSTROM

ANGSTROM = BOHR_PER_ANGSTROM  # bohr per Å

MOLECULES = {
    "ethanol": "CCO",
    "pyridine": "c1ccncc1",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
}


def geometry(smiles: str) -> tuple[list[int], np.ndarray]:
    """(numbers, positions_bohr) of an ETKDG + MMFF conformer."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = 42
    AllChem.EmbedMolecule(mol, params)
    AllChem.MMFFOptimizeMolecule(mol)
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    return numbers, mol.GetConformer().GetPositions() * ANGSTROM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--molecules", nargs="*", default=list(MOLECULES))
    parser.add_argument("--ff", nargs="*", default=["ethanol"], help="also run finite field")
    args = parser.parse_args()
    level = DEFAULT_LEVEL
    print(f"level: {level.label}; threads: {args.threads}")
    head = (
        f"{'molecule':10s} {'atoms':>5s} {'nao':>5s} {'scf_s':>7s} {'cyc':>4s} "
        f"{'forces_s':>8s} {'cpks_s':>7s} {'ff_s':>7s} {'ff/cpks':>7s} {'alpha_iso':>9s}"
    )
    print(head, flush=True)
    for name in args.molecules:
        numbers, xyz = geometry(MOLECULES[name])
        mol = qm.build_mol(numbers, xyz, basis=level.basis)
        with qm.pyscf_threads(args.threads):
            t0 = time.perf_counter()
            res = qm.run_scf(mol, level)
            t_scf = time.perf_counter() - t0
            if not res.converged:
                print(f"{name}: SCF not converged: {res.attempts}")
                continue
            t0 = time.perf_counter()
            qm.forces_hartree_per_bohr(res.mf)
            t_forces = time.perf_counter() - t0
            t0 = time.perf_counter()
            alpha, _ = qm.polarizability_au(res.mf)
            t_cpks = time.perf_counter() - t0
            t_ff = float("nan")
            ff = None
            if name in args.ff:
                t0 = time.perf_counter()
                ff = qm.polarizability_finite_field_au(mol, level, dm0=res.mf.make_rdm1())
                t_ff = time.perf_counter() - t0
        print(
            f"{name:10s} {mol.natm:5d} {mol.nao:5d} {t_scf:7.1f} {res.cycles:4d} "
            f"{t_forces:8.1f} {t_cpks:7.1f} {t_ff:7.1f} {t_ff / t_cpks:7.1f} "
            f"{np.trace(alpha) / 3:9.3f}",
            flush=True,
        )
        if ff is not None:
            print_agreement(name, alpha, ff)


def print_agreement(name: str, alpha: np.ndarray, ff: np.ndarray) -> None:
    """CPKS vs finite field: % per component >= 1 au, absolute on the small ones."""
    print(f"  CPKS vs finite field (1e-3 au, central), {name}: alpha_CPKS [au]")
    print("  " + np.array2string(alpha, precision=4, suppress_small=True).replace("\n", "\n  "))
    diff = alpha - ff
    big = np.abs(ff) >= 1.0
    rel = np.where(big, 100 * np.abs(diff) / np.where(big, np.abs(ff), 1.0), np.nan)
    print("  |diff| % on components >= 1 au (nan: small component):")
    print("  " + np.array2string(rel, precision=4).replace("\n", "\n  "))
    small = np.abs(diff)[~big]
    print(
        f"  max |diff| small components: {small.max(initial=0.0):.2e} au; "
        f"max |diff| all: {np.abs(diff).max():.2e} au",
        flush=True,
    )


if __name__ == "__main__":
    main()
