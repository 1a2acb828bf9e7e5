"""Real-space densities on PySCF molecular DFT grids (for fitting errors and checks).

All coordinates in bohr, densities in e / bohr^3, weights in bohr^3.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pyscf import dft, gto

__all__ = [
    "fitted_density_on_grid",
    "iter_blocks",
    "molecular_grid",
    "scf_density_on_grid",
]

BLOCK_POINTS = 8000
"""Grid points per block when evaluating AO values (memory ~ BLOCK_POINTS * nao * 8 bytes)."""


def molecular_grid(mol: gto.Mole, level: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Becke-partitioned atom-centred PySCF grid.

    Parameters
    ----------
    mol
        Molecule (orbital or aux basis; only atoms and geometry are used).
    level
        PySCF grid level 0–9.

    Returns
    -------
    coords
        (G, 3) grid points, bohr.
    weights
        (G,) quadrature weights, bohr^3.
    """
    grids = dft.gen_grid.Grids(mol)
    grids.level = int(level)
    grids.verbose = 0
    grids.build(with_non0tab=False)
    return np.asarray(grids.coords), np.asarray(grids.weights)


def iter_blocks(n: int, block: int = BLOCK_POINTS) -> Iterator[slice]:
    """Slices of ``range(n)`` of length ``block``."""
    for i0 in range(0, n, block):
        yield slice(i0, min(n, i0 + block))


def scf_density_on_grid(mol: gto.Mole, dm: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """rho(r) = sum_ij D_ij phi_i(r) phi_j(r) of an AO density matrix.

    Parameters
    ----------
    mol
        Orbital-basis molecule.
    dm
        (nao, nao) density matrix (spin-summed), or (k, nao, nao) for k densities.
    coords
        (G, 3) points, bohr.

    Returns
    -------
    np.ndarray
        (G,) or (k, G), e / bohr^3 (for a response dm: per unit field).
    """
    dm = np.asarray(dm)
    single = dm.ndim == 2
    dms = dm[None] if single else dm
    dms = 0.5 * (dms + dms.transpose(0, 2, 1))
    out = np.empty((dms.shape[0], coords.shape[0]))
    for sl in iter_blocks(coords.shape[0]):
        ao = dft.numint.eval_ao(mol, coords[sl], deriv=0)
        for k, d in enumerate(dms):
            out[k, sl] = dft.numint.eval_rho(mol, ao, d, hermi=1)
    return out[0] if single else out


def fitted_density_on_grid(auxmol: gto.Mole, coeffs: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """rho_fit(r) = sum_mu c_mu chi_mu(r).

    Parameters
    ----------
    auxmol
        Aux-basis molecule.
    coeffs
        (M,) or (k, M) coefficients, PySCF aux-AO order.
    coords
        (G, 3) points, bohr.

    Returns
    -------
    np.ndarray
        (G,) or (k, G), e / bohr^3.
    """
    c = np.asarray(coeffs, dtype=np.float64)
    single = c.ndim == 1
    cs = c[None] if single else c
    out = np.empty((cs.shape[0], coords.shape[0]))
    for sl in iter_blocks(coords.shape[0]):
        chi = auxmol.eval_gto("GTOval_sph", coords[sl])  # (g, M)
        out[:, sl] = cs @ chi.T
    return out[0] if single else out
