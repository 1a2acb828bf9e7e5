"""Coulomb-metric density fitting with exact electron-count and dipole constraints.

The SCF density rho(r) = sum_ij D_ij phi_i phi_j is fitted as rho~(r) = sum_mu c_mu chi_mu(r)
in an atom-centred auxiliary basis by minimising the Coulomb self-energy of the error,

    E[c] = 1/2 (rho - rho~ | rho - rho~) = 1/2 (rho|rho) - c.b + 1/2 c.J.c,
    J_mu,nu = (mu|nu) (``int2c2e``),  b_mu = (mu|rho) = sum_ij (mu|ij) D_ij (``int3c2e``),

subject to linear equality constraints A c = t (Lagrange multipliers):

- charge: q.c = N_e with q_mu = ∫chi_mu (so the label integrates to the exact electron count);
- dipole: d.c = m_el with d_i,mu = ∫(r - O)_i chi_mu, m_el = ∫(r - O)_i rho, so that the total
  dipole sum_A Z_A (R_A - O) - d.c equals PySCF's ``mf.dip_moment(unit="AU")`` (origin O = 0,
  PySCF's convention) exactly.

KKT: J c + A^T lam = b, A c = t. With c0 = J^-1 b (Cholesky) and Y = J^-1 A^T,
(A Y) lam = A c0 - t and c = c0 - Y lam (one step of iterative refinement on the constraints).
The increase of E caused by the constraints is exactly 1/2 (c - c0).J.(c - c0) and is reported.

Units: atomic units throughout (bohr, e, hartree). Coefficients are in PySCF aux-AO order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
from pyscf import gto, lib
from pyscf.df import incore

from densnet_core.basis import charge_integrals, dipole_integrals, make_auxmol
from densnet_core.grids import fitted_density_on_grid, molecular_grid, scf_density_on_grid

__all__ = [
    "CoulombFitter",
    "FitResult",
    "coulomb_metric",
    "coulomb_projection",
    "dipole_from_coeffs",
    "electronic_moment",
    "fit_density",
    "fit_error_percent",
    "fit_response",
    "nuclear_moment",
    "polarizability_from_response",
]

_DEFAULT_BLOCK_MB = 1000.0


def _as_auxmol(mol: gto.Mole, auxbasis: str | gto.Mole) -> tuple[gto.Mole, str]:
    if isinstance(auxbasis, gto.MoleBase):
        name = auxbasis.basis if isinstance(auxbasis.basis, str) else "custom"
        return auxbasis, name
    return make_auxmol(mol, auxbasis), str(auxbasis)


def coulomb_metric(auxmol: gto.Mole) -> np.ndarray:
    """Two-centre Coulomb metric J_mu,nu = (mu|nu) (``int2c2e``), symmetrised.

    Returns
    -------
    np.ndarray
        (M, M), hartree per unit coefficient^2.
    """
    j = auxmol.intor("int2c2e", hermi=1)
    return 0.5 * (j + j.T)


def coulomb_projection(
    mol: gto.Mole,
    auxmol: gto.Mole,
    dm: np.ndarray,
    *,
    max_memory_mb: float = _DEFAULT_BLOCK_MB,
) -> np.ndarray:
    """b_mu = (mu|rho) = sum_ij (mu|ij) D_ij, computed in blocks of aux shells.

    Only the symmetric part of ``dm`` contributes. The 3-centre integrals are generated
    for blocks of aux shells so that a block takes at most ``max_memory_mb`` (caffeine with
    def2-SVPD / def2-universal-jkfit fits in one or two blocks of 1 GB).

    Parameters
    ----------
    mol
        Orbital-basis molecule.
    auxmol
        Aux-basis molecule (same geometry).
    dm
        (nao, nao) or (k, nao, nao) AO density matrices.
    max_memory_mb
        Memory per block of (ij|P) integrals, MB.

    Returns
    -------
    np.ndarray
        (M,) or (k, M), hartree per unit coefficient.
    """
    dm = np.asarray(dm, dtype=np.float64)
    single = dm.ndim == 2
    dms = dm[None] if single else dm
    nao = mol.nao
    # s2ij packing: sum_ij (ij|P) D_ij = sum_{i>=j} (ij|P) (D_ij + D_ji) (1 - delta_ij / 2)
    dm_tril = lib.pack_tril(dms + dms.transpose(0, 2, 1))  # (k, npair)
    diag = np.arange(nao)
    dm_tril[:, diag * (diag + 1) // 2 + diag] *= 0.5
    npair = nao * (nao + 1) // 2
    max_funcs = max(1, int(max_memory_mb * 1e6 / 8 / npair))
    ao_loc = auxmol.ao_loc_nr()
    out = np.empty((dms.shape[0], auxmol.nao))
    s0 = 0
    while s0 < auxmol.nbas:
        s1 = s0 + 1
        while s1 < auxmol.nbas and ao_loc[s1 + 1] - ao_loc[s0] <= max_funcs:
            s1 += 1
        ints = incore.aux_e2(
            mol,
            auxmol,
            intor="int3c2e",
            aosym="s2ij",
            shls_slice=(0, mol.nbas, 0, mol.nbas, s0, s1),
        )  # (npair, nfunc)
        out[:, ao_loc[s0] : ao_loc[s1]] = dm_tril @ ints
        del ints
        s0 = s1
    return out[0] if single else out


def nuclear_moment(mol: gto.Mole, origin_bohr: Sequence[float] | np.ndarray) -> np.ndarray:
    """sum_A Z_A (R_A - O), e·bohr (3,)."""
    origin = np.asarray(origin_bohr, dtype=np.float64).reshape(3)
    return mol.atom_charges() @ (mol.atom_coords() - origin)


def electronic_moment(
    mol: gto.Mole, dm: np.ndarray, origin_bohr: Sequence[float] | np.ndarray
) -> np.ndarray:
    """∫(r - O) rho(r) dr = Tr(D r_O) for (nao, nao) -> (3,) or (k, nao, nao) -> (k, 3), e·bohr.

    Note the sign: the electronic *dipole* is the negative of this.
    """
    with mol.with_common_orig(np.asarray(origin_bohr, dtype=np.float64).reshape(3)):
        r = mol.intor_symmetric("int1e_r", comp=3)
    dm = np.asarray(dm)
    if dm.ndim == 2:
        return np.einsum("xij,ji->x", r, dm)
    return np.einsum("xij,kji->kx", r, dm)


def dipole_from_coeffs(
    auxmol: gto.Mole, coeffs: np.ndarray, origin_bohr: Sequence[float] | np.ndarray = (0, 0, 0)
) -> np.ndarray:
    """Total dipole sum_A Z_A (R_A - O) - ∫(r - O) rho~ of a fitted density, e·bohr (3,).

    Equals PySCF's ``mf.dip_moment(unit="AU")`` for origin (0, 0, 0) when the fit was
    dipole-constrained to that SCF density.
    """
    return nuclear_moment(auxmol, origin_bohr) - dipole_integrals(auxmol, origin_bohr) @ coeffs


def polarizability_from_response(auxmol: gto.Mole, response_coeffs: np.ndarray) -> np.ndarray:
    """alpha_ij = -∫ r_i d rho~/d E_j of fitted responses (3, M) -> (3, 3), bohr^3.

    Origin-independent when the responses integrate to zero charge.
    """
    d = dipole_integrals(auxmol, (0.0, 0.0, 0.0))
    return -(d @ np.asarray(response_coeffs).T)


class CoulombFitter:
    """Cholesky-factorised Coulomb metric of one aux molecule; solves constrained fits.

    Parameters
    ----------
    auxmol
        Aux-basis molecule.
    metric
        Optional precomputed (M, M) metric.
    """

    def __init__(self, auxmol: gto.Mole, metric: np.ndarray | None = None) -> None:
        self.auxmol = auxmol
        self.metric = coulomb_metric(auxmol) if metric is None else metric
        self._cho = None
        self._eig = None
        try:
            self._cho = scipy.linalg.cho_factor(self.metric, lower=True, check_finite=False)
        except np.linalg.LinAlgError:  # numerically singular metric: pseudo-inverse
            w, v = np.linalg.eigh(self.metric)
            keep = w > 1e-12 * w.max()
            self._eig = (w[keep], v[:, keep])

    def solve_metric(self, rhs: np.ndarray) -> np.ndarray:
        """J^-1 rhs for rhs (M,) or (M, k)."""
        if self._cho is not None:
            return scipy.linalg.cho_solve(self._cho, rhs, check_finite=False)
        w, v = self._eig
        return v @ ((v.T @ rhs) / (w if rhs.ndim == 1 else w[:, None]))

    def fit(
        self, b: np.ndarray, a: np.ndarray | None = None, t: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Minimise 1/2 c.J.c - c.b subject to A c = t.

        Parameters
        ----------
        b
            (M,) projection (mu|rho).
        a
            (k, M) constraint rows, or None for an unconstrained fit.
        t
            (k,) constraint targets.

        Returns
        -------
        c
            (M,) constrained coefficients.
        c0
            (M,) unconstrained coefficients.
        lam
            (k,) Lagrange multipliers (empty if unconstrained).
        """
        c0 = self.solve_metric(b)
        if a is None or len(a) == 0:
            return c0, c0, np.zeros(0)
        a = np.atleast_2d(a)
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        y = self.solve_metric(a.T)  # (M, k)
        s = a @ y  # (k, k), SPD
        lam = np.linalg.solve(s, a @ c0 - t)
        c = c0 - y @ lam
        # one step of iterative refinement so A c = t to machine precision
        dlam = np.linalg.solve(s, a @ c - t)
        c = c - y @ dlam
        return c, c0, lam + dlam


@dataclass
class FitResult:
    """Outcome of :func:`fit_density`.

    Attributes
    ----------
    coeffs
        (M,) fitted coefficients, PySCF aux-AO order, e (per normalised aux function).
    auxbasis
        Aux basis name.
    n_electrons
        ∫rho~, e.
    dipole_au
        (3,) total dipole of nuclei + fitted density about ``origin_bohr``, e·bohr.
    origin_bohr
        (3,) origin of the dipole, bohr.
    constrained
        Whether charge (and dipole, if ``dipole_constrained``) constraints were applied.
    dipole_constrained
        Whether the dipole was constrained.
    constraint_cost_hartree
        Increase of 1/2 (rho - rho~|rho - rho~) caused by the constraints, Eh.
    coulomb_error_hartree
        1/2 (rho - rho~|rho - rho~), Eh (None unless requested: needs the exact J of rho).
    unconstrained_coeffs
        (M,) the plain Coulomb fit, for diagnostics.
    multipliers
        Lagrange multipliers (charge first, then dipole x, y, z).
    """

    coeffs: np.ndarray
    auxbasis: str
    n_electrons: float
    dipole_au: np.ndarray
    origin_bohr: np.ndarray
    constrained: bool
    dipole_constrained: bool
    constraint_cost_hartree: float
    coulomb_error_hartree: float | None = None
    unconstrained_coeffs: np.ndarray | None = field(default=None, repr=False)
    multipliers: np.ndarray | None = None


def fit_density(
    mol: gto.Mole,
    dm: np.ndarray,
    auxbasis: str | gto.Mole,
    *,
    constrain: bool = True,
    n_electrons: float | None = None,
    dipole_au: Sequence[float] | np.ndarray | None = None,
    constrain_dipole: bool = True,
    origin_bohr: Sequence[float] | np.ndarray = (0.0, 0.0, 0.0),
    coulomb_error: bool = False,
    fitter: CoulombFitter | None = None,
    max_memory_mb: float = _DEFAULT_BLOCK_MB,
) -> FitResult:
    """Fit an SCF density into the aux basis (Coulomb metric, constrained).

    Parameters
    ----------
    mol
        Orbital-basis molecule.
    dm
        (nao, nao) spin-summed AO density matrix (``mf.make_rdm1()``; for UKS sum alpha+beta).
    auxbasis
        Aux basis name or a ready ``auxmol``.
    constrain
        Apply the constraints (False = plain Coulomb fit; targets ignored).
    n_electrons
        Target ∫rho~, e. None = Tr(D S), the exact electron count of ``dm``.
    dipole_au
        Target TOTAL dipole (nuclei + electrons) about ``origin_bohr``, e·bohr — e.g.
        ``mf.dip_moment(unit="AU", verbose=0)`` with the default origin (0, 0, 0), PySCF's
        convention. None = the dipole of ``dm`` itself (computed exactly from the AO dipole
        integrals, identical to PySCF's for origin 0).
    constrain_dipole
        Constrain the dipole as well as the charge.
    origin_bohr
        (3,) origin for the dipole, bohr.
    coulomb_error
        Also compute 1/2 (rho - rho~|rho - rho~) (needs the exact Coulomb matrix of ``dm``:
        O(nao^4) work; fine for small molecules).
    fitter
        Reuse a factorised metric (same ``auxmol``).
    max_memory_mb
        Block size for the 3-centre integrals, MB.

    Returns
    -------
    FitResult
        ``coeffs`` (M,) in PySCF aux-AO order.
    """
    auxmol, name = _as_auxmol(mol, auxbasis if fitter is None else fitter.auxmol)
    if fitter is None:
        fitter = CoulombFitter(auxmol)
    dm = np.asarray(dm, dtype=np.float64)
    if dm.ndim == 3:  # (alpha, beta)
        dm = dm[0] + dm[1]
    origin = np.asarray(origin_bohr, dtype=np.float64).reshape(3)
    b = coulomb_projection(mol, auxmol, dm, max_memory_mb=max_memory_mb)
    q = charge_integrals(auxmol)
    d = dipole_integrals(auxmol, origin)
    rows: list[np.ndarray] = []
    targets: list[float] = []
    if constrain:
        if n_electrons is None:
            n_electrons = float(np.einsum("ij,ji->", mol.intor_symmetric("int1e_ovlp"), dm))
        rows.append(q[None])
        targets.append(float(n_electrons))
        if constrain_dipole:
            if dipole_au is None:
                m_el = electronic_moment(mol, dm, origin)
            else:
                m_el = nuclear_moment(mol, origin) - np.asarray(dipole_au, dtype=np.float64)
            rows.append(d)
            targets.extend(m_el.tolist())
    a = np.concatenate(rows) if rows else None
    c, c0, lam = fitter.fit(b, a, np.asarray(targets) if rows else None)
    dc = c - c0
    cost = 0.5 * float(dc @ fitter.metric @ dc)
    err = None
    if coulomb_error:
        from pyscf import scf

        vj = scf.hf.get_jk(mol, dm, hermi=1, with_k=False)[0]
        rr = float(np.einsum("ij,ji->", vj, dm))
        err = 0.5 * rr - float(c @ b) + 0.5 * float(c @ fitter.metric @ c)
    return FitResult(
        coeffs=c,
        auxbasis=name,
        n_electrons=float(q @ c),
        dipole_au=nuclear_moment(auxmol, origin) - d @ c,
        origin_bohr=origin,
        constrained=constrain,
        dipole_constrained=constrain and constrain_dipole,
        constraint_cost_hartree=cost,
        coulomb_error_hartree=err,
        unconstrained_coeffs=c0,
        multipliers=lam,
    )


def fit_response(
    mol: gto.Mole,
    dm1: np.ndarray,
    auxbasis: str | gto.Mole,
    *,
    alpha_au: np.ndarray | None = None,
    constrain: bool = True,
    fitter: CoulombFitter | None = None,
    max_memory_mb: float = _DEFAULT_BLOCK_MB,
) -> np.ndarray:
    """Fit the first-order density responses d rho / d E_j (j = x, y, z).

    Convention: the electronic Hamiltonian gains +E·r (electron charge -1 in a field E), so
    ``dm1[j] = dD/dE_j`` and alpha_ij = -Tr(dm1[j] r_i) = -∫ r_i d rho/d E_j (positive for a
    normal molecule).

    Parameters
    ----------
    mol
        Orbital-basis molecule.
    dm1
        (3, nao, nao) AO density responses, e per (Eh / (e·bohr)).
    auxbasis
        Aux basis name or ``auxmol``.
    alpha_au
        (3, 3) target polarizability alpha_ij, bohr^3 (e.g. from CPKS). None = exactly
        -Tr(dm1[j] r_i) of the given ``dm1``.
    constrain
        Constrain each response to zero charge and to reproduce column j of alpha.
    fitter
        Reuse a factorised metric (same ``auxmol``).
    max_memory_mb
        Block size for the 3-centre integrals, MB.

    Returns
    -------
    np.ndarray
        (3, M) response coefficients, PySCF aux-AO order; row j = d rho~ / d E_j.
    """
    auxmol, _ = _as_auxmol(mol, auxbasis if fitter is None else fitter.auxmol)
    if fitter is None:
        fitter = CoulombFitter(auxmol)
    dm1 = np.asarray(dm1, dtype=np.float64)
    if dm1.shape[0] != 3 or dm1.ndim != 3:
        raise ValueError(f"dm1 must be (3, nao, nao), got {dm1.shape}")
    origin = np.zeros(3)
    b = coulomb_projection(mol, auxmol, dm1, max_memory_mb=max_memory_mb)  # (3, M)
    if alpha_au is None:
        alpha = -electronic_moment(mol, dm1, origin).T  # [j, i] -> alpha[i, j]
    else:
        alpha = np.asarray(alpha_au, dtype=np.float64).reshape(3, 3)
    a = np.concatenate([charge_integrals(auxmol)[None], dipole_integrals(auxmol, origin)])
    out = np.empty((3, auxmol.nao))
    for j in range(3):
        if constrain:
            t = np.concatenate([[0.0], -alpha[:, j]])
            out[j] = fitter.fit(b[j], a, t)[0]
        else:
            out[j] = fitter.fit(b[j])[0]
    return out


def fit_error_percent(
    mol: gto.Mole,
    dm: np.ndarray,
    auxmol: gto.Mole | str,
    coeffs: np.ndarray,
    *,
    grid_level: int = 3,
) -> float:
    """The real-space fitting error 100 · ∫|rho~ - rho| dr / N_e, percent.

    Evaluated on a PySCF molecular DFT grid of ``grid_level``; N_e = Tr(D S).

    Parameters
    ----------
    mol
        Orbital-basis molecule.
    dm
        (nao, nao) AO density matrix.
    auxmol
        Aux-basis molecule (or aux basis name).
    coeffs
        (M,) fitted coefficients, PySCF aux-AO order.
    grid_level
        PySCF grid level.
    """
    auxmol, _ = _as_auxmol(mol, auxmol)
    dm = np.asarray(dm, dtype=np.float64)
    if dm.ndim == 3:
        dm = dm[0] + dm[1]
    coords, weights = molecular_grid(mol, grid_level)
    rho = scf_density_on_grid(mol, dm, coords)
    rho_fit = fitted_density_on_grid(auxmol, coeffs, coords)
    n_e = float(np.einsum("ij,ji->", mol.intor_symmetric("int1e_ovlp"), dm))
    return 100.0 * float(weights @ np.abs(rho_fit - rho)) / n_e
