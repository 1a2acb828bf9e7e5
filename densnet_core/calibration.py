"""How well the ensemble spread tracks the real error against PySCF labels.

On held-out labelled conformers (the ensemble's validation molecules, which no member trained
on, and optionally other label stores such as ``data/benchmarks/heterocycles/labels``):

* errors: ``|mean_k |mu_k| - |mu_ref||`` (D) and ``|mean_k alpha_iso,k - alpha_iso,ref|``
  (bohr^3) — the magnitudes the ``dipole_debye`` / ``alpha_iso_au`` columns report;
* ``spearman_*``: Spearman rank correlation rho(sigma, |error|) over conformers (NaN for fewer
  than 3 points or a constant input);
* ``coverage2_*``: fraction of conformers with ``|error| <= 2 sigma`` (a Gaussian would give
  95.4 %);
* variance scale factor ``scale_*`` (optional, :func:`fit_scale`): the maximum-likelihood
  factor s of a Gaussian error model ``error ~ N(0, (s sigma)^2)``, i.e.
  ``s = sqrt(mean(error^2 / sigma^2))``, fitted on the validation molecules. The ``*_std``
  columns of predictions are ``s * sigma``; coverage of the scaled sigma is then reported on
  a *different* set (the fitted set would be optimistic);
* OOD thresholds (:func:`ood_thresholds`): the ``quantile`` (default 0.95) of the (scaled)
  validation spreads, per property — a molecule whose spread exceeds what 95 % of the
  validation conformers show is flagged.

Goals (issue 7): rho >= 0.4 for alpha_iso and >= 0.3 for the dipole; ±2 sigma covers >= 80 %.

:func:`calibration_plot` draws |error| against sigma (log-log, with the 2 sigma line) and the
coverage curve (observed fraction with |error| <= z sigma against the Gaussian expectation
erf(z / sqrt 2)), one row per property, with matplotlib's Agg backend.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from densnet_core.units import DEBYE_PER_AU

__all__ = [
    "GOALS",
    "PROPERTIES",
    "LabelledSet",
    "calibration_metrics",
    "calibration_plot",
    "coverage",
    "fit_scale",
    "format_report",
    "load_labelled_set",
    "ood_thresholds",
    "spearman",
]

#: The properties calibrated: |mu| (D) and alpha_iso (bohr^3), as in the prediction columns.
PROPERTIES: tuple[str, ...] = ("dipole_debye", "alpha_iso_au")
#: Goals of issue 7: minimum Spearman rho per property, minimum ±2 sigma coverage.
GOALS: dict[str, float] = {"spearman_alpha_iso_au": 0.4, "spearman_dipole_debye": 0.3}
COVERAGE_GOAL = 0.8


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of x and y (average ranks for ties); NaN if undefined.

    Parameters
    ----------
    x, y
        (n,) values; pairs with a non-finite entry are dropped.
    """
    from scipy.stats import rankdata

    x, y = np.asarray(x, float).reshape(-1), np.asarray(y, float).reshape(-1)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3:
        return math.nan
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def coverage(
    abs_error: Sequence[float] | np.ndarray, sigma: Sequence[float] | np.ndarray, z: float = 2.0
) -> float:
    """Fraction of points with ``|error| <= z * sigma`` (non-finite pairs dropped; NaN if none)."""
    e, s = np.abs(np.asarray(abs_error, float)), np.asarray(sigma, float)
    ok = np.isfinite(e) & np.isfinite(s)
    return float(np.mean(e[ok] <= z * s[ok])) if ok.any() else math.nan


def fit_scale(
    abs_error: Sequence[float] | np.ndarray,
    sigma: Sequence[float] | np.ndarray,
    *,
    floor: float = 1e-12,
) -> float:
    """Maximum-likelihood variance scale s: ``s^2 = mean(error^2 / sigma^2)`` (NaN if no data)."""
    e, s = np.asarray(abs_error, float), np.asarray(sigma, float)
    ok = np.isfinite(e) & np.isfinite(s)
    if not ok.any():
        return math.nan
    return float(np.sqrt(np.mean(e[ok] ** 2 / np.maximum(s[ok], floor) ** 2)))


def ood_thresholds(
    sigma_by_property: Mapping[str, np.ndarray], *, quantile: float = 0.95
) -> dict[str, float]:
    """``{"<prop>_std": quantile of the spreads}`` for every property (NaN without data)."""
    out = {}
    for prop, s in sigma_by_property.items():
        s = np.asarray(s, float)
        s = s[np.isfinite(s)]
        out[f"{prop}_std"] = float(np.quantile(s, quantile)) if s.size else math.nan
    return out


@dataclass
class LabelledSet:
    """Held-out labelled conformers, featurised for prediction.

    Attributes
    ----------
    inputs
        (S,) :class:`~densnet_core.graph.MoleculeInput`.
    mol_ids, smiles, names
        (S,) identity.
    numbers
        (S,) atomic numbers, (N_s,) each.
    dipole_au
        (S, 3) label dipoles, e·bohr.
    polarizability_au
        (S, 3, 3) label polarizabilities, bohr^3.
    skipped
        Rows left out, with the reason (e.g. an element the model does not support).
    """

    inputs: list[Any]
    mol_ids: list[str]
    smiles: list[str]
    names: list[str]
    numbers: list[list[int]]
    dipole_au: np.ndarray
    polarizability_au: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def dipole_debye(self) -> np.ndarray:
        """(S,) |mu_ref|, D."""
        return np.linalg.norm(self.dipole_au, axis=1) * DEBYE_PER_AU

    @property
    def alpha_iso_au(self) -> np.ndarray:
        """(S,) tr(alpha_ref)/3, bohr^3."""
        return np.trace(self.polarizability_au, axis1=1, axis2=2) / 3.0

    def __len__(self) -> int:
        return len(self.inputs)


def load_labelled_set(
    labels_dir: str | os.PathLike[str],
    *,
    level: Any,
    mol_ids: Sequence[str] | None = None,
    exclude_mol_ids: Sequence[str] = (),
    elements: Sequence[int] | None = None,
) -> LabelledSet:
    """Featurise the ``status == "ok"`` labels of ``level`` in a label store.

    Parameters
    ----------
    labels_dir
        Label store.
    level
        :class:`~densnet_core.level.LevelOfTheory` of the ensemble.
    mol_ids
        Keep only these molecules (None = all).
    exclude_mol_ids
        Leave these molecules out (e.g. the training molecules when using another store).
    elements
        Atomic numbers the model supports; rows with others are skipped (listed in
        ``skipped``).
    """
    from densnet_core import keys as K
    from densnet_core.dataset import load_label_rows
    from densnet_core.featurize import get_featurizer
    from densnet_core.units import BOHR_PER_ANGSTROM

    rows = load_label_rows(labels_dir, level=level)
    if mol_ids is not None:
        rows = rows[rows[K.MOL_ID].isin(set(mol_ids))]
    if exclude_mol_ids:
        rows = rows[~rows[K.MOL_ID].isin(set(exclude_mol_ids))]
    feat = get_featurizer(level)
    allowed = None if elements is None else {int(z) for z in elements}
    out = LabelledSet([], [], [], [], [], np.zeros((0, 3)), np.zeros((0, 3, 3)))
    dip, pol = [], []
    for r in rows.to_dict("records"):
        numbers = [int(z) for z in r[K.NUMBERS]]
        if allowed is not None and not set(numbers) <= allowed:
            out.skipped.append((str(r[K.MOL_ID]), "element not supported by the model"))
            continue
        pos = np.stack([np.asarray(p, float) for p in r[K.POSITIONS_ANGSTROM]]) * BOHR_PER_ANGSTROM
        out.inputs.append(feat(numbers, pos, int(r[K.CHARGE])))
        out.mol_ids.append(str(r[K.MOL_ID]))
        out.smiles.append(str(r[K.SMILES]))
        out.names.append(str(r[K.NAME]))
        out.numbers.append(numbers)
        dip.append(np.asarray(r[K.DIPOLE_AU], float).reshape(3))
        pol.append(np.asarray(r[K.POLARIZABILITY_AU], float).reshape(3, 3))
    if dip:
        out.dipole_au, out.polarizability_au = np.stack(dip), np.stack(pol)
    return out


def calibration_metrics(
    *,
    pred_dipole_debye: np.ndarray,
    std_dipole_debye: np.ndarray,
    pred_alpha_iso_au: np.ndarray,
    std_alpha_iso_au: np.ndarray,
    ref_dipole_debye: np.ndarray,
    ref_alpha_iso_au: np.ndarray,
) -> dict[str, float]:
    """Spearman rho, ±2 sigma coverage, MAE and mean sigma per property.

    Parameters
    ----------
    pred_dipole_debye, std_dipole_debye, ref_dipole_debye
        (S,) ensemble mean |mu|, its spread and the label |mu|, D.
    pred_alpha_iso_au, std_alpha_iso_au, ref_alpha_iso_au
        (S,) the same for alpha_iso, bohr^3.

    Returns
    -------
    dict
        ``n``, and per property p in :data:`PROPERTIES`: ``spearman_p``, ``coverage2_p``,
        ``mae_p``, ``mean_std_p``.
    """
    out: dict[str, float] = {"n": float(np.asarray(pred_dipole_debye).size)}
    for prop, pred, std, ref in (
        ("dipole_debye", pred_dipole_debye, std_dipole_debye, ref_dipole_debye),
        ("alpha_iso_au", pred_alpha_iso_au, std_alpha_iso_au, ref_alpha_iso_au),
    ):
        err = np.abs(np.asarray(pred, float) - np.asarray(ref, float))
        std = np.asarray(std, float)
        out[f"spearman_{prop}"] = spearman(std, err)
        out[f"coverage2_{prop}"] = coverage(err, std, 2.0)
        out[f"mae_{prop}"] = float(np.nanmean(err)) if err.size else math.nan
        out[f"mean_std_{prop}"] = float(np.nanmean(std)) if std.size else math.nan
    return out


def format_report(title: str, metrics: Mapping[str, float]) -> str:
    """A few lines: the figures and whether each goal of issue 7 is met."""

    def mark(ok: bool | None) -> str:
        return "n/a" if ok is None else ("OK" if ok else "below goal")

    lines = [f"{title}: {int(metrics.get('n', 0))} conformers"]
    for prop, unit in (("alpha_iso_au", "a0^3"), ("dipole_debye", "D")):
        rho = metrics.get(f"spearman_{prop}", math.nan)
        cov = metrics.get(f"coverage2_{prop}", math.nan)
        goal = GOALS[f"spearman_{prop}"]
        lines.append(
            f"  {prop:<13} MAE {metrics.get(f'mae_{prop}', math.nan):8.4g} {unit:<4}  "
            f"mean std {metrics.get(f'mean_std_{prop}', math.nan):8.4g}  "
            f"Spearman rho {rho:6.3f} (goal >= {goal}: "
            f"{mark(None if math.isnan(rho) else rho >= goal)})  "
            f"±2σ coverage {100 * cov:5.1f} % (goal >= {100 * COVERAGE_GOAL:.0f} %: "
            f"{mark(None if math.isnan(cov) else cov >= COVERAGE_GOAL)})"
        )
    return "\n".join(lines)


def calibration_plot(
    path: str | os.PathLike[str],
    sets: Mapping[str, Mapping[str, np.ndarray]],
    *,
    title: str = "",
) -> Path:
    """Write the calibration figure (PNG).

    Parameters
    ----------
    path
        Output PNG.
    sets
        ``{set name: {"err_<prop>": (S,) |error|, "std_<prop>": (S,) sigma}}`` for the
        properties of :data:`PROPERTIES` (the same units as the columns).
    title
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    from scipy.special import erf

    from densnet_core.store import atomic_file

    units = {"dipole_debye": "D", "alpha_iso_au": "a0³"}
    fig, axes = plt.subplots(len(PROPERTIES), 2, figsize=(10, 4.2 * len(PROPERTIES)))
    z = np.linspace(0.0, 4.0, 81)
    for row, prop in enumerate(PROPERTIES):
        ax_s, ax_c = axes[row]
        lo, hi = math.inf, 0.0
        for name, data in sets.items():
            e = np.abs(np.asarray(data[f"err_{prop}"], float))
            s = np.asarray(data[f"std_{prop}"], float)
            ok = np.isfinite(e) & np.isfinite(s) & (s > 0)
            if not ok.any():
                continue
            e_plot = np.maximum(e[ok], 1e-4 * max(float(e[ok].max()), 1e-12))
            ax_s.scatter(s[ok], e_plot, s=14, alpha=0.7, label=f"{name} (ρ={spearman(s, e):.2f})")
            lo, hi = min(lo, float(s[ok].min())), max(hi, float(s[ok].max()))
            obs = [np.mean(e[ok] <= zz * s[ok]) for zz in z]
            ax_c.plot(z, obs, label=f"{name} (±2σ: {100 * coverage(e, s):.0f} %)")
        if hi > 0:
            lo, hi = min(lo, hi / 3.0), max(hi, lo * 3.0)  # at least a factor 9 in view
            xs = np.geomspace(lo / 1.5, hi * 1.5, 20)
            ax_s.plot(xs, 2 * xs, "k--", lw=1, label="|error| = 2σ")
            ax_s.set_xscale("log")
            ax_s.set_yscale("log")
            ax_s.set_xlim(xs[0], xs[-1])
            for axis in (ax_s.xaxis, ax_s.yaxis):
                axis.set_minor_formatter(NullFormatter())
        ax_s.set_xlabel(f"ensemble σ of {prop} ({units[prop]})")
        ax_s.set_ylabel(f"|error| vs PySCF ({units[prop]})")
        ax_s.legend(fontsize=8)
        ax_c.plot(z, erf(z / np.sqrt(2.0)), "k--", lw=1, label="Gaussian")
        ax_c.axvline(2.0, color="grey", lw=0.5)
        ax_c.set_xlabel("z (interval ±zσ)")
        ax_c.set_ylabel("fraction of references inside")
        ax_c.set_ylim(0, 1.02)
        ax_c.legend(fontsize=8, loc="lower right")
        ax_c.set_title(prop, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return path
