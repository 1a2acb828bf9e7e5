"""An independent PySCF calculation at the default level, for checking labels against PySCF.

Written straight against PySCF (not through ``densnet_core.qm``), so that the label tests compare
the project's code with PySCF's own numbers rather than with itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def independent_pyscf(
    numbers: Sequence[int],
    positions_angstrom: np.ndarray,
    field_au: np.ndarray | None = None,
):
    """B3LYP/def2-SVPD (density fitting, grid 3) from PySCF, optionally in a uniform field.

    Parameters
    ----------
    numbers
        (N,) atomic numbers.
    positions_angstrom
        (N, 3) Cartesian positions, Å.
    field_au
        (3,) uniform electric field, atomic units (Eh / (e·bohr)), or None.

    Returns
    -------
    tuple
        ``(mol, mf)``: the converged PySCF molecule and RKS object.
    """
    from pyscf import dft, gto

    mol = gto.M(
        atom=[(int(z), tuple(p)) for z, p in zip(numbers, positions_angstrom, strict=True)],
        basis="def2-svpd",
        unit="Angstrom",
        verbose=0,
    )
    mf = dft.RKS(mol, xc="b3lyp").density_fit()
    mf.grids.level = 3
    mf.conv_tol = 1e-11
    if field_au is not None:
        h = mol.intor("int1e_kin") + mol.intor("int1e_nuc")
        r = mol.intor("int1e_r")
        # electrons (charge -1) in a field E: H' = +E·r
        mf.get_hcore = lambda *args: h + np.einsum("x,xij->ij", field_au, r)
    mf.kernel()
    assert mf.converged
    return mol, mf
