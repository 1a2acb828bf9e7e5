"""Per-conformer metrics (densnet_core.metrics) agree with train.evaluate and fitting's floor.

Labels: the tiny HF/STO-3G store (4 molecules x 2 conformers, ~10 s).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densnet_core.basis import charge_integrals, make_auxmol, to_pyscf
from densnet_core.dataset import load_label_rows, make_samples
from densnet_core.fitting import dipole_from_coeffs, fit_density, fit_error_percent
from densnet_core.level import LevelOfTheory
from densnet_core.metrics import (
    OBSERVABLE_METRICS,
    density_nmae_pct,
    density_nmae_vs_scf_pct,
    mean_predictions,
    observable_summary,
    predict_samples,
)
from densnet_core.model import DensityModel
from densnet_core.qm import build_mol, run_scf
from densnet_core.train import evaluate
from densnet_core.units import BOHR_PER_ANGSTROM, DEBYE_PER_AU
from tests.core._tiny_labels import TINY_LEVEL, make_tiny_labels


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    labels = make_tiny_labels(tmp_path_factory.mktemp("labels"), n_conformers=2)
    return make_samples(load_label_rows(labels, level=TINY_LEVEL), level=TINY_LEVEL)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)  # heads not zeroed: the prediction differs from the prior
    return DensityModel.for_aux_basis(TINY_LEVEL.fit_auxbasis, [1, 6, 7, 8], preset="small")


def _auxmol(sample):
    mol = build_mol(
        sample.inputs.numbers.tolist(),
        sample.inputs.positions_bohr,
        charge=round(sample.inputs.charge),
        multiplicity=sample.multiplicity,
        basis=TINY_LEVEL.basis,
    )
    return mol, make_auxmol(mol, TINY_LEVEL.fit_auxbasis)


@pytest.mark.slow
def test_predictions_reproduce_evaluate(samples, model):
    """Per-conformer predictions, summarised, give train.evaluate's model and prior metrics."""
    preds = predict_samples(model, samples, batch_size=3)
    assert len(preds) == len(samples)
    ref = evaluate(
        model, samples, level=TINY_LEVEL, batch_size=5, grid_samples=len(samples), grid_level=2
    )
    dip_ref = np.stack([s.dipole_au for s in samples])
    alpha_ref = np.stack([s.polarizability_au for s in samples])
    got_model = observable_summary(
        np.stack([p.model_dipole_au for p in preds]),
        dip_ref,
        np.stack([p.model_alpha_au for p in preds]),
        alpha_ref,
    )
    got_prior = observable_summary(
        np.stack([p.prior_dipole_au for p in preds]), dip_ref, None, alpha_ref
    )
    for key in OBSERVABLE_METRICS:
        assert got_model[key] == pytest.approx(ref["model"][key], rel=1e-5, abs=1e-7), key
        assert got_prior[key] == pytest.approx(ref["prior"][key], rel=1e-5, abs=1e-7), key
    assert got_prior["alpha_iso_mape_pct"] == pytest.approx(100.0)
    assert got_model["n_dipole"] == got_model["n_alpha"] == len(samples)

    nm_model, nm_prior = [], []
    for s, p in zip(samples, preds, strict=True):
        _, auxmol = _auxmol(s)
        label = to_pyscf(s.density, s.inputs.numbers.tolist(), TINY_LEVEL.fit_auxbasis)
        # the prior is projected to the electron count, and it is in PySCF order
        assert charge_integrals(auxmol) @ p.prior_coeffs == pytest.approx(s.n_electrons)
        nm = density_nmae_pct(
            auxmol,
            np.stack([p.model_coeffs, p.prior_coeffs]),
            label,
            n_electrons=s.n_electrons,
            grid_level=2,
        )
        nm_model.append(nm[0])
        nm_prior.append(nm[1])
    assert np.mean(nm_model) == pytest.approx(ref["model"]["density_nmae_pct"], rel=1e-5)
    assert np.mean(nm_prior) == pytest.approx(ref["prior"]["density_nmae_pct"], rel=1e-5)
    assert np.mean(nm_prior) > 1.0  # a free-atom superposition is visibly off


@pytest.mark.slow
def test_nmae_against_scf_is_the_fitting_floor():
    level = LevelOfTheory(xc="hf", basis="sto-3g")
    water_angstrom = [[0.0, 0.0, 0.117], [0.0, 0.757, -0.467], [0.0, -0.757, -0.467]]
    pos = np.array(water_angstrom) * BOHR_PER_ANGSTROM
    mol = build_mol([8, 1, 1], pos, basis=level.basis)
    mf = run_scf(mol, level).mf
    dm = mf.make_rdm1()
    auxmol = make_auxmol(mol, level.fit_auxbasis)
    fit = fit_density(mol, dm, auxmol)
    floor = fit_error_percent(mol, dm, auxmol, fit.coeffs, grid_level=2)
    got = density_nmae_vs_scf_pct(
        mol, dm, auxmol, np.stack([fit.coeffs, fit.unconstrained_coeffs]), grid_level=2
    )
    assert got.shape == (2,)
    assert got[0] == pytest.approx(floor, rel=1e-10)
    assert 0.1 < got[0] < 5.0 and 0.1 < got[1] < 5.0

    # against a fitted reference: zero for itself, ~10 % for a density scaled by 1.1
    same = density_nmae_pct(auxmol, fit.coeffs, fit.coeffs, n_electrons=10.0, grid_level=2)
    assert same.shape == (1,) and same[0] == 0.0
    scaled = density_nmae_pct(auxmol, 1.1 * fit.coeffs, fit.coeffs, n_electrons=10.0)
    assert 9.99 < scaled[0] < 10.1  # 10 % x ∫|rho| / N_e (the fit is nearly non-negative)
    with pytest.raises(ValueError, match="!= M"):
        density_nmae_pct(auxmol, fit.coeffs[:-1], fit.coeffs, n_electrons=10.0)


def test_observable_summary_by_hand():
    dip_ref = np.zeros((3, 3))
    dip_pred = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [np.nan, np.nan, np.nan]])
    alpha_ref = np.stack([np.diag([10.0, 10.0, 10.0]), np.diag([10.0, 20.0, 30.0]), np.eye(3)])
    alpha_pred = np.stack([np.diag([11.0, 11.0, 11.0]), np.diag([20.0, 20.0, 20.0]), np.eye(3)])
    alpha_pred[2] = np.nan  # a failed method for the third conformer
    out = observable_summary(dip_pred, dip_ref, alpha_pred, alpha_ref)
    assert out["dipole_mae_debye"] == pytest.approx(1.5 * DEBYE_PER_AU)
    assert out["alpha_iso_mae_au"] == pytest.approx(0.5)  # |11 - 10| and |20 - 20|
    assert out["alpha_iso_mape_pct"] == pytest.approx(5.0)
    assert out["alpha_aniso_mae_au"] == pytest.approx(0.5 * math.sqrt(300.0))  # 0 and sqrt(300)
    assert out["n_dipole"] == 2 and out["n_alpha"] == 2
    none = observable_summary(dip_pred, dip_ref, None, alpha_ref)
    assert none["alpha_iso_mape_pct"] == pytest.approx(100.0)


def test_dipole_magnitude_error_ignores_the_direction():
    """A dipole of the right length pointing elsewhere has a vector error but no |mu| error."""
    ref = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    pred = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.5]])  # rotated 90 degrees; 50 % too long
    alpha = np.stack([np.eye(3), np.eye(3)])
    out = observable_summary(pred, ref, alpha, alpha)
    assert out["dipole_mae_debye"] == pytest.approx(0.5 * (math.sqrt(2.0) + 0.5) * DEBYE_PER_AU)
    assert out["dipole_norm_mae_debye"] == pytest.approx(0.25 * DEBYE_PER_AU)
    assert out["dipole_norm_mae_debye"] <= out["dipole_mae_debye"]


@pytest.mark.slow
def test_ensemble_mean_is_the_observable_of_the_mean_density(samples, model):
    """Averaging two models' dipoles equals the dipole integral of their averaged density."""
    torch.manual_seed(11)
    other = DensityModel.for_aux_basis(TINY_LEVEL.fit_auxbasis, [1, 6, 7, 8], preset="small")
    a = predict_samples(model, samples, batch_size=4)
    b = predict_samples(other, samples, batch_size=4)
    mean = mean_predictions([a, b])
    assert len(mean) == len(samples)
    assert mean_predictions([a])[0].model_dipole_au == pytest.approx(a[0].model_dipole_au)
    spread = [
        np.linalg.norm(p.model_dipole_au - q.model_dipole_au) for p, q in zip(a, b, strict=True)
    ]
    assert max(spread) > 1e-3  # two different models, so the mean is a real average
    for s, pa, pb, m in zip(samples, a, b, mean, strict=True):
        mol, auxmol = _auxmol(s)
        centre = mol.atom_charges() @ mol.atom_coords() / mol.atom_charges().sum()
        from_density = dipole_from_coeffs(auxmol, m.model_coeffs, centre)
        assert from_density == pytest.approx(m.model_dipole_au, abs=2e-4)
        assert m.model_coeffs == pytest.approx((pa.model_coeffs + pb.model_coeffs) / 2)
        assert m.model_alpha_au == pytest.approx((pa.model_alpha_au + pb.model_alpha_au) / 2)
        assert m.prior_coeffs is pa.prior_coeffs
    with pytest.raises(ValueError, match="different numbers"):
        mean_predictions([a, b[:-1]])
