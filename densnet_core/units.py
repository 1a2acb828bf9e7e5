"""Unit conversions, equal to PySCF's constants so labels and conversions agree exactly.

Inside ``densnet_core`` everything is atomic units; convert only at the edges. The values are
written out (not imported from ``pyscf.data.nist``) so that prediction never imports PySCF;
``tests/core/test_units.py`` checks them against PySCF's.
"""

from __future__ import annotations

ANGSTROM_PER_BOHR: float = 0.52917721092  # pyscf.data.nist.BOHR, Å
BOHR_PER_ANGSTROM: float = 1.0 / ANGSTROM_PER_BOHR
DEBYE_PER_AU: float = 2.5417464157449032  # pyscf.data.nist.AU2DEBYE: 1 e·a0 in D
EV_PER_HARTREE: float = 27.21138602  # pyscf.data.nist.HARTREE2EV
KCAL_PER_MOL_PER_HARTREE: float = 627.509474
