"""The written-out unit constants equal PySCF's, so labels and conversions agree exactly."""

from __future__ import annotations

from pyscf.data import nist

from densnet_core import units


def test_constants_equal_pyscf():
    assert units.ANGSTROM_PER_BOHR == nist.BOHR
    assert units.BOHR_PER_ANGSTROM == 1.0 / nist.BOHR
    assert units.DEBYE_PER_AU == nist.AU2DEBYE
    assert units.EV_PER_HARTREE == nist.HARTREE2EV
