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

The per-element tables are also kept on disk (``<cache_dir>/featurize/*.npz``, one file per aux
basis, level and code version), so a prediction process reads them instead of building PySCF
molecules (PySCF is then not even imported here; ~0.2 s of integrals and ~1 s of imports on the
development machine). The file name carries a hash of the aux basis, the level, the PySCF
version and the source of this module and of :mod:`densnet_core.basis` / :mod:`densnet_core.prior`,
so a change of any of them computes the tables afresh; a broken or unwritable cache is ignored.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

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
    from densnet_core.basis import _element_auxmol, dipole_integrals

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
    disk_cache
        Read and write the per-element tables under ``<cache_dir>/featurize``.
    cache_dir
        Cache root (default ``get_settings().cache_dir``).
    """

    def __init__(
        self,
        level: LevelOfTheory,
        *,
        with_prior: bool = True,
        disk_cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.level = level
        self.auxbasis = level.fit_auxbasis
        self.with_prior = bool(with_prior)
        self.disk_cache = bool(disk_cache)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._tables: dict[int, ElementTables] = {}
        self._comp_cache: dict[tuple[int, ...], _Composition] = {}
        self._disk: dict[int, ElementTables] | None = None

    def element(self, z: int) -> ElementTables:
        """The e3nn-ordered tables of element ``z`` (from the disk cache, or computed once)."""
        z = int(z)
        tab = self._tables.get(z)
        if tab is None:
            tab = self._from_disk(z)
            if tab is None:
                tab = self._compute(z)
                self._to_disk(z, tab)
            for a in (tab.q, tab.p, tab.prior):
                a.setflags(write=False)
            self._tables[z] = tab
        return tab

    def _compute(self, z: int) -> ElementTables:
        from densnet_core.basis import element_charge_integrals, element_nao, to_e3nn

        aux = self.auxbasis
        q = to_e3nn(np.asarray(element_charge_integrals(z, aux)), [z], aux)
        p = to_e3nn(element_first_moments(z, aux), [z], aux)
        if self.with_prior:
            from densnet_core.prior import get_prior_library

            prior = to_e3nn(np.asarray(get_prior_library(self.level).element(z)), [z], aux)
        else:
            prior = np.zeros(element_nao(z, aux))
        return ElementTables(q=np.asarray(q), p=np.asarray(p), prior=np.asarray(prior))

    # ---- disk cache --------------------------------------------------------------------------
    def cache_path(self) -> Path:
        """The cache file of this featurizer's tables (see the module docstring)."""
        root = self.cache_dir
        if root is None:
            from densnet_core.settings import get_settings

            root = get_settings().cache_dir
        return root / "featurize" / f"{_cache_key(self)}.npz"

    def _from_disk(self, z: int) -> ElementTables | None:
        if not self.disk_cache:
            return None
        if self._disk is None:
            self._disk = {}
            try:
                with np.load(self.cache_path()) as data:
                    for name in data.files:
                        if name.startswith("q_"):
                            el = int(name[2:])
                            self._disk[el] = ElementTables(
                                q=data[f"q_{el}"], p=data[f"p_{el}"], prior=data[f"prior_{el}"]
                            )
            except (OSError, ValueError, KeyError):  # no cache yet, or a broken one
                self._disk = {}
        return self._disk.get(z)

    def _to_disk(self, z: int, tab: ElementTables) -> None:
        if not self.disk_cache:
            return
        assert self._disk is not None
        self._disk[z] = tab
        path = self.cache_path()
        arrays: dict[str, np.ndarray] = {}
        for el, t in self._disk.items():
            arrays.update({f"q_{el}": t.q, f"p_{el}": t.p, f"prior_{el}": t.prior})
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)  # atomic: readers see the old file or the new one
        except OSError:  # a read-only cache folder only costs the recomputation
            tmp.unlink(missing_ok=True)

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


def _cache_key(featurizer: Featurizer) -> str:
    """Name of a featurizer's cache file: aux basis + hash of everything the tables depend on."""
    from importlib.metadata import PackageNotFoundError, version

    here = Path(__file__).resolve().parent
    h = hashlib.sha1()
    for name in ("featurize.py", "basis.py", "prior.py"):
        try:
            h.update((here / name).read_bytes())
        except OSError:
            h.update(name.encode())
    try:
        h.update(version("pyscf").encode())
    except PackageNotFoundError:  # pragma: no cover - pyscf is a dependency
        pass
    h.update(f"{featurizer.level.hash}|{featurizer.with_prior}".encode())
    aux = "".join(c if c.isalnum() or c in "-_" else "_" for c in featurizer.auxbasis)
    return f"{aux}-{h.hexdigest()[:16]}"


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
    numbers, positions_bohr, charge
        As in :meth:`Featurizer.__call__`.
    level
        Level of theory (aux basis and SAD prior).

    Returns
    -------
    MoleculeInput
        prior (M,), charge integrals (M,), dipole integrals (3, M) about the centre of nuclear
        charge, e3nn order. The arrays ``prior_coeffs``/``charge_ints`` are shared, read-only.
    """
    return get_featurizer(level)(numbers, positions_bohr, charge)
