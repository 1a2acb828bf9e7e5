"""GFN2-xTB baseline (tblite): dipole moment and finite-field static polarizability.

A semi-empirical reference point for the accuracy benchmark (``benchmarks/accuracy.py``):
what a chemist gets in milliseconds without any machine learning. Needs the optional
dependency ``tblite`` (``pip install "densnet[xtb]"``); importing this module does not import
tblite, calling a function without it raises :class:`ImportError` with that hint.

Conventions
-----------
* Atomic units throughout: positions in bohr, dipoles in e·bohr, fields in hartree/(e·bohr),
  polarizabilities in bohr^3.
* tblite's ``"electric-field"`` interaction (``Calculator.add("electric-field", E)``) adds
  ``-E · mu`` to the energy (``-E·R_A q_A`` for the atomic partial charges and ``-E·p_A`` for the
  atomic dipoles, see tblite's ``src/tblite/external/field.f90``), i.e. the physical uniform
  field ``E``. The induced dipole then grows along ``E`` and
  ``alpha_ij = d mu_i / d E_j`` is positive, the same convention as
  :func:`densnet_core.qm.polarizability_au`.
* The dipole is reported about the centre of nuclear charge (the ``dipole_au`` label
  convention): the molecule is translated so that point is the origin before tblite sees it.
  For a neutral molecule the dipole does not depend on the origin anyway.
* The polarizability is the central difference
  ``alpha_ij = (mu_i(+h e_j) - mu_i(-h e_j)) / (2 h)`` (6 SCC calculations). With the default
  ``h = 5e-4`` au and tblite's default accuracy the asymmetry ``|alpha - alpha^T|`` is ~1e-4 au
  (pyridine: alpha_iso 38.94 au for h from 2.5e-4 to 2e-3 to within 0.004 au).

Known limitation (a property of GFN2-xTB, not of this wrapper): its minimal valence basis
cannot polarise perpendicular to a planar π system or to bonds of s-only hydrogens, and
under-polarises in plane too. Water: alpha_iso 2.4 au (out-of-plane component 0.003 au) against
9.6 au at B3LYP/def2-SVPD; pyridine: 38.9 against 62.0 au (out-of-plane 11.8 against 38.6 au).
GFN2-xTB finite-field polarizabilities are therefore 35-75 % too low for small molecules; its
dipoles are usually within 10-30 % (water: 2.27 D against 1.89 D).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "DEFAULT_FIELD_AU",
    "DEFAULT_METHOD",
    "xtb_dipole_au",
    "xtb_polarizability_au",
]

DEFAULT_METHOD = "GFN2-xTB"
#: Finite-field step, hartree/(e·bohr) (~2.6e8 V/m).
DEFAULT_FIELD_AU = 5e-4


def _calculator_class() -> Any:
    try:
        from tblite.interface import Calculator
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the GFN2-xTB baseline needs tblite: pip install 'densnet[xtb]' (or tblite)"
        ) from exc
    return Calculator


def _centred(numbers: Sequence[int], positions_bohr: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(numbers, dtype=np.int64).reshape(-1)
    xyz = np.asarray(positions_bohr, dtype=np.float64)
    if xyz.shape != (len(z), 3):
        raise ValueError(f"positions_bohr has shape {xyz.shape}, expected ({len(z)}, 3)")
    if not np.isfinite(xyz).all():
        raise ValueError("positions_bohr holds non-finite values")
    centre = (z[:, None] * xyz).sum(0) / z.sum()
    return z, xyz - centre


def _dipole(
    z: np.ndarray,
    xyz: np.ndarray,
    *,
    charge: int,
    multiplicity: int,
    method: str,
    field_au: np.ndarray | None,
    accuracy: float,
) -> np.ndarray:
    if multiplicity < 1:
        raise ValueError(f"multiplicity must be >= 1, got {multiplicity}")
    calculator = _calculator_class()
    calc = calculator(method, z, xyz, charge=float(charge), uhf=int(multiplicity) - 1)
    calc.set("verbosity", 0)
    calc.set("accuracy", float(accuracy))
    if field_au is not None:
        # tblite's C binding wants a double* (a list converts, a numpy array does not)
        calc.add("electric-field", [float(f) for f in field_au])
    res = calc.singlepoint()
    return np.asarray(res.get("dipole"), dtype=np.float64).reshape(3)


def xtb_dipole_au(
    numbers: Sequence[int],
    positions_bohr: ArrayLike,
    charge: int = 0,
    multiplicity: int = 1,
    *,
    method: str = DEFAULT_METHOD,
    field_au: ArrayLike | None = None,
    accuracy: float = 1.0,
) -> np.ndarray:
    """GFN2-xTB dipole moment (tblite), about the centre of nuclear charge.

    Parameters
    ----------
    numbers, positions_bohr
        (N,) atomic numbers and (N, 3) Cartesian coordinates, bohr.
    charge, multiplicity
        Total charge, e, and 2S + 1 (tblite's ``uhf = multiplicity - 1`` unpaired electrons).
    method
        ``"GFN2-xTB"`` (default), ``"GFN1-xTB"`` or ``"IPEA1-xTB"``.
    field_au
        Optional (3,) uniform external field, hartree/(e·bohr).
    accuracy
        tblite's numerical accuracy (1.0 = its default; smaller is tighter).

    Returns
    -------
    numpy.ndarray
        (3,) dipole, e·bohr.

    Raises
    ------
    ImportError
        tblite is not installed.
    tblite.exceptions.TBLiteRuntimeError
        The SCC did not converge (or tblite failed otherwise).
    """
    z, xyz = _centred(numbers, positions_bohr)
    efield = None if field_au is None else np.asarray(field_au, dtype=np.float64).reshape(3)
    return _dipole(
        z,
        xyz,
        charge=charge,
        multiplicity=multiplicity,
        method=method,
        field_au=efield,
        accuracy=accuracy,
    )


def xtb_polarizability_au(
    numbers: Sequence[int],
    positions_bohr: ArrayLike,
    charge: int = 0,
    multiplicity: int = 1,
    *,
    method: str = DEFAULT_METHOD,
    field_au: float = DEFAULT_FIELD_AU,
    accuracy: float = 1.0,
) -> np.ndarray:
    """GFN2-xTB static polarizability by finite field (central differences of the dipole).

    ``alpha_ij = (mu_i(+h e_j) - mu_i(-h e_j)) / (2 h)`` with ``h = field_au``; six tblite
    single points with the ``"electric-field"`` interaction.

    Parameters
    ----------
    numbers, positions_bohr, charge, multiplicity, method, accuracy
        As in :func:`xtb_dipole_au`.
    field_au
        Field step h, hartree/(e·bohr).

    Returns
    -------
    numpy.ndarray
        (3, 3) polarizability, bohr^3, column j = response to a field along axis j; not
        symmetrised (its asymmetry measures the finite-difference and SCC noise).

    Raises
    ------
    ImportError
        tblite is not installed.
    ValueError
        Non-positive field step or bad shapes.
    tblite.exceptions.TBLiteRuntimeError
        An SCC did not converge.
    """
    if not field_au > 0:
        raise ValueError(f"field_au must be positive, got {field_au}")
    z, xyz = _centred(numbers, positions_bohr)
    alpha = np.zeros((3, 3))
    for j in range(3):
        e = np.zeros(3)
        e[j] = field_au
        kw = dict(charge=charge, multiplicity=multiplicity, method=method, accuracy=accuracy)
        mu_p = _dipole(z, xyz, field_au=e, **kw)
        mu_m = _dipole(z, xyz, field_au=-e, **kw)
        alpha[:, j] = (mu_p - mu_m) / (2.0 * field_au)
    return alpha
