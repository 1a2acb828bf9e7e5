"""Featurisation from cached per-element tables against PySCF-built integrals."""

from __future__ import annotations

import time

import numpy as np
import pytest

from densnet_core import qm
from densnet_core.basis import charge_integrals, dipole_integrals, make_auxmol, to_e3nn
from densnet_core.featurize import Featurizer, featurize
from densnet_core.level import DEFAULT_LEVEL
from densnet_core.prior import molecular_prior

# a distorted glycine-like cation: H C N O with l up to 4 functions (bohr)
NUMBERS = [7, 6, 6, 8, 8, 1, 1, 1, 1, 1, 1]


def _positions(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.array(
        [
            [0.0, 0.0, 0.0],
            [2.7, 0.3, 0.1],
            [3.9, 2.8, -0.2],
            [2.6, 4.6, 0.4],
            [6.4, 2.9, -0.6],
            [-0.7, 1.7, 0.5],
            [-0.6, -0.8, -1.6],
            [-0.5, -1.1, 1.5],
            [3.4, -0.8, 1.7],
            [3.3, -0.7, -1.6],
            [7.0, 4.6, -0.6],
        ]
    )
    return base + rng.normal(scale=0.05, size=base.shape)


def test_featurize_matches_pyscf_integrals():
    pos = _positions()
    aux = DEFAULT_LEVEL.fit_auxbasis
    mol = qm.build_mol(NUMBERS, pos, charge=1, multiplicity=1, basis="sto-3g")
    auxmol = make_auxmol(mol, aux)
    origin = qm.centre_of_nuclear_charge_bohr(mol)
    m = featurize(NUMBERS, pos, 1, level=DEFAULT_LEVEL)
    np.testing.assert_allclose(m.origin_bohr, origin, atol=1e-12)
    ref_q = to_e3nn(charge_integrals(auxmol), NUMBERS, aux)
    ref_d = to_e3nn(dipole_integrals(auxmol, origin), NUMBERS, aux)
    np.testing.assert_allclose(m.charge_ints, ref_q, atol=1e-10, rtol=0)
    np.testing.assert_allclose(m.dipole_ints, ref_d, atol=1e-10, rtol=0)
    ref_prior = to_e3nn(molecular_prior(NUMBERS, DEFAULT_LEVEL), NUMBERS, aux)
    np.testing.assert_allclose(m.prior_coeffs, ref_prior, atol=1e-12)
    assert m.charge == 1.0
    # the prior integrates to the neutral electron count
    assert float(m.charge_ints @ m.prior_coeffs) == pytest.approx(sum(NUMBERS), abs=1e-8)


def test_dipole_integrals_give_the_dipole_of_a_translated_density():
    """d.c is origin-consistent: moving the molecule moves nothing relative to its centre."""
    pos = _positions()
    a = featurize(NUMBERS, pos, 0, level=DEFAULT_LEVEL)
    b = featurize(NUMBERS, pos + np.array([1.0, -2.0, 3.0]), 0, level=DEFAULT_LEVEL)
    np.testing.assert_allclose(a.dipole_ints, b.dipole_ints, atol=1e-10)


def test_without_prior_and_unknown_layout():
    f = Featurizer(DEFAULT_LEVEL, with_prior=False)
    m = f([1, 1], np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4]]))
    assert m.prior_coeffs is None
    assert m.dipole_ints.shape == (3, m.charge_ints.shape[0])


def test_featurize_speed_50_atoms():
    rng = np.random.default_rng(0)
    numbers = rng.choice([1, 6, 7, 8], size=50).tolist()
    pos = rng.normal(scale=6.0, size=(50, 3))
    f = Featurizer(DEFAULT_LEVEL)
    f(numbers, pos)  # builds the tables
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        f(numbers, pos + 0.01)
    per_call = (time.perf_counter() - t0) / n
    print(f"featurize: {per_call * 1e6:.0f} µs per 50-atom molecule")
    assert per_call < 5e-3  # typically 0.1–0.3 ms on a loaded 2-core machine
