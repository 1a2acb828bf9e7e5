"""Labels against independent PySCF numbers (not against densnet's own code paths)."""

from __future__ import annotations

import numpy as np
import pytest
from pyscf import gto

from densnet_core import keys as K
from densnet_core.basis import charge_integrals, dipole_integrals, make_auxmol
from densnet_core.labelling import label_conformer, label_key
from densnet_core.level import LevelOfTheory
from densnet_core.units import DEBYE_PER_AU
from tests._pyscf_reference import independent_pyscf

# formaldehyde, Å (a small molecule with a real dipole)
FORMALDEHYDE = (
    [6, 8, 1, 1],
    [[0.0, 0.0, -0.529], [0.0, 0.0, 0.677], [0.0, 0.935, -1.114], [0.0, -0.935, -1.114]],
)


def _row(numbers, positions, *, charge=0, multiplicity=1, status="ok", error=""):
    return {
        K.RECORD_INDEX: 0,
        K.NAME: "formaldehyde",
        K.SMILES: "C=O",
        K.MOL_ID: "WSFSSNUMVMOOMR-UHFFFAOYSA-N",
        K.CONFORMER_ID: 0,
        K.CONFORMER_KEY: "key-formaldehyde",
        K.CHARGE: charge,
        K.MULTIPLICITY: multiplicity,
        K.NUMBERS: numbers,
        K.POSITIONS_ANGSTROM: positions,
        K.STATUS: status,
        K.ERROR: error,
    }


@pytest.fixture(scope="module")
def formaldehyde_label():
    return label_conformer(_row(*FORMALDEHYDE), LevelOfTheory())


@pytest.mark.slow
def test_label_matches_independent_pyscf(formaldehyde_label):
    lab = formaldehyde_label
    assert lab[K.STATUS] == "ok", lab[K.ERROR]
    numbers, positions = FORMALDEHYDE
    _, mf = independent_pyscf(numbers, positions)
    assert lab[K.ENERGY_HARTREE] == pytest.approx(mf.e_tot, abs=1e-7)
    mu_ref = mf.dip_moment(unit="AU", verbose=0)
    # the label's SCF stops at conv_tol=1e-9 Eh, the reference at 1e-11: dipoles agree to ~1e-6
    np.testing.assert_allclose(lab[K.DIPOLE_AU], mu_ref, atol=2e-5)
    assert abs(np.linalg.norm(lab[K.DIPOLE_AU]) - np.linalg.norm(mu_ref)) * DEBYE_PER_AU < 0.005
    # finite-field isotropic polarizability, independent implementation
    f = 1e-3
    alpha = np.zeros((3, 3))
    for j in range(3):
        e = np.zeros(3)
        e[j] = f
        mu_p = independent_pyscf(numbers, positions, e)[1].dip_moment(unit="AU", verbose=0)
        mu_m = independent_pyscf(numbers, positions, -e)[1].dip_moment(unit="AU", verbose=0)
        alpha[:, j] = (mu_p - mu_m) / (2 * f)
    pol = np.asarray(lab[K.POLARIZABILITY_AU]).reshape(3, 3)
    np.testing.assert_allclose(pol, pol.T, atol=1e-8)
    assert np.trace(pol) / 3 == pytest.approx(np.trace(alpha) / 3, rel=0.005)


@pytest.mark.slow
def test_fitted_densities_reproduce_the_label_observables(formaldehyde_label):
    lab = formaldehyde_label
    numbers, positions = FORMALDEHYDE
    mol = gto.M(
        atom=list(zip(numbers, [tuple(p) for p in positions], strict=True)),
        basis="def2-svpd",
        unit="Angstrom",
    )
    auxmol = make_auxmol(mol, LevelOfTheory().fit_auxbasis)
    c = np.asarray(lab[K.DENSITY_COEFFS])
    assert c.shape == (auxmol.nao,)
    q = charge_integrals(auxmol)
    assert q @ c == pytest.approx(16.0, abs=1e-8)
    z = mol.atom_charges()
    origin = z @ mol.atom_coords() / z.sum()
    d = dipole_integrals(auxmol, origin)
    mu_fit = z @ (mol.atom_coords() - origin) - d @ c
    np.testing.assert_allclose(mu_fit, lab[K.DIPOLE_AU], atol=1e-6)
    resp = np.asarray(lab[K.RESPONSE_COEFFS]).reshape(3, auxmol.nao)
    np.testing.assert_allclose(resp @ q, 0.0, atol=1e-8)
    alpha_fit = -(d @ resp.T)  # alpha_ij = -∫ r_i d rho / d E_j
    np.testing.assert_allclose(
        alpha_fit, np.asarray(lab[K.POLARIZABILITY_AU]).reshape(3, 3), atol=1e-4
    )
    assert 0.0 < lab[K.FIT_ERROR_PERCENT] < 3.0
    assert np.asarray(lab[K.FORCES_HARTREE_PER_BOHR]).shape == (4, 3)
    assert lab[K.SCF_CONVERGED] and lab[K.SCF_STRATEGY] == "diis"
    assert lab[K.WALL_SECONDS] > 0


def test_failed_conformer_rows_pass_through_with_their_status():
    row = _row([], [], status="invalid_smiles", error="could not parse SMILES 'C1CC'")
    row[K.CONFORMER_KEY] = ""
    lab = label_conformer(row, LevelOfTheory())
    assert lab[K.STATUS] == "invalid_smiles"
    assert "C1CC" in lab[K.ERROR]
    assert lab[K.CONFORMER_KEY].startswith("record-")
    assert lab[K.LEVEL_HASH] == LevelOfTheory().hash


def test_open_shell_gets_a_status_not_a_crash():
    lab = label_conformer(_row([6, 1, 1, 1], _methyl(), multiplicity=2), LevelOfTheory())
    assert lab[K.STATUS] == K.STATUS_UNSUPPORTED_MULTIPLICITY
    assert "multiplicity 2" in lab[K.ERROR]


def test_unconverged_scf_is_flagged_with_cycles():
    level = LevelOfTheory(xc="hf", basis="sto-3g", max_cycle=1, conv_tol=1e-14)
    # stretched water: one SCF cycle per attempt cannot reach 1e-14
    lab = label_conformer(
        _row([8, 1, 1], [[0, 0, 0], [0, 0, 2.5], [0.9, 0.3, 0]]), level, with_fit_error=False
    )
    assert lab[K.STATUS] == K.STATUS_SCF_NOT_CONVERGED
    assert not lab[K.SCF_CONVERGED]
    assert "cycles" in lab[K.ERROR]
    assert lab[K.DENSITY_COEFFS] is None


def test_label_key_depends_on_level():
    assert label_key("abc", LevelOfTheory()) != label_key("abc", LevelOfTheory(grid_level=4))


def _methyl():
    return [[0, 0, 0], [1.08, 0, 0], [-0.54, 0.935, 0], [-0.54, -0.935, 0]]
