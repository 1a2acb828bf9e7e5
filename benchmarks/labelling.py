"""Seconds per label at the default level, part by part, and the fitting floor.

Usage::

    python -m benchmarks.labelling [--threads 2] [--molecules ethanol pyridine caffeine]
                                    [--gen-response]

``--molecules`` takes names of ``benchmarks.qm_timings.MOLECULES`` or SMILES.
``--gen-response`` also times the CPKS step with PySCF's AO-basis ``mf.gen_response`` (what
:mod:`densnet_core.mo_response` replaces) and prints the largest polarizability difference
between the two.

For each molecule (RDKit ETKDG + MMFF geometry, seeded) it times the parts of
:func:`densnet_core.labelling.label_conformer` separately: SCF, analytic forces, CPKS
polarizability (response), and the constrained fits of the density and the response into the
auxiliary basis, then the fitting floor 100·∫|ρ_fit − ρ_SCF| / N_e on a grid, and prints a table.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.qm_timings import MOLECULES, geometry
from densnet_core import qm
from densnet_core.basis import make_auxmol
from densnet_core.fitting import CoulombFitter, fit_density, fit_error_percent, fit_response
from densnet_core.level import DEFAULT_LEVEL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--molecules", nargs="*", default=list(MOLECULES), help="names or SMILES")
    parser.add_argument("--gen-response", action="store_true", help="also time gen_response CPKS")
    args = parser.parse_args()
    level = DEFAULT_LEVEL
    print(f"level: {level.label}; PySCF threads: {args.threads}; cores: {os.cpu_count()}")
    print(
        f"{'molecule':10s} {'atoms':>5s} {'nao':>5s} {'naux':>5s} {'scf_s':>7s} "
        f"{'forces_s':>8s} {'response_s':>10s} {'fit_s':>6s} {'total_s':>7s} {'floor_%':>7s}",
        flush=True,
    )
    for name in args.molecules:
        numbers, xyz = geometry(MOLECULES.get(name, name))
        with qm.pyscf_threads(args.threads):
            t = {}
            t0 = time.perf_counter()
            mol = qm.build_mol(numbers, xyz, basis=level.basis)
            scf = qm.run_scf(mol, level)
            t["scf"] = time.perf_counter() - t0
            if not scf.converged:
                print(f"{name}: SCF not converged ({scf.attempts})")
                continue
            t0 = time.perf_counter()
            qm.forces_hartree_per_bohr(scf.mf)
            t["forces"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            alpha, dm1 = qm.polarizability_au(scf.mf)
            t["response"] = time.perf_counter() - t0
            ref = _gen_response_cpks(scf.mf) if args.gen_response else None
            t0 = time.perf_counter()
            auxmol = make_auxmol(mol, level.fit_auxbasis)
            fitter = CoulombFitter(auxmol)
            dm = np.asarray(scf.mf.make_rdm1())
            origin = qm.centre_of_nuclear_charge_bohr(mol)
            fit = fit_density(
                mol, dm, auxmol, dipole_au=qm.dipole_au(scf.mf), origin_bohr=origin, fitter=fitter
            )
            fit_response(mol, dm1, auxmol, fitter=fitter)
            t["fit"] = time.perf_counter() - t0
            floor = fit_error_percent(mol, dm, auxmol, fit.coeffs, grid_level=level.grid_level)
        print(
            f"{name:10s} {mol.natm:5d} {mol.nao:5d} {auxmol.nao:5d} {t['scf']:7.1f} "
            f"{t['forces']:8.1f} {t['response']:10.1f} {t['fit']:6.1f} "
            f"{sum(t.values()):7.1f} {floor:7.2f}",
            flush=True,
        )
        if ref is not None:
            seconds, alpha_ref = ref
            print(
                f"{'':10s} CPKS with gen_response: {seconds:.1f} s "
                f"({seconds / t['response']:.1f}x); max |Δα| {np.abs(alpha - alpha_ref).max():.1e} "
                "bohr^3",
                flush=True,
            )


def _gen_response_cpks(mf: object) -> tuple[float, np.ndarray]:
    """Seconds and polarizability of the CPKS step through PySCF's ``gen_response``."""
    t0 = time.perf_counter()
    alpha, _ = qm.polarizability_au(mf, mo_block=False)
    return time.perf_counter() - t0, alpha


if __name__ == "__main__":
    main()
