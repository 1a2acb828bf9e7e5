"""GFN2-xTB baseline (densnet_core.xtb, tblite): sanity against PySCF and basic invariances."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tblite")

from densnet_core.level import DEFAULT_LEVEL
from densnet_core.qm import build_mol, dipole_au, polarizability_au, run_scf
from densnet_core.xtb import xtb_dipole_au, xtb_polarizability_au

# water (bohr), C2v, molecular plane yz
WATER_Z = [8, 1, 1]
WATER_BOHR = np.array([[0.0, 0.0, -0.1243], [0.0, 1.4305, 0.9864], [0.0, -1.4305, 0.9864]])
# formaldehyde (bohr), molecular plane yz
CH2O_Z = [6, 8, 1, 1]
CH2O_BOHR = np.array(
    [[0.0, 0.0, -1.0], [0.0, 0.0, 1.28], [0.0, 1.77, -2.105], [0.0, -1.77, -2.105]]
)


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.mark.slow
def test_water_against_pyscf():
    """xTB dipole within 30 % of B3LYP/def2-SVPD's; alpha positive, symmetric, but too small.

    B3LYP/def2-SVPD: |mu| 0.745 au, alpha diag (9.20, 10.07, 9.55) au. GFN2-xTB: 0.895 au,
    (0.003, 5.11, 2.16) au.
    """
    mol = build_mol(WATER_Z, WATER_BOHR, basis=DEFAULT_LEVEL.basis)
    mf = run_scf(mol, DEFAULT_LEVEL).mf
    mu_ref = dipole_au(mf)
    alpha_ref, _ = polarizability_au(mf)

    mu = xtb_dipole_au(WATER_Z, WATER_BOHR, 0, 1)
    assert mu.shape == (3,)
    # same direction (along the C2 axis), magnitude within 30 %
    assert mu @ mu_ref / (np.linalg.norm(mu) * np.linalg.norm(mu_ref)) > 0.999
    assert abs(np.linalg.norm(mu) / np.linalg.norm(mu_ref) - 1.0) < 0.30

    alpha = xtb_polarizability_au(WATER_Z, WATER_BOHR, 0, 1)
    assert alpha.shape == (3, 3)
    assert np.abs(alpha - alpha.T).max() < 1e-3
    assert np.linalg.eigvalsh(0.5 * (alpha + alpha.T)).min() > 0.0
    # GFN2-xTB's minimal basis (s-only H) under-polarises in plane and cannot polarise out of
    # the plane (x) at all (documented in densnet_core/xtb.py): a known limitation, pinned here
    for i in (1, 2):
        assert 0.15 < alpha[i, i] / alpha_ref[i, i] < 1.0
    assert alpha[0, 0] < 0.01 * alpha_ref[0, 0]
    iso, iso_ref = np.trace(alpha) / 3, np.trace(alpha_ref) / 3
    assert 0.15 < iso / iso_ref < 0.5


def test_field_sign_step_and_linearity():
    """alpha = dmu/dE > 0 with tblite's field, independent of the step; dipole sign physical."""
    mu0 = xtb_dipole_au(CH2O_Z, CH2O_BOHR)
    # O at +z carries the negative charge: the dipole (from - to +) points along -z
    assert mu0[2] < -0.5 and np.abs(mu0[:2]).max() < 1e-8
    e = np.array([0.0, 0.0, 1e-3])
    mu_p = xtb_dipole_au(CH2O_Z, CH2O_BOHR, field_au=e)
    assert mu_p[2] > mu0[2]  # the induced dipole follows the field
    a1 = xtb_polarizability_au(CH2O_Z, CH2O_BOHR, field_au=5e-4)
    a2 = xtb_polarizability_au(CH2O_Z, CH2O_BOHR, field_au=1e-3)
    assert np.abs(a1 - a2).max() < 0.02
    assert np.abs(a1 - a1.T).max() < 1e-3
    assert np.all(np.diag(a1) > 0)
    assert np.abs(a1[0, 1]) < 1e-6 and np.abs(a1[0, 2]) < 1e-6  # C2v: diagonal tensor


def test_translation_and_rotation():
    """Dipole about the centre of nuclear charge moves with the molecule; alpha rotates."""
    rot = _rotation(5)
    shifted = CH2O_BOHR + np.array([3.0, -7.0, 11.0])
    rotated = CH2O_BOHR @ rot.T
    mu0 = xtb_dipole_au(CH2O_Z, CH2O_BOHR)
    np.testing.assert_allclose(xtb_dipole_au(CH2O_Z, shifted), mu0, atol=1e-7)
    np.testing.assert_allclose(xtb_dipole_au(CH2O_Z, rotated), rot @ mu0, atol=1e-6)
    a0 = xtb_polarizability_au(CH2O_Z, CH2O_BOHR)
    np.testing.assert_allclose(xtb_polarizability_au(CH2O_Z, rotated), rot @ a0 @ rot.T, atol=5e-3)
    # a cation: the dipole is about the centre of nuclear charge, so translation-invariant too
    mu_c = xtb_dipole_au(CH2O_Z, CH2O_BOHR, charge=1, multiplicity=2)
    np.testing.assert_allclose(xtb_dipole_au(CH2O_Z, shifted, 1, 2), mu_c, atol=1e-7)


def test_bad_input():
    with pytest.raises(ValueError, match="expected"):
        xtb_dipole_au(WATER_Z, WATER_BOHR[:2])
    with pytest.raises(ValueError, match="positive"):
        xtb_polarizability_au(WATER_Z, WATER_BOHR, field_au=0.0)
    with pytest.raises(ValueError, match="multiplicity"):
        xtb_dipole_au(WATER_Z, WATER_BOHR, multiplicity=0)
