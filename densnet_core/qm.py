"""PySCF labels: SCF with fallbacks, energies, forces, dipoles and static polarizabilities.

Everything here is in atomic units: positions in bohr, energies in hartree, forces in
hartree/bohr, dipoles in e·bohr, polarizabilities in bohr^3. The level of theory comes from
:class:`densnet_core.level.LevelOfTheory` only; thread counts and memory are run settings and
never change a number.

Conventions
-----------
Uniform static field ``E``: the electronic Hamiltonian gets ``+E·r`` per electron (electron
charge -1; the nuclei see ``-E·R`` and are clamped). The dipole is
``mu = sum_A Z_A (R_A - O) - Tr(P (r - O))`` and the polarizability is
``alpha_ij = d mu_i / d E_j``; for a closed-shell molecule this is positive definite.

The analytic polarizability is a coupled-perturbed Kohn–Sham (CPKS/CPHF) calculation built on
``mf.gen_response`` (Coulomb, exact exchange and the XC kernel, evaluated with the same density
fitting and the same grid as the SCF) and :func:`pyscf.scf.cphf.solve`. For density-fitted
closed-shell SCFs the response is evaluated in the occupied–virtual block only
(:mod:`densnet_core.mo_response`, the same numbers at a quarter of the cost). The finite-field
polarizability is the validation reference.

Forces are the analytic nuclear gradient (``mf.nuc_grad_method()``). For DFT the grid response
(the integration grid moves with the atoms) is included, so the forces are the exact derivative
of the energy that :func:`run_scf` reports (PySCF leaves it off by default, which leaves
~1e-5–1e-4 Eh/bohr errors on grid 3).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from pyscf import dft, gto, lib, scf
from pyscf.scf import cphf

from densnet_core.level import LevelOfTheory
from densnet_core.mo_response import mo_response

log = logging.getLogger(__name__)

__all__ = [
    "ScfResult",
    "build_mol",
    "centre_of_nuclear_charge_bohr",
    "dipole_au",
    "forces_hartree_per_bohr",
    "make_mf",
    "polarizability_au",
    "polarizability_finite_field_au",
    "pyscf_threads",
    "run_scf",
]

#: Damping and level shift (hartree) of the second SCF attempt.
FALLBACK_DAMP = 0.5
FALLBACK_LEVEL_SHIFT_HARTREE = 0.3
#: Damped (DIIS-free) cycles of the second attempt before DIIS starts.
FALLBACK_DIIS_START_CYCLE = 6
#: DFT grid level, energy tolerance (Eh) and cycle cap of the pre-convergence pass of
#: :func:`run_scf`, whose density starts the SCF on the level's own grid.
PRECONVERGE_GRID_LEVEL = 1
PRECONVERGE_CONV_TOL = 1e-6
PRECONVERGE_MAX_CYCLE = 30


# --- threads -----------------------------------------------------------------------------------


@contextlib.contextmanager
def pyscf_threads(threads: int | None) -> Iterator[int]:
    """Set PySCF's OpenMP thread count for the duration of a ``with`` block.

    Parameters
    ----------
    threads
        Number of threads; ``None`` (or 0) leaves PySCF's current setting (all cores by default).

    Yields
    ------
    int
        The thread count in effect inside the block.
    """
    previous = lib.num_threads()
    if not threads:
        yield previous
        return
    if threads < 0:
        raise ValueError(f"threads must be positive or None, got {threads}")
    lib.num_threads(int(threads))
    try:
        yield int(threads)
    finally:
        lib.num_threads(previous)


# --- molecule ----------------------------------------------------------------------------------


def build_mol(
    numbers: Sequence[int],
    positions_bohr: ArrayLike,
    *,
    charge: int = 0,
    multiplicity: int = 1,
    basis: str,
    max_memory_mb: int = 4000,
    verbose: int = 0,
) -> gto.Mole:
    """Build a PySCF molecule (spherical basis, coordinates in bohr).

    Parameters
    ----------
    numbers
        Atomic numbers, shape (N,).
    positions_bohr
        Cartesian coordinates, shape (N, 3), bohr.
    charge
        Total charge, e.
    multiplicity
        2S + 1; PySCF's ``spin = multiplicity - 1``.
    basis
        Orbital basis (PySCF name).
    max_memory_mb
        PySCF ``max_memory``, MB.
    verbose
        PySCF verbosity (0 = silent).

    Returns
    -------
    pyscf.gto.Mole
        The built molecule.
    """
    z = np.asarray(numbers, dtype=int).reshape(-1)
    xyz = np.asarray(positions_bohr, dtype=float)
    if xyz.shape != (len(z), 3):
        raise ValueError(f"positions_bohr has shape {xyz.shape}, expected ({len(z)}, 3)")
    if multiplicity < 1:
        raise ValueError(f"multiplicity must be >= 1, got {multiplicity}")
    mol = gto.Mole()
    mol.atom = [(int(zi), tuple(float(c) for c in r)) for zi, r in zip(z, xyz, strict=True)]
    mol.unit = "Bohr"
    mol.charge = int(charge)
    mol.spin = int(multiplicity) - 1
    mol.basis = basis
    mol.cart = False
    mol.max_memory = int(max_memory_mb)
    mol.verbose = int(verbose)
    mol.build()
    return mol


def centre_of_nuclear_charge_bohr(mol: gto.Mole) -> np.ndarray:
    """Centre of nuclear charge ``sum_A Z_A R_A / sum_A Z_A``, shape (3,), bohr.

    ``Z_A`` are PySCF's ``mol.atom_charges()`` (the effective charges when an ECP replaces the
    core, which is what the dipole sees).
    """
    z = mol.atom_charges().astype(float)
    return z @ mol.atom_coords() / z.sum()


# --- SCF -------------------------------------------------------------------------------------


@dataclass
class ScfResult:
    """Outcome of :func:`run_scf`.

    Attributes
    ----------
    mf
        The converged (or, if ``converged`` is False, the last) PySCF mean-field object:
        RKS/RHF for closed shells, UKS/UHF for open shells; always a plain (non-Newton) object
        when converged.
    converged
        Whether any attempt met ``level.conv_tol``.
    cycles
        Total SCF iterations over all attempts (Newton: macro iterations), the coarse-grid
        pre-convergence of :func:`run_scf` included.
    strategy
        ``"diis"``, ``"level_shift"``, ``"newton"``, or ``"none"`` (not converged).
    attempts
        What was tried, in order, each with its outcome (for error messages).
    energy_hartree
        Total energy of ``mf``, Eh.
    """

    mf: Any
    converged: bool
    cycles: int
    strategy: str
    attempts: list[str] = field(default_factory=list)
    energy_hartree: float = float("nan")


def _is_hf(level: LevelOfTheory) -> bool:
    return level.xc.strip().lower() in ("hf", "rhf", "uhf")


def make_mf(mol: gto.Mole, level: LevelOfTheory, *, with_df: Any = None) -> Any:
    """A fresh, un-run mean-field object for ``level`` (no fallback settings).

    Restricted for closed shells (``mol.spin == 0``), unrestricted otherwise; density fitting
    with ``level.scf_auxbasis`` when ``level.density_fit``; DFT grid ``level.grid_level``.
    ``with_df``: a density-fitting object of an earlier mean-field object of the same molecule
    and aux basis, reused instead of building the 3-centre integrals again (the grid, tolerance
    and cycle cap do not enter it); ignored without ``level.density_fit``.
    """
    closed = mol.spin == 0
    if _is_hf(level):
        mf = scf.RHF(mol) if closed else scf.UHF(mol)
    else:
        mf = dft.RKS(mol, xc=level.xc) if closed else dft.UKS(mol, xc=level.xc)
        mf.grids.level = level.grid_level
    if level.density_fit:
        mf = mf.density_fit(auxbasis=level.scf_auxbasis)
        if with_df is not None:
            mf.with_df = with_df
    mf.conv_tol = level.conv_tol
    mf.max_cycle = level.max_cycle
    mf.verbose = mol.verbose
    return mf


class _CycleCounter:
    """SCF callback counting iterations (``cycle`` in DIIS SCF, ``imacro`` in Newton)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, envs: dict[str, Any]) -> None:
        i = envs.get("cycle", envs.get("imacro"))
        if i is not None:
            self.n = max(self.n, int(i) + 1)


def _run(mf: Any, dm0: np.ndarray | None) -> int:
    """Run ``mf.kernel(dm0)``; returns the number of iterations."""
    counter = _CycleCounter()
    mf.callback = counter
    mf.kernel(dm0=dm0)
    return counter.n


def _describe(name: str, mf: Any, n: int) -> str:
    state = "converged" if mf.converged else "not converged"
    return f"{name}: {state} after {n} cycles (E = {mf.e_tot:.10f} Eh)"


def _preconverged_dm(
    level: LevelOfTheory, new_mf: Callable[[LevelOfTheory], Any]
) -> tuple[np.ndarray | None, int, str]:
    """A start density from DIIS on a coarse grid to a loose tolerance.

    ``new_mf(level)`` makes the mean-field object. Returns (density matrix or None, cycles,
    description). No density (PySCF's minao guess is used instead) for Hartree-Fock, for levels
    whose own grid is no finer, and when the coarse pass does not converge within
    :data:`PRECONVERGE_MAX_CYCLE` cycles.
    """
    if _is_hf(level) or level.grid_level <= PRECONVERGE_GRID_LEVEL:
        return None, 0, ""
    coarse = level.model_copy(
        update={
            "grid_level": PRECONVERGE_GRID_LEVEL,
            "conv_tol": max(level.conv_tol, PRECONVERGE_CONV_TOL),
            "max_cycle": min(level.max_cycle, PRECONVERGE_MAX_CYCLE),
        }
    )
    mf = new_mf(coarse)
    n = _run(mf, None)
    note = _describe(f"grid{PRECONVERGE_GRID_LEVEL} pre-convergence", mf, n)
    if not mf.converged or not np.isfinite(mf.e_tot):
        return None, n, note
    return np.asarray(mf.make_rdm1()), n, note


def run_scf(
    mol: gto.Mole, level: LevelOfTheory, *, threads: int | None = None, preconverge: bool = True
) -> ScfResult:
    """Self-consistent field with a fallback chain.

    With ``preconverge`` (DFT only), DIIS first runs on a coarse grid
    (:data:`PRECONVERGE_GRID_LEVEL`) to a loose tolerance (:data:`PRECONVERGE_CONV_TOL`), and its
    density replaces PySCF's minao guess. The SCF that follows runs on the level's own grid to
    ``level.conv_tol``, so the result is the level's own: on ChEMBL/NCI fragments (B3LYP/
    def2-SVPD, grid 3, one core) energies agreed with a minao start to < 1e-9 Eh and dipoles to
    < 5e-5 au, and the SCF took 0.82-0.85x the time (e.g. 8 + 5 cycles instead of 12).

    Attempts, each with at most ``level.max_cycle`` iterations, until one converges:

    1. ``"diis"``: PySCF's DIIS from the pre-converged density (or the minimal-basis/SAD guess).
    2. ``"level_shift"``: from the lowest-energy density so far, damping
       (:data:`FALLBACK_DAMP`, for the first cycles) and a level shift
       (:data:`FALLBACK_LEVEL_SHIFT_HARTREE`); then a plain pass without shift or damping from
       that density (both must converge).
    3. ``"newton"``: second-order SCF (``mf.newton()``) from the lowest-energy density so far,
       then a plain pass from its density so that the returned object is an ordinary RKS/RHF.
       If that plain pass does not converge, the Newton solution itself is returned (as a plain
       object via ``undo_soscf``).

    Parameters
    ----------
    mol
        Molecule from :func:`build_mol`.
    level
        Level of theory (functional, basis, DF, grid, ``conv_tol``, ``max_cycle``).
    threads
        OpenMP threads for this call; ``None`` leaves PySCF's setting.
    preconverge
        Start from a coarse-grid pre-converged density (above); False starts from minao.

    Returns
    -------
    ScfResult
        ``converged=False`` and ``strategy="none"`` if every attempt failed; callers must then
        report status ``scf_not_converged`` (``attempts`` and ``cycles`` say what was tried).
    """
    attempts: list[str] = []
    total = 0
    best_e = np.inf
    best_dm: np.ndarray | None = None
    last_mf: Any = None

    def keep(mf: Any) -> None:
        nonlocal best_e, best_dm, last_mf
        last_mf = mf
        if np.isfinite(mf.e_tot) and mf.e_tot < best_e:
            best_e = float(mf.e_tot)
            best_dm = mf.make_rdm1()

    def done(mf: Any, strategy: str) -> ScfResult:
        res = ScfResult(mf, True, total, strategy, attempts, float(mf.e_tot))
        log.debug("SCF %s: %s", strategy, "; ".join(attempts))
        return res

    shared_df: Any = None  # every pass reuses the first one's density-fitting integrals

    def new_mf(lv: LevelOfTheory = level) -> Any:
        nonlocal shared_df
        mf = make_mf(mol, lv, with_df=shared_df)
        shared_df = getattr(mf, "with_df", None)
        return mf

    with pyscf_threads(threads):
        # 1. plain DIIS (from a coarse-grid density)
        dm0 = None
        if preconverge:
            dm0, n, note = _preconverged_dm(level, new_mf)
            total += n
            if note:
                attempts.append(note)
        mf = new_mf()
        n = _run(mf, dm0)
        total += n
        attempts.append(_describe("diis", mf, n))
        keep(mf)
        if mf.converged:
            return done(mf, "diis")

        # 2. damping + level shift, then a plain pass without them
        mf = new_mf()
        mf.damp = FALLBACK_DAMP
        mf.diis_start_cycle = FALLBACK_DIIS_START_CYCLE
        mf.level_shift = FALLBACK_LEVEL_SHIFT_HARTREE
        n = _run(mf, best_dm)
        total += n
        attempts.append(_describe("level_shift", mf, n))
        keep(mf)
        if mf.converged:
            mf2 = new_mf()
            n = _run(mf2, mf.make_rdm1())
            total += n
            attempts.append(_describe("level_shift/unshifted", mf2, n))
            keep(mf2)
            if mf2.converged:
                return done(mf2, "level_shift")

        # 3. second-order (Newton) SCF
        mf = new_mf().newton()
        n = _run(mf, best_dm)
        total += n
        attempts.append(_describe("newton", mf, n))
        keep(mf)
        if mf.converged:
            mf2 = new_mf()
            n = _run(mf2, mf.make_rdm1())
            total += n
            attempts.append(_describe("newton/plain", mf2, n))
            if mf2.converged and abs(mf2.e_tot - mf.e_tot) < 100 * level.conv_tol + 1e-8:
                return done(mf2, "newton")
            plain = mf.undo_soscf()
            plain.converged = True
            return done(plain, "newton")

    log.debug("SCF not converged: %s", "; ".join(attempts))
    return ScfResult(last_mf, False, total, "none", attempts, float(last_mf.e_tot))


# --- observables -----------------------------------------------------------------------------


def _total_dm(mf: Any) -> np.ndarray:
    dm = np.asarray(mf.make_rdm1())
    return dm[0] + dm[1] if dm.ndim == 3 else dm


def dipole_au(mf: Any, *, origin_bohr: ArrayLike | None = None) -> np.ndarray:
    """Total (nuclear + electronic) dipole moment.

    ``mu = sum_A Z_A (R_A - O) - Tr(P (r - O))`` with ``P`` the total one-particle density
    matrix and ``Z_A`` = ``mol.atom_charges()`` (effective charges under an ECP).

    For a neutral molecule the result does not depend on ``O`` and equals
    ``mf.dip_moment(unit="AU")``. For an ion it does; the default origin, the centre of nuclear
    charge, makes the dipole translation invariant (it moves with the molecule) and is the
    convention of the ``dipole_au`` label column.

    Parameters
    ----------
    mf
        Converged PySCF mean-field object (restricted or unrestricted).
    origin_bohr
        Origin ``O``, shape (3,), bohr; ``None`` = centre of nuclear charge.

    Returns
    -------
    numpy.ndarray
        Dipole, shape (3,), e·bohr.
    """
    mol = mf.mol
    origin = (
        centre_of_nuclear_charge_bohr(mol)
        if origin_bohr is None
        else np.asarray(origin_bohr, dtype=float).reshape(3)
    )
    with mol.with_common_orig(origin):
        r = mol.intor_symmetric("int1e_r", comp=3)
    z = mol.atom_charges().astype(float)
    nuc = z @ (mol.atom_coords() - origin)
    el = np.einsum("xij,ji->x", r, _total_dm(mf)).real
    return nuc - el


def forces_hartree_per_bohr(mf: Any, *, grid_response: bool = True) -> np.ndarray:
    """Analytic forces ``-dE/dR``.

    Parameters
    ----------
    mf
        Converged PySCF mean-field object (RKS/RHF/UKS/UHF, with or without DF).
    grid_response
        For DFT, include the response of the (atom-following) integration grid, so the forces
        are the exact derivative of the reported energy. Costs extra time in the XC part.

    Returns
    -------
    numpy.ndarray
        Forces, shape (N, 3), hartree/bohr.
    """
    if not getattr(mf, "converged", False):
        raise ValueError("forces requested for an SCF that did not converge")
    g = mf.nuc_grad_method()
    g.verbose = 0
    if hasattr(g, "grid_response"):
        g.grid_response = bool(grid_response)
    return -np.asarray(g.kernel(), dtype=float)


def polarizability_au(
    mf: Any,
    *,
    conv_tol: float = 1e-9,
    max_cycle: int = 100,
    max_residual: float | None = 1e-4,
    mo_block: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Static dipole polarizability by analytic response (CPKS / CPHF).

    Solves ``(e_a - e_i) U_ai + [v1(D1)]_ai = -[r_j]_ai`` for the occupied–virtual orbital
    response ``U`` to ``H -> H + E_j r_j`` with ``pyscf.scf.cphf.solve``, where ``v1`` is
    ``mf.gen_response(singlet=None, hermi=1)`` — Coulomb, exact exchange and the XC kernel,
    with the SCF's own density fitting and grid. The first-order density is
    ``D1_j = 2 (C_v U_j C_o^T + h.c.)`` and ``alpha_ij = -Tr(D1_j r_i)``.

    Parameters
    ----------
    mf
        Converged closed-shell RKS or RHF object (density fitting allowed).
    conv_tol
        Krylov solver tolerance.
    max_cycle
        Krylov iterations.
    max_residual
        After the solve, the residual of the CPKS equations is evaluated once (one more response
        build, ~1 Krylov iteration of cost) and a :class:`RuntimeError` is raised when
        ``|residual| / |rhs|`` exceeds this (the Krylov solver does not report failure).
        ``None`` skips the check.
    mo_block
        Evaluate the response in the occupied–virtual block (:mod:`densnet_core.mo_response`)
        where it supports ``mf``; False always uses ``mf.gen_response`` (the same numbers, for
        comparisons and timings).

    Returns
    -------
    alpha : numpy.ndarray
        Polarizability, shape (3, 3), bohr^3, symmetrised (the asymmetry before symmetrising is
        logged at DEBUG level).
    dm1 : numpy.ndarray
        ``dP/dE_j``, the first-order total AO density matrix per field direction, shape
        (3, nao, nao), e/(hartree/(e·bohr)) i.e. per atomic unit of field; symmetric and
        traceless against the overlap (``Tr(dm1[j] S) = 0``).

    Raises
    ------
    NotImplementedError
        For unrestricted (UKS/UHF) or ROHF references.
    ValueError
        If ``mf`` is not converged.
    RuntimeError
        If the CPKS equations are not solved to ``max_residual``.
    """
    if isinstance(mf, scf.uhf.UHF) or isinstance(mf, scf.rohf.ROHF):
        raise NotImplementedError(
            "polarizability_au supports closed-shell RKS/RHF only; "
            "open-shell (UKS/UHF/ROKS) CPKS is not implemented"
        )
    if not getattr(mf, "converged", False):
        raise ValueError("polarizability requested for an SCF that did not converge")
    mol = mf.mol
    mo_coeff = np.asarray(mf.mo_coeff)
    mo_occ = np.asarray(mf.mo_occ)
    mo_energy = np.asarray(mf.mo_energy)
    occ = mo_occ > 0
    orbo = mo_coeff[:, occ]
    orbv = mo_coeff[:, ~occ]
    nocc, nvir = orbo.shape[1], orbv.shape[1]

    r = mol.intor_symmetric("int1e_r", comp=3)  # (3, nao, nao), origin irrelevant (Tr D1 S = 0)
    h1 = np.einsum("xpq,pa,qi->xai", r, orbv, orbo)  # (3, nvir, nocc)

    def density(u: np.ndarray) -> np.ndarray:
        u = u.reshape(-1, nvir, nocc)
        d = np.einsum("pa,xai,qi->xpq", orbv, u * 2.0, orbo)
        return d + d.transpose(0, 2, 1)

    # the same response in the (a, i) block only, ~4x faster; None when not supported
    fvind = mo_response(mf, max_memory_mb=float(mf.max_memory)) if mo_block else None
    if fvind is None:
        vresp = mf.gen_response(singlet=None, hermi=1)

        def fvind(u: np.ndarray) -> np.ndarray:
            v1 = vresp(density(u))
            return np.einsum("xpq,pa,qi->xai", v1, orbv, orbo)

    u, _ = cphf.solve(fvind, mo_energy, mo_occ, h1, None, max_cycle, conv_tol, verbose=0)
    u = u.reshape(3, nvir, nocc)

    if max_residual is not None:
        e_ai = mo_energy[~occ][:, None] - mo_energy[occ][None, :]
        resid = e_ai * u + fvind(u) + h1
        rel = float(np.linalg.norm(resid) / np.linalg.norm(h1))
        log.debug("CPKS relative residual %.2e", rel)
        if not rel <= max_residual:
            raise RuntimeError(
                f"CPKS not converged: relative residual {rel:.2e} > {max_residual:.0e} "
                f"after {max_cycle} Krylov iterations"
            )

    dm1 = density(u)
    alpha = -np.einsum("ipq,jqp->ij", r, dm1)
    asym = np.abs(alpha - alpha.T).max()
    log.debug("CPKS alpha asymmetry max |a_ij - a_ji| = %.2e bohr^3", asym)
    return 0.5 * (alpha + alpha.T), dm1


def polarizability_finite_field_au(
    mol: gto.Mole,
    level: LevelOfTheory,
    *,
    field_au: float = 1e-3,
    threads: int | None = None,
    dm0: np.ndarray | None = None,
    conv_tol: float = 1e-11,
    conv_tol_grad: float = 1e-7,
    four_point: bool = False,
) -> np.ndarray:
    """Static polarizability by finite differences of the dipole (validation reference).

    Each field ``±E_j`` is added to the core Hamiltonian as ``h -> h + E_j r_j`` (electrons);
    ``alpha_ij = (mu_i(+E_j) - mu_i(-E_j)) / (2 E_j)`` with :func:`dipole_au` (fixed origin,
    the centre of nuclear charge). The SCFs use the same DF and grid as :func:`run_scf`, so they
    agree with :func:`polarizability_au` up to the finite-difference error (``O(E^2)``,
    hyperpolarizability) and the SCF convergence.

    Parameters
    ----------
    mol
        Molecule (closed or open shell).
    level
        Level of theory (its ``conv_tol`` is replaced by ``conv_tol``).
    field_au
        Field strength, hartree/(e·bohr).
    threads
        OpenMP threads; ``None`` leaves PySCF's setting.
    dm0
        Starting density (e.g. the zero-field solution), shape (nao, nao) or (2, nao, nao).
    conv_tol, conv_tol_grad
        SCF convergence for the field calculations (energy, Eh; orbital gradient).
    four_point
        Use the 4-point stencil ``(8[mu(E) - mu(-E)] - [mu(2E) - mu(-2E)]) / (12 E)``.

    Returns
    -------
    numpy.ndarray
        Polarizability, shape (3, 3), bohr^3, not symmetrised.
    """
    origin = centre_of_nuclear_charge_bohr(mol)
    with mol.with_common_orig(origin):
        r = mol.intor_symmetric("int1e_r", comp=3)

    # one DF tensor and one grid for all field calculations (shallow copies share them)
    base = make_mf(mol, level)
    base.conv_tol = conv_tol
    base.conv_tol_grad = conv_tol_grad
    h0 = base.get_hcore()

    def mu(efield: np.ndarray, guess: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        mf = base.copy()
        h = h0 + np.einsum("x,xpq->pq", efield, r)
        mf.get_hcore = lambda *args, **kwargs: h
        mf.kernel(dm0=guess)
        if not mf.converged:
            mf = mf.newton()
            mf.kernel(dm0=mf.make_rdm1())
        if not mf.converged:
            raise RuntimeError(f"finite-field SCF did not converge at field {efield}")
        return dipole_au(mf, origin_bohr=origin), mf.make_rdm1()

    steps = [(1.0, 8.0), (2.0, -1.0)] if four_point else [(1.0, 1.0)]
    denom = 12.0 if four_point else 2.0
    alpha = np.zeros((3, 3))
    with pyscf_threads(threads):
        if getattr(base, "with_df", None) is not None:
            base.with_df.build()
        if getattr(base, "grids", None) is not None:
            base.grids.build(with_non0tab=True)
        for j in range(3):
            for k, w in steps:
                e = np.zeros(3)
                e[j] = k * field_au
                mu_p, _ = mu(e, dm0)
                mu_m, _ = mu(-e, dm0)
                alpha[:, j] += w * (mu_p - mu_m)
            alpha[:, j] /= denom * field_au
    return alpha
