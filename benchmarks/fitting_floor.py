"""Fitting floor of the labelled density in candidate auxiliary bases.

For each molecule (RDKit ETKDG + MMFF geometry), runs B3LYP/def2-SVPD with density fitting,
then fits the SCF density into each aux basis with the Coulomb metric, unconstrained and
constrained (exact electron count and dipole), and prints

    molecule, aux basis, M (aux functions), fit time (s), floor % unconstrained,
    floor % constrained, electron-count error of the plain fit, dipole error of the plain
    fit (au), Coulomb cost of the constraints (micro-Eh)

where floor = 100 · ∫|rho_fit - rho_SCF| dr / N_e on a PySCF grid (level 3).

Usage::

    python benchmarks/fitting_floor.py [--molecules water ethanol pyridine caffeine]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from pyscf import dft, gto, lib
from rdkit import Chem
from rdkit.Chem import AllChem

from densnet_core.basis import make_auxmol
from densnet_core.fitting import CoulombFitter, fit_density, fit_error_percent

SMILES = {
    "water": "O",
    "ethanol": "CCO",
    "pyridine": "c1ccncc1",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
}
AUXBASES = ("def2-universal-jfit", "def2-universal-jkfit")


def geometry(smiles: str) -> list[tuple[str, tuple[float, float, float]]]:
    """RDKit ETKDG + MMFF geometry, Å."""
    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(m, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(m)
    pos = m.GetConformer().GetPositions()
    return [(a.GetSymbol(), tuple(p)) for a, p in zip(m.GetAtoms(), pos, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecules", nargs="+", default=list(SMILES))
    ap.add_argument("--xc", default="b3lyp")
    ap.add_argument("--basis", default="def2-svpd")
    ap.add_argument("--grid-level", type=int, default=3)
    args = ap.parse_args()

    print(f"{args.xc}/{args.basis} DF, threads={lib.num_threads()}")
    header = (
        f"{'molecule':10s} {'aux basis':22s} {'M':>5s} {'fit s':>6s} {'floor% free':>11s} "
        f"{'floor% cons':>11s} {'dN free':>9s} {'|dmu| free':>10s} {'cost uEh':>8s}"
    )
    print(header)
    for name in args.molecules:
        mol = gto.M(atom=geometry(SMILES[name]), basis=args.basis, verbose=0)
        t0 = time.perf_counter()
        mf = dft.RKS(mol, xc=args.xc).density_fit()
        mf.conv_tol = 1e-9
        mf.kernel()
        t_scf = time.perf_counter() - t0
        dm = mf.make_rdm1()
        dip = mf.dip_moment(unit="AU", verbose=0)
        print(f"# {name}: {mol.natm} atoms, nao={mol.nao}, SCF {t_scf:.1f} s, conv={mf.converged}")
        for auxbasis in AUXBASES:
            t1 = time.perf_counter()
            auxmol = make_auxmol(mol, auxbasis)
            fitter = CoulombFitter(auxmol)
            cons = fit_density(mol, dm, auxmol, fitter=fitter)
            t_fit = time.perf_counter() - t1
            free = fit_density(mol, dm, auxmol, constrain=False, fitter=fitter)
            e_free = fit_error_percent(mol, dm, auxmol, free.coeffs, grid_level=args.grid_level)
            e_cons = fit_error_percent(mol, dm, auxmol, cons.coeffs, grid_level=args.grid_level)
            assert abs(cons.n_electrons - mol.nelectron) < 1e-8
            assert np.abs(cons.dipole_au - dip).max() < 1e-8
            print(
                f"{name:10s} {auxbasis:22s} {auxmol.nao:5d} {t_fit:6.2f} {e_free:11.3f} "
                f"{e_cons:11.3f} {free.n_electrons - mol.nelectron:9.2e} "
                f"{np.linalg.norm(free.dipole_au - dip):10.2e} "
                f"{1e6 * cons.constraint_cost_hartree:8.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
