"""A toy ASE calculator for the MD/IR plumbing tests: harmonic springs and fixed charges."""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes


class SpringCalculator(Calculator):
    """E = sum_pairs k/2 (r_ij - r0_ij)^2 (eV, Å); dipole = sum_i q_i r_i (e·Å).

    Parameters
    ----------
    r0
        (N, 3) reference geometry (its distances are the spring rest lengths), Å.
    k
        Spring constant, eV/Å^2.
    charges
        (N,) fixed point charges, e (sum 0).
    """

    implemented_properties = ("energy", "free_energy", "forces", "dipole")

    def __init__(self, r0: np.ndarray, k: float, charges: np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        self.r0 = np.asarray(r0, dtype=float)
        self.k = float(k)
        self.q = np.asarray(charges, dtype=float)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        pos = self.atoms.get_positions()
        i, j = np.triu_indices(len(pos), k=1)
        d = pos[i] - pos[j]
        r = np.linalg.norm(d, axis=1)
        d0 = np.linalg.norm(self.r0[i] - self.r0[j], axis=1)
        e = float(0.5 * self.k * np.sum((r - d0) ** 2))
        g = (self.k * (r - d0) / r)[:, None] * d
        f = np.zeros_like(pos)
        np.add.at(f, i, -g)
        np.add.at(f, j, g)
        self.results["energy"] = e
        self.results["free_energy"] = e
        self.results["forces"] = f
        self.results["dipole"] = (self.q[:, None] * pos).sum(0)
