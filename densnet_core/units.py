"""Unit conversions, taken from PySCF's constants so labels and conversions agree exactly.

Inside ``densnet_core`` everything is atomic units; convert only at the edges.
"""

from __future__ import annotations

from pyscf.data import nist

ANGSTROM_PER_BOHR: float = nist.BOHR  # 0.52917721092 Å
BOHR_PER_ANGSTROM: float = 1.0 / nist.BOHR
DEBYE_PER_AU: float = nist.AU2DEBYE  # 1 e·a0 = 2.541746 D
EV_PER_HARTREE: float = nist.HARTREE2EV  # 27.211386 eV
KCAL_PER_MOL_PER_HARTREE: float = 627.509474
