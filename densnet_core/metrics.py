"""Per-conformer accuracy metrics: predictions of a model and of the SAD prior, real-space density
errors against a fitted label or the exact SCF density, and observable error summaries.

:func:`densnet_core.train.evaluate` reports means over a validation split. The accuracy
benchmark (``benchmarks/accuracy.py``) needs the same numbers per conformer, side by side with
other methods (GFN2-xTB) and against the exact SCF density, which the labels do not keep (only
its fit). This module provides the pieces; the observable errors themselves are those of
:func:`densnet_core.losses.observable_errors`, so every number means the same as in the model
card.

Definitions
-----------
* density NMAE (%): ``100 · ∫|rho_x(r) - rho_ref(r)| dr / N_e`` on a PySCF molecular grid, with
  ``rho_ref`` either the label fit (:func:`density_nmae_pct`) or the SCF density
  ``sum_ij D_ij phi_i phi_j`` (:func:`density_nmae_vs_scf_pct`; N_e = Tr(D S)). The label fit
  itself has an NMAE against the SCF density (its fitting floor, ``fit_error_percent``), which
  bounds what a model that learns the fit can reach against the SCF density.
* dipole error: ``|mu_pred - mu_ref|`` (vector norm), debye; also the magnitude error
  ``||mu_pred| - |mu_ref||`` (what a ``dipole_debye`` column gets wrong), which is never larger;
* ``alpha_iso``: tr(alpha)/3, bohr^3; MAPE relative to the reference ``alpha_iso``;
* anisotropy error: ``|Δα_pred - Δα_ref|`` with the invariant of
  :func:`densnet_core.losses.alpha_anisotropy`, bohr^3.

Units: coefficients in PySCF aux-AO order (e per normalised aux function), positions bohr,
dipoles e·bohr, polarizabilities bohr^3, densities e/bohr^3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pyscf import gto

from densnet_core.basis import to_pyscf
from densnet_core.dataset import Sample
from densnet_core.grids import fitted_density_on_grid, molecular_grid, scf_density_on_grid
from densnet_core.losses import make_batch, nan_mean, observable_errors, prior_prediction

__all__ = [
    "OBSERVABLE_METRICS",
    "SamplePrediction",
    "density_nmae_pct",
    "density_nmae_vs_scf_pct",
    "mean_predictions",
    "observable_summary",
    "predict_samples",
]

#: Keys of :func:`observable_summary` (the observable entries of ``losses.METRIC_NAMES``).
OBSERVABLE_METRICS: tuple[str, ...] = (
    "dipole_mae_debye",
    "alpha_iso_mae_au",
    "alpha_iso_mape_pct",
    "alpha_aniso_mae_au",
)

Grid = tuple[np.ndarray, np.ndarray]


@dataclass
class SamplePrediction:
    """A model's and the SAD prior's prediction for one labelled conformer.

    Attributes
    ----------
    model_coeffs
        (M,) predicted density coefficients, PySCF aux-AO order, e.
    prior_coeffs
        (M,) SAD prior coefficients projected to the electron count, PySCF order, e.
    model_dipole_au
        (3,) e·bohr, about the centre of nuclear charge.
    prior_dipole_au
        (3,) e·bohr.
    model_alpha_au
        (3, 3) bohr^3, or None for a model without response heads.
    """

    model_coeffs: np.ndarray
    prior_coeffs: np.ndarray
    model_dipole_au: np.ndarray
    prior_dipole_au: np.ndarray
    model_alpha_au: np.ndarray | None


@torch.no_grad()
def predict_samples(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    *,
    auxbasis: str | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> list[SamplePrediction]:
    """Run a density model and the SAD prior on labelled conformers, one result per sample.

    The same batches and prior as :func:`densnet_core.train.evaluate`
    (:func:`densnet_core.losses.make_batch`, :func:`densnet_core.losses.prior_prediction`).

    Parameters
    ----------
    model
        :class:`~densnet_core.model.DensityModel` (evaluated in eval mode, float32).
    samples
        Conformers (:func:`densnet_core.dataset.make_samples`).
    auxbasis
        The aux basis of the coefficients (for the e3nn -> PySCF reordering); None = the
        model's ``config["aux_basis"]``.
    batch_size, device
        Evaluation batches.

    Returns
    -------
    list[SamplePrediction]
        In the order of ``samples``; coefficients converted to PySCF order (float64).
    """
    aux = auxbasis if auxbasis is not None else _aux_of(model)
    was_training = model.training
    model.eval()
    out: list[SamplePrediction] = []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = list(samples[start : start + batch_size])
            batch = make_batch(model, chunk, device=device)
            pred = model(batch)
            prior = prior_prediction(batch)
            c_model = pred["density_coeffs"].double().cpu().numpy()
            c_prior = prior["density_coeffs"].double().cpu().numpy()
            mu_model = pred["dipole_au"].double().cpu().numpy()
            mu_prior = prior["dipole_au"].double().cpu().numpy()
            alpha = pred.get("polarizability_au")
            alpha = None if alpha is None else alpha.double().cpu().numpy()
            for k, s in enumerate(chunk):
                a, b = batch["coef_slices"][k]
                numbers = s.inputs.numbers.tolist()
                out.append(
                    SamplePrediction(
                        model_coeffs=to_pyscf(c_model[a:b], numbers, aux),
                        prior_coeffs=to_pyscf(c_prior[a:b], numbers, aux),
                        model_dipole_au=mu_model[k],
                        prior_dipole_au=mu_prior[k],
                        model_alpha_au=None if alpha is None else alpha[k],
                    )
                )
    finally:
        model.train(was_training)
    return out


def mean_predictions(per_member: Sequence[Sequence[SamplePrediction]]) -> list[SamplePrediction]:
    """Ensemble-mean predictions: the average density of K models, and its observables.

    The dipole and the polarizability are linear in the density coefficients (the dipole is a
    moment of the density, alpha the symmetrised dipole moment of the response), so the mean
    of the members' dipoles and polarizabilities is exactly the observable of the mean density.

    Parameters
    ----------
    per_member
        K lists of :class:`SamplePrediction` (from :func:`predict_samples`), each over the
        same samples in the same order.

    Returns
    -------
    list[SamplePrediction]
        One per sample: coefficients (M,), dipole (3,) e·bohr and alpha (3, 3) bohr^3 averaged
        over the K members (alpha None if any member has no response heads); the prior is
        the first member's (all members share it).
    """
    if not per_member:
        raise ValueError("mean_predictions needs at least one member")
    n = {len(p) for p in per_member}
    if len(n) != 1:
        raise ValueError(f"members predicted different numbers of samples: {sorted(n)}")
    out = []
    for preds in zip(*per_member, strict=True):
        alphas = [p.model_alpha_au for p in preds]
        out.append(
            SamplePrediction(
                model_coeffs=np.mean([p.model_coeffs for p in preds], axis=0),
                prior_coeffs=preds[0].prior_coeffs,
                model_dipole_au=np.mean([p.model_dipole_au for p in preds], axis=0),
                prior_dipole_au=preds[0].prior_dipole_au,
                model_alpha_au=None if any(a is None for a in alphas) else np.mean(alphas, axis=0),
            )
        )
    return out


def _aux_of(model: torch.nn.Module) -> str:
    aux = getattr(model, "config", {}).get("aux_basis")
    if not aux:
        raise ValueError("the model's config does not name its aux basis")
    return str(aux)


def _grid(mol: gto.Mole, grid_level: int, grid: Grid | None) -> Grid:
    return molecular_grid(mol, grid_level) if grid is None else grid


def density_nmae_pct(
    auxmol: gto.Mole,
    coeffs: np.ndarray,
    ref_coeffs: np.ndarray,
    *,
    n_electrons: float,
    grid_level: int = 3,
    grid: Grid | None = None,
) -> np.ndarray:
    """Real-space error of fitted-basis densities against a reference in the same basis.

    ``100 · ∫|rho_k - rho_ref| dr / N_e`` for every row ``k`` of ``coeffs``.

    Parameters
    ----------
    auxmol
        Aux-basis molecule (geometry in bohr).
    coeffs
        (M,) or (k, M) coefficients, PySCF aux-AO order.
    ref_coeffs
        (M,) reference coefficients (e.g. the label fit), PySCF order.
    n_electrons
        N_e of the normalisation, e.
    grid_level
        PySCF grid level (ignored when ``grid`` is given).
    grid
        Optional precomputed ``(coords (G, 3) bohr, weights (G,) bohr^3)``.

    Returns
    -------
    numpy.ndarray
        (k,) percent (shape (1,) for a single coefficient vector).
    """
    c = np.atleast_2d(np.asarray(coeffs, dtype=np.float64))
    ref = np.asarray(ref_coeffs, dtype=np.float64).reshape(1, -1)
    if c.shape[1] != ref.shape[1] or ref.shape[1] != auxmol.nao:
        raise ValueError(
            f"coefficient length {c.shape[1]} / reference {ref.shape[1]} != M = {auxmol.nao}"
        )
    coords, weights = _grid(auxmol, grid_level, grid)
    rho = fitted_density_on_grid(auxmol, np.concatenate([c, ref]), coords)
    return 100.0 * (np.abs(rho[:-1] - rho[-1]) @ weights) / float(n_electrons)


def density_nmae_vs_scf_pct(
    mol: gto.Mole,
    dm: np.ndarray,
    auxmol: gto.Mole,
    coeffs: np.ndarray,
    *,
    grid_level: int = 3,
    grid: Grid | None = None,
) -> np.ndarray:
    """Real-space error of fitted-basis densities against the exact SCF density.

    ``100 · ∫|rho_k - rho_SCF| dr / N_e`` with ``rho_SCF = sum_ij D_ij phi_i phi_j`` and
    ``N_e = Tr(D S)``; for the label fit this is
    :func:`densnet_core.fitting.fit_error_percent` (the fitting floor).

    Parameters
    ----------
    mol
        Orbital-basis molecule of the SCF.
    dm
        (nao, nao) spin-summed AO density matrix (or (2, nao, nao), summed here).
    auxmol
        Aux-basis molecule (same geometry).
    coeffs
        (M,) or (k, M) coefficients, PySCF aux-AO order.
    grid_level
        PySCF grid level (ignored when ``grid`` is given).
    grid
        Optional precomputed ``(coords, weights)``.

    Returns
    -------
    numpy.ndarray
        (k,) percent.
    """
    dm = np.asarray(dm, dtype=np.float64)
    if dm.ndim == 3:
        dm = dm[0] + dm[1]
    c = np.atleast_2d(np.asarray(coeffs, dtype=np.float64))
    if c.shape[1] != auxmol.nao:
        raise ValueError(f"coefficient length {c.shape[1]} != M = {auxmol.nao}")
    coords, weights = _grid(mol, grid_level, grid)
    rho_scf = scf_density_on_grid(mol, dm, coords)
    rho = fitted_density_on_grid(auxmol, c, coords)
    n_e = float(np.einsum("ij,ji->", mol.intor_symmetric("int1e_ovlp"), dm))
    return 100.0 * (np.abs(rho - rho_scf[None]) @ weights) / n_e


def observable_summary(
    dipole_pred: np.ndarray,
    dipole_ref: np.ndarray,
    alpha_pred: np.ndarray | None,
    alpha_ref: np.ndarray,
) -> dict[str, float]:
    """Mean observable errors over conformers (NaN predictions are left out of the means).

    Parameters
    ----------
    dipole_pred, dipole_ref
        (B, 3) e·bohr.
    alpha_pred
        (B, 3, 3) bohr^3 (NaN rows allowed: a method that failed for that conformer), or None
        for "no polarizability" — then alpha = 0, as for the SAD prior in the model card.
    alpha_ref
        (B, 3, 3) bohr^3.

    Returns
    -------
    dict
        :data:`OBSERVABLE_METRICS` (D, bohr^3, %, bohr^3) plus ``dipole_norm_mae_debye``
        (mean ||mu| - |mu_ref||, D: the error of the reported magnitude, which ignores the
        direction) and ``n_dipole`` and ``n_alpha``, the numbers of conformers that entered
        the means.
    """
    errs = observable_errors(
        np.asarray(dipole_pred, dtype=np.float64),
        np.asarray(dipole_ref, dtype=np.float64),
        None if alpha_pred is None else np.asarray(alpha_pred, dtype=np.float64),
        np.asarray(alpha_ref, dtype=np.float64),
    )
    out = {
        "dipole_mae_debye": nan_mean(errs["dipole_err_debye"]),
        "dipole_norm_mae_debye": nan_mean(errs["dipole_norm_err_debye"]),
        "alpha_iso_mae_au": nan_mean(errs["alpha_iso_abs"]),
        "alpha_iso_mape_pct": nan_mean(errs["alpha_iso_pct"]),
        "alpha_aniso_mae_au": nan_mean(errs["alpha_aniso_abs"]),
    }
    out["n_dipole"] = float(np.isfinite(errs["dipole_err_debye"]).sum())
    out["n_alpha"] = float(np.isfinite(errs["alpha_iso_abs"]).sum())
    return out
