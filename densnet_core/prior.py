"""Free-atom (SAD) prior: spherically averaged neutral-atom densities in the aux basis.

For each element, PySCF's spherically averaged fractional-occupation atomic SCF
(``pyscf.scf.atom_ks.get_atm_nrks`` for DFT, ``pyscf.scf.atom_hf.get_atm_nrhf`` for HF) is run
with the level's functional and orbital basis, and its density is fitted into the level's
``fit_auxbasis`` with the Coulomb metric, constrained to exactly Z electrons. By symmetry only
s-type coefficients are non-zero (checked, then set exactly to zero), so the per-element vector
is the same in PySCF and e3nn order.

The model predicts a correction on top of :func:`molecular_prior`, the concatenation of the
per-atom vectors. The prior is always the superposition of NEUTRAL atoms: for an ion it
integrates to the neutral electron count, sum(Z); the model's charge projection (constraint
on q.c = N_e) fixes the total charge later.

Lookup order for an element's vector (no SCF at prediction time once a file exists):

1. package data ``densnet_core/data/priors/<level.hash>.npz`` (shipped with the package);
2. cache ``get_settings().cache_dir / "priors" / "<level.hash>.npz"``;
3. computed on demand, then merged into the cache file (written atomically: tmp + os.replace).

Units: coefficients in e per normalised aux function (so ``q @ c`` is in e).
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from pyscf import gto

from densnet_core.basis import element_layout, make_auxmol
from densnet_core.fitting import fit_density
from densnet_core.level import LevelOfTheory
from densnet_core.settings import get_settings
from densnet_core.store import atomic_file

__all__ = [
    "DEFAULT_PRIOR_ELEMENTS",
    "PACKAGE_PRIOR_DIR",
    "PriorLibrary",
    "free_atom_density",
    "get_prior_library",
    "molecular_prior",
    "precompute_priors",
]

DEFAULT_PRIOR_ELEMENTS: tuple[int, ...] = (1, 6, 7, 8, 9, 15, 16, 17, 35)
"""H C N O F P S Cl Br."""

PACKAGE_PRIOR_DIR = Path(__file__).resolve().parent / "data" / "priors"

_SPHERICITY_TOL = 1e-6


def free_atom_density(z: int, level: LevelOfTheory) -> tuple[gto.Mole, np.ndarray]:
    """Spherically averaged neutral free-atom density at the level's xc and orbital basis.

    Parameters
    ----------
    z
        Atomic number.
    level
        Level of theory (``xc``, ``basis`` used; HF if ``xc == "hf"``).

    Returns
    -------
    mol
        The one-atom molecule (at the origin).
    dm
        (nao, nao) spin-summed AO density matrix, Tr(D S) = Z.
    """
    from pyscf.scf import atom_hf, atom_ks

    symbol = gto.mole._symbol(int(z))
    mol = gto.M(
        atom=[[symbol, (0.0, 0.0, 0.0)]],
        basis=level.basis,
        spin=int(z) % 2,
        unit="Bohr",
        verbose=0,
    )
    with warnings.catch_warnings():  # PySCF's atomic SCF uses a deprecated helper
        warnings.simplefilter("ignore", DeprecationWarning)
        if level.xc.lower() == "hf":
            res = atom_hf.get_atm_nrhf(mol)
        else:
            res = atom_ks.get_atm_nrks(mol, xc=level.xc)
    _, _, mo_coeff, mo_occ = next(iter(res.values()))
    dm = (mo_coeff * mo_occ) @ mo_coeff.T
    return mol, dm


def _fit_element(z: int, level: LevelOfTheory) -> np.ndarray:
    mol, dm = free_atom_density(z, level)
    fit = fit_density(
        mol, dm, make_auxmol(mol, level.fit_auxbasis), n_electrons=float(z), constrain_dipole=False
    )
    c = fit.coeffs.copy()
    for off, l in element_layout(z, level.fit_auxbasis):
        if l > 0:
            block = c[off : off + 2 * l + 1]
            if np.abs(block).max(initial=0.0) > _SPHERICITY_TOL:
                raise RuntimeError(
                    f"free-atom density of Z={z} is not spherical: l={l} coefficient "
                    f"{np.abs(block).max():.2e}"
                )
            c[off : off + 2 * l + 1] = 0.0  # l > 0 functions carry no charge
    return c


def _read_npz(path: Path) -> dict[int, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {int(k[1:]): np.array(data[k]) for k in data.files if k.startswith("Z")}


def _write_npz_atomic(path: Path, vectors: dict[int, np.ndarray], level: LevelOfTheory) -> None:
    with atomic_file(path) as fh:
        np.savez(
            fh,
            level_json=np.array(json.dumps(level.model_dump(), sort_keys=True)),
            **{f"Z{z}": v for z, v in sorted(vectors.items())},
        )


class PriorLibrary:
    """Per-element free-atom coefficient vectors for one level of theory.

    Parameters
    ----------
    level
        Level of theory (its ``hash`` names the files, ``fit_auxbasis`` is the basis).
    cache_dir
        Cache folder (``<cache_dir>/priors/<hash>.npz``); default ``get_settings().cache_dir``.
    package_dir
        Folder with shipped ``<hash>.npz`` files; default ``densnet_core/data/priors``.

    Attributes
    ----------
    n_computed
        Number of elements computed (SCF + fit) by this instance — 0 on a pure cache hit.
    """

    def __init__(
        self,
        level: LevelOfTheory,
        *,
        cache_dir: Path | None = None,
        package_dir: Path | None = None,
    ) -> None:
        self.level = level
        root = Path(cache_dir) if cache_dir is not None else get_settings().cache_dir
        self.cache_path = root / "priors" / f"{level.hash}.npz"
        pkg = Path(package_dir) if package_dir is not None else PACKAGE_PRIOR_DIR
        self.package_path = pkg / f"{level.hash}.npz"
        self.n_computed = 0
        self._vectors: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _load(self) -> None:
        for path in (self.cache_path, self.package_path):  # package data wins
            self._vectors.update(_read_npz(path))

    def ensure(self, elements: Iterable[int]) -> None:
        """Make sure vectors for ``elements`` are available (compute and cache missing ones)."""
        wanted = sorted({int(z) for z in elements})
        with self._lock:
            missing = [z for z in wanted if z not in self._vectors]
            if not missing:
                return
            self._load()
            missing = [z for z in wanted if z not in self._vectors]
            if not missing:
                return
            new = {z: _fit_element(z, self.level) for z in missing}
            self.n_computed += len(new)
            on_disk = _read_npz(self.cache_path)  # merge with whatever another process wrote
            on_disk.update(new)
            _write_npz_atomic(self.cache_path, on_disk, self.level)
            self._vectors.update(new)

    def element(self, z: int) -> np.ndarray:
        """(n_el,) coefficients of the neutral free atom, PySCF order (= e3nn order)."""
        self.ensure([z])
        return self._vectors[int(z)]

    def molecular(self, numbers: Sequence[int]) -> np.ndarray:
        """(M,) concatenated per-atom vectors in the molecule's aux-AO order."""
        self.ensure(numbers)
        return np.concatenate([self._vectors[int(z)] for z in numbers])


@lru_cache(maxsize=16)
def get_prior_library(level: LevelOfTheory) -> PriorLibrary:
    """The process-wide :class:`PriorLibrary` of ``level`` (default cache and package dirs)."""
    return PriorLibrary(level)


def molecular_prior(numbers: Sequence[int], level: LevelOfTheory) -> np.ndarray:
    """Superposition of neutral free-atom densities in the aux basis.

    Parameters
    ----------
    numbers
        (N,) atomic numbers.
    level
        Level of theory.

    Returns
    -------
    np.ndarray
        (M,) coefficients, PySCF aux-AO order (atoms in order, shells in order); integrates to
        sum(numbers) electrons (the neutral count, also for ions).
    """
    return get_prior_library(level).molecular(numbers)


def precompute_priors(
    level: LevelOfTheory,
    elements: Iterable[int] = DEFAULT_PRIOR_ELEMENTS,
    *,
    cache_dir: Path | None = None,
) -> Path:
    """Compute (or load) the priors of ``elements`` and return the cache file's path.

    The file can be copied to ``densnet_core/data/priors/<level.hash>.npz`` to ship it.
    """
    lib = PriorLibrary(level, cache_dir=cache_dir)
    lib.ensure(elements)
    # make sure the cache file holds every requested element even if they came from package data
    on_disk = _read_npz(lib.cache_path)
    if any(int(z) not in on_disk for z in elements):
        on_disk.update({int(z): lib.element(z) for z in elements})
        _write_npz_atomic(lib.cache_path, on_disk, level)
    return lib.cache_path
