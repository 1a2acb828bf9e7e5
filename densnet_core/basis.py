"""Auxiliary (density-fitting) basis: per-element layout, PySCF ↔ e3nn ordering, integrals.

The model predicts, per atom, the coefficients of an atom-centred auxiliary Gaussian basis
(``LevelOfTheory.fit_auxbasis``). Labels store them in **PySCF aux-AO order** (atoms in order,
shells in PySCF's order, which is grouped by angular momentum, and within a shell the real
spherical harmonics in PySCF's order). The network works in **e3nn order**. This module owns
the map between the two, and the one-centre integrals that turn coefficients into the electron
count and the dipole.

Conventions (measured numerically with PySCF 2.14 and e3nn 0.6.0, see
:func:`pyscf_to_e3nn_matrix`):

- l = 0: identical.
- l = 1: identical. PySCF's p shells are (x, y, z) and e3nn 0.6's ``spherical_harmonics(1, r)``
  is proportional to (x, y, z) as well.
- l >= 2: PySCF uses the real solid harmonics m = -l..l about the z axis; e3nn's real spherical
  harmonics are built about a different polar axis, so the map is a dense orthogonal
  (2l+1, 2l+1) matrix, not a signed permutation (e.g. for l = 2 PySCF's d_z2 is
  -1/2 e3nn[2] - sqrt(3)/2 e3nn[4]).

For every l, with ``D = pyscf_to_e3nn_matrix(l)`` (orthogonal)::

    chi_pyscf(r) = D @ Y_e3nn(r) * radial(r)     (as functions, PySCF AO normalisation)
    c_e3nn = D.T @ c_pyscf                       (so sum_m c_pyscf_m chi_m is unchanged)
    c_pyscf = D @ c_e3nn

so the e3nn-ordered coefficient block of an irrep ``l`` (parity (-1)^l) rotates with
``o3.Irreps(f"1x{l}{'e' if l % 2 == 0 else 'o'}").D_from_matrix(R)`` when the density is rotated
by R (proper or improper): rho'(r) = rho(R^-1 r) has c'_e3nn = D_l(R) c_e3nn.

The transform is orthogonal, so coefficient norms (and losses) are the same in both orders.
Units: coefficients multiply normalised AOs and are in e / bohr^3 · (bohr^3/2 AO norm) — i.e.
``rho(r) = sum_mu c_mu chi_mu(r)`` in e / bohr^3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from pyscf import gto
from pyscf.df import addons as df_addons
from pyscf.gto.mole import gaussian_int

__all__ = [
    "AuxLayout",
    "aux_layout",
    "charge_integrals",
    "dipole_integrals",
    "element_charge_integrals",
    "element_irreps",
    "element_layout",
    "element_nao",
    "make_auxmol",
    "molecule_irreps",
    "n_aux_functions",
    "pyscf_to_e3nn_matrix",
    "to_e3nn",
    "to_pyscf",
    "transform_matrix",
]

# libcint's angular factors for s and p shells (CINTcommon_fac_sp): Y_00 = 1/sqrt(4 pi) and
# sqrt(3 / (4 pi)) for the Cartesian-like p functions. For l >= 2 they do not matter here.
_FAC_S = 0.282094791773878143
_FAC_P = 0.488602511902919921


def _parity(l: int) -> str:
    return "e" if l % 2 == 0 else "o"


def _atomic_number(symbol_or_z: str | int) -> int:
    if isinstance(symbol_or_z, (int, np.integer)):
        return int(symbol_or_z)
    return int(gto.charge(str(symbol_or_z)))


def make_auxmol(mol: gto.Mole, auxbasis: str | dict) -> gto.Mole:
    """The auxiliary-basis molecule (same atoms and geometry, spherical aux functions).

    Parameters
    ----------
    mol
        Orbital-basis molecule (geometry in bohr internally, as PySCF stores it).
    auxbasis
        PySCF basis name (e.g. ``"def2-universal-jkfit"``) or a PySCF basis dict.

    Returns
    -------
    gto.Mole
        ``auxmol`` with ``auxmol.nao`` = M functions, ordered atom by atom.
    """
    return df_addons.make_auxmol(mol, auxbasis)


@lru_cache(maxsize=256)
def _element_auxmol(z: int, auxbasis: str) -> gto.Mole:
    symbol = gto.mole._symbol(z)
    atom = gto.M(
        atom=[[symbol, (0.0, 0.0, 0.0)]], basis=auxbasis, spin=z % 2, unit="Bohr", verbose=0
    )
    return make_auxmol(atom, auxbasis)


@lru_cache(maxsize=256)
def element_layout(symbol_or_z: str | int, auxbasis: str) -> tuple[tuple[int, int], ...]:
    """The shells of one element's auxiliary basis as ``(offset, l)`` per (2l+1)-block.

    A contracted shell with ``nctr`` contractions gives ``nctr`` blocks (PySCF orders a shell's
    functions contraction-major, m fastest).

    Returns
    -------
    tuple of (int, int)
        ``(offset, l)``: the block occupies aux functions ``offset .. offset + 2l``.
    """
    auxmol = _element_auxmol(_atomic_number(symbol_or_z), auxbasis)
    blocks: list[tuple[int, int]] = []
    offset = 0
    for ib in range(auxmol.nbas):
        l = int(auxmol.bas_angular(ib))
        for _ in range(int(auxmol.bas_nctr(ib))):
            blocks.append((offset, l))
            offset += 2 * l + 1
    if offset != auxmol.nao:  # pragma: no cover - would mean Cartesian functions
        raise RuntimeError(f"aux layout size {offset} != nao {auxmol.nao}")
    return tuple(blocks)


def element_nao(symbol_or_z: str | int, auxbasis: str) -> int:
    """Number of auxiliary functions of one atom of this element."""
    return _element_auxmol(_atomic_number(symbol_or_z), auxbasis).nao


def element_irreps(symbol_or_z: str | int, auxbasis: str):
    """The per-element aux-basis layout as e3nn irreps, in PySCF's shell order.

    Parity is (-1)^l. Consecutive equal irreps are merged (which keeps the order, so the
    layout of the irreps is exactly PySCF's shell order, e.g. ``"10x0e+8x1o+5x2e+1x3o+1x4e"``
    for O in def2-universal-jkfit).

    Returns
    -------
    e3nn.o3.Irreps
        ``irreps.dim == element_nao(symbol_or_z, auxbasis)``.
    """
    from e3nn import o3

    terms: list[list[Any]] = []
    for _, l in element_layout(symbol_or_z, auxbasis):
        if terms and terms[-1][1] == l:
            terms[-1][0] += 1
        else:
            terms.append([1, l])
    return o3.Irreps("+".join(f"{mul}x{l}{_parity(l)}" for mul, l in terms))


def molecule_irreps(numbers: Sequence[int], auxbasis: str):
    """Irreps of a molecule's full aux coefficient vector (atoms in order), e3nn order."""
    from e3nn import o3

    out = o3.Irreps("")
    for z in numbers:
        out = out + element_irreps(int(z), auxbasis)
    return out


@dataclass(frozen=True)
class AuxLayout:
    """A molecule's aux-function layout.

    Attributes
    ----------
    atom_offsets
        (N+1,) start of each atom's block in the coefficient vector; last entry = M.
    blocks
        ``{l: (n_blocks_l, 2l+1) int array}`` indices of every (2l+1)-block of angular
        momentum l in the molecule's coefficient vector.
    """

    atom_offsets: np.ndarray
    blocks: dict[int, np.ndarray]

    @property
    def n_functions(self) -> int:
        return int(self.atom_offsets[-1])


@lru_cache(maxsize=1024)
def _aux_layout_cached(numbers: tuple[int, ...], auxbasis: str) -> AuxLayout:
    offsets = [0]
    per_l: dict[int, list[np.ndarray]] = {}
    for z in numbers:
        start = offsets[-1]
        for off, l in element_layout(z, auxbasis):
            per_l.setdefault(l, []).append(start + off + np.arange(2 * l + 1))
        offsets.append(start + element_nao(z, auxbasis))
    blocks = {l: np.stack(v) for l, v in sorted(per_l.items())}
    return AuxLayout(atom_offsets=np.asarray(offsets, dtype=np.int64), blocks=blocks)


def aux_layout(numbers: Sequence[int], auxbasis: str) -> AuxLayout:
    """Layout of a molecule's coefficient vector (see :class:`AuxLayout`)."""
    return _aux_layout_cached(tuple(int(z) for z in numbers), auxbasis)


def n_aux_functions(numbers: Sequence[int], auxbasis: str) -> int:
    """M, the number of aux functions of the molecule."""
    return aux_layout(numbers, auxbasis).n_functions


# --- PySCF <-> e3nn real spherical harmonics --------------------------------------------------


@lru_cache(maxsize=16)
def _pyscf_to_e3nn_matrix_cached(l: int) -> np.ndarray:
    import torch
    from e3nn import o3

    rng = np.random.default_rng(12345 + l)
    pts = rng.normal(size=(max(200, 20 * (2 * l + 1)), 3))
    alpha = 0.7
    mol = gto.M(
        atom=[["ghost-He", (0.0, 0.0, 0.0)]],
        basis={"ghost-He": [[l, [alpha, 1.0]]]},
        unit="Bohr",
        verbose=0,
    )
    ao = mol.eval_gto("GTOval_sph", pts)  # (n, 2l+1)
    r = np.linalg.norm(pts, axis=1)
    radial = (r**l * np.exp(-alpha * r**2))[:, None]
    y = o3.spherical_harmonics(
        l, torch.as_tensor(pts, dtype=torch.float64), normalize=True, normalization="integral"
    ).numpy()
    # ao = (y * radial) @ X  ->  chi_pyscf_m = sum_k X[k, m] Y_k  ->  D = X.T
    x, *_ = np.linalg.lstsq(y * radial, ao, rcond=None)
    d = x.T
    # remove the common radial normalisation and make exactly orthogonal (polar factor)
    u, _, vt = np.linalg.svd(d)
    d = u @ vt
    scale = np.linalg.norm(ao) / np.linalg.norm((y * radial) @ d.T)
    resid = np.abs(ao - scale * (y * radial) @ d.T).max() / np.abs(ao).max()
    if resid > 1e-10:  # pragma: no cover - convention changed under us
        raise RuntimeError(f"PySCF/e3nn harmonics for l={l} are not related by a rotation")
    d[np.abs(d) < 1e-14] = 0.0
    d.setflags(write=False)
    return d


def pyscf_to_e3nn_matrix(l: int) -> np.ndarray:
    """Orthogonal matrix D_l with ``chi_pyscf = D_l @ Y_e3nn`` (same radial part, up to scale).

    Derived numerically by fitting PySCF's AO values of a single shell at random points against
    e3nn's ``o3.spherical_harmonics(l, r, normalize=True)``, then taking the orthogonal polar
    factor (residual < 1e-10 checked).

    Returns
    -------
    np.ndarray
        (2l+1, 2l+1), read-only. Coefficients: ``c_e3nn = D.T @ c_pyscf``,
        ``c_pyscf = D @ c_e3nn``.
    """
    if l < 0:
        raise ValueError("l must be >= 0")
    return _pyscf_to_e3nn_matrix_cached(int(l))


def _apply_blocks(coeffs: Any, numbers: Sequence[int], auxbasis: str, to_e3nn_: bool) -> Any:
    layout = aux_layout(numbers, auxbasis)
    if coeffs.shape[-1] != layout.n_functions:
        raise ValueError(
            f"coefficient vector has {coeffs.shape[-1]} entries; the molecule has "
            f"{layout.n_functions} {auxbasis} functions"
        )
    is_torch = not isinstance(coeffs, np.ndarray)
    out = coeffs.clone() if is_torch else np.array(coeffs, dtype=np.float64, copy=True)
    for l, idx in layout.blocks.items():
        if l < 2:  # identity for l = 0, 1
            continue
        d = pyscf_to_e3nn_matrix(l)
        # rows: c_e3nn_row = c_pyscf_row @ D ; c_pyscf_row = c_e3nn_row @ D.T
        mat = d if to_e3nn_ else d.T
        if is_torch:
            import torch

            idx_t = torch.as_tensor(idx, device=coeffs.device)
            mat_t = torch.tensor(np.array(mat), dtype=coeffs.dtype, device=coeffs.device)
            out[..., idx_t] = coeffs[..., idx_t] @ mat_t
        else:
            out[..., idx] = coeffs[..., idx] @ mat
    return out


def to_e3nn(coeffs_pyscf: Any, numbers: Sequence[int], auxbasis: str) -> Any:
    """PySCF aux-AO order → e3nn order.

    Parameters
    ----------
    coeffs_pyscf
        (..., M) numpy array or torch tensor: a density (M,), responses (3, M), or a batch.
    numbers
        (N,) atomic numbers, in the molecule's atom order.
    auxbasis
        Aux basis name.

    Returns
    -------
    Same type and shape, e3nn order (layout :func:`molecule_irreps`).
    """
    return _apply_blocks(coeffs_pyscf, numbers, auxbasis, True)


def to_pyscf(coeffs_e3nn: Any, numbers: Sequence[int], auxbasis: str) -> Any:
    """e3nn order → PySCF aux-AO order; inverse of :func:`to_e3nn` (shape (..., M))."""
    return _apply_blocks(coeffs_e3nn, numbers, auxbasis, False)


@lru_cache(maxsize=256)
def _element_transform(z: int, auxbasis: str) -> np.ndarray:
    n = element_nao(z, auxbasis)
    t = np.zeros((n, n))
    for off, l in element_layout(z, auxbasis):
        t[off : off + 2 * l + 1, off : off + 2 * l + 1] = pyscf_to_e3nn_matrix(l)
    t.setflags(write=False)
    return t


def transform_matrix(symbol_or_z: str | int, auxbasis: str) -> np.ndarray:
    """Per-element orthogonal block-diagonal T with ``c_pyscf = T @ c_e3nn`` (n_el, n_el).

    Useful on the model side (torch): ``c_e3nn = c_pyscf @ T`` for row vectors.
    """
    return _element_transform(_atomic_number(symbol_or_z), auxbasis)


# --- one-centre integrals ---------------------------------------------------------------------


def charge_integrals(auxmol: gto.Mole) -> np.ndarray:
    """∫ chi_mu(r) dr for every aux function (analytic; only s functions are non-zero).

    For a contracted s shell with libcint coefficients c_k (including the radial
    normalisation), chi(r) = Y_00 sum_k c_k exp(-a_k r^2), so ∫chi = Y_00 4 pi sum_k c_k
    ∫_0^inf r^2 exp(-a_k r^2) dr. Tested against DFT-grid integration.

    Returns
    -------
    np.ndarray
        (M,), bohr^3 per unit coefficient (so ``q @ c`` is the electron count, e).
    """
    if auxmol.cart:
        raise NotImplementedError("Cartesian aux basis not supported")
    ao_loc = auxmol.ao_loc_nr()
    q = np.zeros(auxmol.nao)
    for ib in range(auxmol.nbas):
        if auxmol.bas_angular(ib) != 0:
            continue
        exps = auxmol.bas_exp(ib)
        coef = auxmol._libcint_ctr_coeff(ib)  # (nprim, nctr)
        prim = 4.0 * np.pi * gaussian_int(2, exps) * _FAC_S
        q[ao_loc[ib] : ao_loc[ib + 1]] = prim @ coef
    return q


def dipole_integrals(auxmol: gto.Mole, origin_bohr: Sequence[float] | np.ndarray) -> np.ndarray:
    """∫ (r - origin) chi_mu(r) dr for every aux function (analytic).

    With chi centred at A: ∫(r - O) chi = ∫(r - A) chi + (A - O) ∫chi. The first term is
    non-zero only for p functions (PySCF p order x, y, z), the second only for s functions.

    Parameters
    ----------
    auxmol
        Aux-basis molecule.
    origin_bohr
        (3,) origin, bohr.

    Returns
    -------
    np.ndarray
        (3, M), bohr^4 per unit coefficient. The electronic first moment of the fitted density
        is ``dipole_integrals(...) @ c`` (e·bohr); the electronic *dipole* is its negative.
    """
    if auxmol.cart:
        raise NotImplementedError("Cartesian aux basis not supported")
    origin = np.asarray(origin_bohr, dtype=np.float64).reshape(3)
    ao_loc = auxmol.ao_loc_nr()
    coords = auxmol.atom_coords()  # bohr
    q = charge_integrals(auxmol)
    d = np.zeros((3, auxmol.nao))
    for ib in range(auxmol.nbas):
        l = auxmol.bas_angular(ib)
        i0, i1 = ao_loc[ib], ao_loc[ib + 1]
        if l == 0:
            shift = coords[auxmol.bas_atom(ib)] - origin
            d[:, i0:i1] = shift[:, None] * q[None, i0:i1]
        elif l == 1:
            exps = auxmol.bas_exp(ib)
            coef = auxmol._libcint_ctr_coeff(ib)  # (nprim, nctr)
            # ∫ x * (fac_p x exp(-a r^2)) = fac_p * (4 pi / 3) ∫ r^4 exp(-a r^2) dr
            vals = (_FAC_P * 4.0 * np.pi / 3.0 * gaussian_int(4, exps)) @ coef  # (nctr,)
            for ic, v in enumerate(vals):
                for k in range(3):
                    d[k, i0 + 3 * ic + k] = v
    return d


@lru_cache(maxsize=256)
def _element_charge_integrals(z: int, auxbasis: str) -> np.ndarray:
    q = charge_integrals(_element_auxmol(z, auxbasis))
    q.setflags(write=False)
    return q


def element_charge_integrals(symbol_or_z: str | int, auxbasis: str) -> np.ndarray:
    """(n_el,) ∫chi for one element's aux functions, PySCF order (= e3nn order: s only)."""
    return _element_charge_integrals(_atomic_number(symbol_or_z), auxbasis)
