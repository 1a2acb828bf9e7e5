"""From a geometry to a :class:`~densnet_core.graph.MoleculeInput` (the network's input).

Used by training and by high-throughput prediction, so no PySCF molecule is built per call.
Everything is assembled from per-element tables computed once per (element, level):

* ``q`` (n_el,): charge integrals q_mu = ∫chi_mu (non-zero on s functions only);
* ``p`` (3, n_el): one-centre first moments p_mu = ∫(r - R_A) chi_mu (non-zero on p functions
  only; PySCF's p order is x, y, z, which is also e3nn's l = 1 order);
* ``prior`` (n_el,): the neutral free-atom (SAD) coefficients of :mod:`densnet_core.prior`.

All three are converted to e3nn order once per element. Both coefficients and integrals
transform with the same orthogonal block map (``c_e3nn = T^T c_pyscf`` and, for an integral
vector g with g.c invariant, ``g_e3nn = T^T g_pyscf``), i.e. :func:`densnet_core.basis.to_e3nn`.

For a molecule with atoms A at R_A and origin O (the centre of nuclear charge, the project's
dipole convention) the dipole integrals are ``d_mu = q_mu (R_A - O) + p_mu`` (bohr per unit
coefficient), exactly what :func:`densnet_core.basis.dipole_integrals` computes with PySCF.

Per-molecule work is a handful of numpy operations on arrays of length M (the per-composition
index arrays are cached by the tuple of atomic numbers): ~10–30 µs for a 50-atom molecule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from densnet_core.basis import (
    _element_auxmol,
    element_charge_integrals,
    element_nao,
    to_e3nn,
)
from densnet_core.graph import MoleculeInput
from densnet_core.level import LevelOfTheory

__all__ = [
    "ElementTables",
    "Featurizer",
    "element_first_moments",
    "featurize",
    "get_featurizer",
]


def element_first_moments(z: int, auxbasis: str) -> np.ndarray:
    """One-centre first moments p_mu = ∫(r - R_A) chi_mu of one element's aux functions.

    Parameters
    ----------
    z
        Atomic number.
    auxbasis
        Aux basis name.

    Returns
    -------
    np.ndarray
        (3, n_el), bohr^4 per unit coefficient, PySCF order (non-zero only on p functions).
    """
    from densnet_core.basis import dipole_integrals

    # an atom at the origin: (R_A - O) = 0, so dipole_integrals returns exactly p
    return dipole_integrals(_element_auxmol(int(z), auxbasis), np.zeros(3))


@dataclass(frozen=True)
class ElementTables:
    """Per-element arrays in e3nn order.

    Attributes
    ----------
    q
        (n_el,) charge integrals, bohr^3 per unit coefficient.
    p
        (3, n_el) one-centre first moments, bohr^4 per unit coefficient.
    prior
        (n_el,) neutral free-atom coefficients (or zeros if no prior).
    """

    q: np.ndarray
    p: np.ndarray
    prior: np.ndarray


@dataclass(frozen=True)
class _Composition:
    q: np.ndarray  # (M,)
    p: np.ndarray  # (3, M)
    prior: np.ndarray  # (M,)
    sizes: np.ndarray  # (N,) number of aux functions of every atom
    z: np.ndarray  # (N,) float atomic numbers


class Featurizer:
    """Builds :class:`MoleculeInput` objects for one level of theory (aux basis + prior).

    Parameters
    ----------
    level
        Level of theory: ``fit_auxbasis`` is the basis, the SAD prior is that of the level.
    with_prior
        Include the SAD prior coefficients (False: ``prior_coeffs`` is None, i.e. zeros).
    """

    def __init__(self, level: LevelOfTheory, *, with_prior: bool = True) -> None:
        self.level = level
        self.auxbasis = level.fit_auxbasis
        self.with_prior = bool(with_prior)
        self._tables: dict[int, ElementTables] = {}
        self._comp_cache: dict[tuple[int, ...], _Composition] = {}

    def element(self, z: int) -> ElementTables:
        """The e3nn-ordered tables of element ``z`` (computed once)."""
        z = int(z)
        tab = self._tables.get(z)
        if tab is None:
            aux = self.auxbasis
            q = to_e3nn(np.asarray(element_charge_integrals(z, aux)), [z], aux)
            p = to_e3nn(element_first_moments(z, aux), [z], aux)
            if self.with_prior:
                from densnet_core.prior import get_prior_library

                prior = to_e3nn(np.asarray(get_prior_library(self.level).element(z)), [z], aux)
            else:
                prior = np.zeros(element_nao(z, aux))
            for a in (q, p, prior):
                a.setflags(write=False)
            tab = ElementTables(q=q, p=p, prior=prior)
            self._tables[z] = tab
        return tab

    def _composition(self, numbers: tuple[int, ...]) -> _Composition:
        comp = self._comp_cache.get(numbers)
        if comp is None:
            tabs = [self.element(z) for z in numbers]
            sizes = np.array([t.q.shape[0] for t in tabs], dtype=np.int64)
            comp = _Composition(
                q=np.concatenate([t.q for t in tabs]),
                p=np.concatenate([t.p for t in tabs], axis=1),
                prior=np.concatenate([t.prior for t in tabs]),
                sizes=sizes,
                z=np.asarray(numbers, dtype=np.float64),
            )
            if len(self._comp_cache) > 4096:  # bounded: a screening library has many formulas
                self._comp_cache.clear()
            self._comp_cache[numbers] = comp
        return comp

    def __call__(
        self,
        numbers: Sequence[int] | np.ndarray,
        positions_bohr: np.ndarray,
        charge: float = 0.0,
    ) -> MoleculeInput:
        """Featurise one molecule.

        Parameters
        ----------
        numbers
            (N,) atomic numbers.
        positions_bohr
            (N, 3) Cartesian coordinates, bohr.
        charge
            Total charge, e.

        Returns
        -------
        MoleculeInput
            With ``prior_coeffs`` (M,), ``charge_ints`` (M,), ``dipole_ints`` (3, M) about
            ``origin_bohr`` = the centre of nuclear charge (3,), all e3nn order.
        """
        key = tuple(np.asarray(numbers, dtype=np.int64).reshape(-1).tolist())
        pos = np.asarray(positions_bohr, dtype=np.float64).reshape(len(key), 3)
        comp = self._composition(key)
        origin = comp.z @ pos / comp.z.sum()
        dipole = np.repeat((pos - origin).T, comp.sizes, axis=1)  # (3, M): R_A - O
        dipole *= comp.q
        dipole += comp.p
        return MoleculeInput(
            numbers=np.asarray(key, dtype=np.int64),
            positions_bohr=pos,
            charge=float(charge),
            prior_coeffs=comp.prior if self.with_prior else None,
            charge_ints=comp.q,
            dipole_ints=dipole,
            origin_bohr=origin,
        )


@lru_cache(maxsize=16)
def get_featurizer(level: LevelOfTheory, *, with_prior: bool = True) -> Featurizer:
    """The process-wide :class:`Featurizer` of ``level``."""
    return Featurizer(level, with_prior=with_prior)


def featurize(
    numbers: Sequence[int] | np.ndarray,
    positions_bohr: np.ndarray,
    charge: float = 0.0,
    *,
    level: LevelOfTheory,
) -> MoleculeInput:
    """Network input of one molecule (see :meth:`Featurizer.__call__`).

    Parameters
    ----------
    numbers
        (N,) atomic numbers.
    positions_bohr
        (N, 3) bohr.
    charge
        Total charge, e.
    level
        Level of theory (aux basis and SAD prior).

    Returns
    -------
    MoleculeInput
        prior (M,), charge integrals (M,), dipole integrals (3, M) about the centre of nuclear
        charge, e3nn order. The arrays ``prior_coeffs``/``charge_ints`` are shared, read-only.
    """
    return get_featurizer(level)(numbers, positions_bohr, charge)
