"""Accuracy of the density model against PySCF labels, next to the SAD prior and GFN2-xTB.

Two evaluation sets, both labelled by the project's own label flow (B3LYP/def2-SVPD, CPKS
polarizability, density fitted into the model's aux basis):

(a) **held out**: conformers of the labelled seed set (``data/seed/labels``) whose molecule's
    InChIKey is not in the model card's ``training_inchikeys`` — the validation molecules of
    the training split plus any molecule labelled after the model was trained;
(b) **heterocycles**: ``data/benchmarks/heterocycles.smi``, drug-like heterocycles that are not
    in ``data/seed/seed_set.csv`` (checked by InChIKey here, and against the card), labelled
    into ``data/benchmarks/heterocycles/labels``::

        densnet conformers data/benchmarks/heterocycles.smi \\
            -o data/benchmarks/heterocycles_conformers.parquet --n-conformers 1
        densnet label data/benchmarks/heterocycles_conformers.parquet \\
            -o data/benchmarks/heterocycles/labels

For the model, the SAD prior alone (free-atom densities projected to the electron count, no
response, so alpha = 0 and its MAPE is 100 % by construction) and GFN2-xTB (tblite: dipole, and
polarizability by finite field, :mod:`densnet_core.xtb`) it prints

* density NMAE (%) = 100 · ∫|rho - rho_ref| dr / N_e on a PySCF grid, against the label fit
  and — where computed (``--exact-scf``) — against the exact SCF density, which the labels do
  not keep: the SCF is recomputed (same level, same geometry, checked against the label's
  dipole) and its density matrix cached. Model and prior only (xTB has no comparable
  all-electron density). The label fit's own error against the SCF (the fitting floor) is
  shown under the table;
* dipole MAE (D): mean |mu - mu_ref| (vector error; the goals are on this one), and the
  magnitude error mean ||mu| - |mu_ref|| (D), the error of a predictions table's
  ``dipole_debye`` column, which ignores the direction;
* isotropic polarizability alpha_iso = tr(alpha)/3: MAE (bohr^3) and MAPE (%);
* anisotropy error: mean |Δα - Δα_ref| (bohr^3), Δα the anisotropy invariant.

Under the heterocycles it lists those with a training molecule one ring substituent away
(added, removed or replaced at the same ring atom, :mod:`densnet_core.near_neighbours`; the
training molecules' SMILES come from ``data/seed/labels`` and
``data/seed/labels-benchmark-neighbours``) and the dipole MAE of model and GFN2-xTB over the
others.

Means are over conformers. Goals (issue 4): held out: dipole MAE <= 0.10 D, alpha_iso MAPE
<= 2 %; heterocycles: dipole MAE <= 0.25 D, MAPE <= 4 %, and better than GFN2-xTB on both.

Usage::

    python -m benchmarks.accuracy [--model DIR] [--exact-scf heterocycles|all|none]
        [--grid-level 3] [--per-molecule] [--json results.json]

``--model`` may name an ensemble directory (``ensemble.json``): "model" is then the ensemble
mean (the averaged density, whose dipole and polarizability are the members' means), and
"held out" means held out of every member.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from densnet_core import keys as K
from densnet_core.basis import make_auxmol, to_pyscf
from densnet_core.dataset import (
    NoUsableLabelsError,
    Sample,
    is_inchikey,
    load_label_rows,
    make_samples,
)
from densnet_core.fitting import electronic_moment, nuclear_moment
from densnet_core.grids import molecular_grid
from densnet_core.inputs import read_records
from densnet_core.level import LevelOfTheory
from densnet_core.losses import nan_mean
from densnet_core.metrics import (
    density_nmae_pct,
    density_nmae_vs_scf_pct,
    mean_predictions,
    observable_summary,
    predict_samples,
)
from densnet_core.units import DEBYE_PER_AU

log = logging.getLogger("benchmarks.accuracy")

ROOT = Path(__file__).resolve().parents[1]
SEED_LABELS = ROOT / "data" / "seed" / "labels"
#: labels of scaffolds taken out of a seed round (one substituent from a benchmark heterocycle);
#: not trained on by new models, but earlier models' cards may list them
SEED_LABELS_APART = ROOT / "data" / "seed" / "labels-benchmark-neighbours"
SEED_SET = ROOT / "data" / "seed" / "seed_set.csv"
HETEROCYCLES_SMI = ROOT / "data" / "benchmarks" / "heterocycles.smi"
HETEROCYCLE_LABELS = ROOT / "data" / "benchmarks" / "heterocycles" / "labels"

METHODS = (("model", "DenSNet model"), ("prior", "SAD prior"), ("xtb", "GFN2-xTB"))
COLUMNS = (
    ("nmae_fit_pct", "NMAE% fit", "{:.2f}"),
    ("nmae_scf_pct", "NMAE% SCF", "{:.2f}"),
    ("dipole_mae_debye", "μ MAE D", "{:.3f}"),
    ("dipole_norm_mae_debye", "|μ| MAE D", "{:.3f}"),
    ("alpha_iso_mae_au", "α_iso MAE au", "{:.2f}"),
    ("alpha_iso_mape_pct", "α_iso MAPE%", "{:.2f}"),
    ("alpha_aniso_mae_au", "Δα MAE au", "{:.2f}"),
)
GOALS: dict[str, dict[str, float]] = {
    "held_out": {"dipole_mae_debye": 0.10, "alpha_iso_mape_pct": 2.0},
    "heterocycles": {"dipole_mae_debye": 0.25, "alpha_iso_mape_pct": 4.0},
}
BEAT_XTB = {"held_out": False, "heterocycles": True}
#: Largest allowed |mu_SCF - mu_label| of a recomputed SCF, e·bohr.
SCF_DIPOLE_TOL_AU = 1e-4


@dataclass
class EvalSet:
    """One evaluation set: its label rows and what was left out, and why."""

    key: str
    title: str
    rows: pd.DataFrame | None
    notes: list[str] = field(default_factory=list)
    #: molecule name -> training molecules one substituent edit away ("name (relation)")
    neighbours: dict[str, list[str]] = field(default_factory=dict)


# --- the evaluation sets ----------------------------------------------------------------------


def _inchikey(smiles: str) -> str | None:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    return Chem.MolToInchiKey(mol) if mol is not None else None


def seed_set_inchikeys(path: Path = SEED_SET) -> set[str]:
    """InChIKeys of the seed set's SMILES."""
    with open(path, newline="") as fh:
        keys = {_inchikey(r["smiles"]) for r in csv.DictReader(fh)}
    return {k for k in keys if k}


_LOADED: dict[tuple[str, str], tuple[pd.DataFrame | None, str]] = {}


def _load(labels_dir: Path, level: LevelOfTheory) -> tuple[pd.DataFrame | None, str]:
    """The usable label rows of ``labels_dir`` at ``level`` (read once per run; not mutated)."""
    key = (str(Path(labels_dir).resolve()), level.hash)
    if key not in _LOADED:
        try:
            # density-only labels count for the density and dipole (alpha: NaN, left out)
            rows = load_label_rows(labels_dir, level=level, density_variants=True)
            _LOADED[key] = rows, ""
        except NoUsableLabelsError as exc:
            _LOADED[key] = None, str(exc)
    return _LOADED[key]


def _supported(rows: pd.DataFrame, elements: set[int]) -> tuple[pd.DataFrame, list[str]]:
    ok = rows[K.NUMBERS].map(lambda zs: {int(z) for z in zs} <= elements)
    dropped = sorted(set(rows.loc[~ok, K.NAME]))
    return rows[ok], dropped


def _failed_labels(labels_dir: Path) -> dict[str, str]:
    """name -> status of the label rows that are not ``ok`` (and have no ``ok`` row)."""
    from densnet_core.store import read_dataset

    df = read_dataset(labels_dir, "labels")
    if df.empty:
        return {}
    ok = set(df.loc[df[K.STATUS] == K.STATUS_OK, K.NAME])
    bad = df[(df[K.STATUS] != K.STATUS_OK) & ~df[K.NAME].isin(ok)]
    return dict(zip(bad[K.NAME], bad[K.STATUS], strict=True))


def held_out_set(
    labels_dir: Path, level: LevelOfTheory, card: dict[str, Any], elements: set[int]
) -> EvalSet:
    """(a): labelled seed molecules whose InChIKey is not in ``training_inchikeys``."""
    es = EvalSet("held_out", "(a) held-out seed molecules", None)
    rows, err = _load(labels_dir, level)
    if rows is None:
        es.notes.append(err)
        return es
    if "training_inchikeys" not in card:
        es.notes.append("the model card has no training_inchikeys: held-out set undefined")
        return es
    train = set(card["training_inchikeys"])
    val = set(card.get("validation_inchikeys", []))
    keyed = rows[K.MOL_ID].map(is_inchikey)
    if (~keyed).any():
        es.notes.append(
            f"left out {int((~keyed).sum())} conformers without an InChIKey "
            "(cannot tell whether they were trained on)"
        )
    rows = rows[keyed & ~rows[K.MOL_ID].isin(train)]
    rows, dropped = _supported(rows, elements)
    if dropped:
        es.notes.append(f"left out (elements the model does not cover): {', '.join(dropped)}")
    mols = set(rows[K.MOL_ID])
    es.notes.append(
        f"{len(mols)} molecules: {len(mols & val)} validation molecules of the training run, "
        f"{len(mols - val)} labelled after it (the model never saw any of them)"
    )
    es.rows = rows
    return es


def heterocycle_set(
    labels_dir: Path,
    smi: Path,
    level: LevelOfTheory,
    card: dict[str, Any],
    elements: set[int],
    seed_keys: set[str],
    training: Sequence[tuple[str, str]] = (),
) -> EvalSet:
    """(b): labelled heterocycles that are neither in the seed set nor in the training data.

    ``training`` holds (name, SMILES) of the model's training molecules: a heterocycle with one
    of them one ring substituent away (:mod:`densnet_core.near_neighbours`) is listed in
    ``neighbours``, so that the scores can also be read on the strictly unseen ones.
    """
    es = EvalSet("heterocycles", "(b) drug-like heterocycles (not in the seed set)", None)
    listed = read_records(smi) if smi.is_file() else []
    rows, err = _load(labels_dir, level)
    if rows is None:
        es.notes.append(f"0 of {len(listed)} heterocycles labelled: {err}")
        return es
    seen = seed_keys | set(card.get("training_inchikeys", []))
    overlap = rows[K.MOL_ID].isin(seen)
    if overlap.any():
        es.notes.append(
            "left out (in the seed set or the training data): "
            + ", ".join(sorted(set(rows.loc[overlap, K.NAME])))
        )
    rows = rows[~overlap]
    rows, dropped = _supported(rows, elements)
    if dropped:
        es.notes.append(f"left out (elements the model does not cover): {', '.join(dropped)}")
    labelled = set(rows[K.MOL_ID])
    failed = _failed_labels(labels_dir)
    missing = [
        r.name for r in listed if _inchikey(r.smiles) not in labelled and r.name not in failed
    ]
    es.notes.append(
        f"{len(labelled)} of {len(listed)} heterocycles labelled"
        + (f"; not (yet) labelled: {', '.join(missing)}" if missing else "")
    )
    if failed:
        es.notes.append(
            "labels that failed: " + ", ".join(f"{n} ({st})" for n, st in sorted(failed.items()))
        )
    es.rows = rows
    es.neighbours = training_neighbours(rows, training)
    return es


def training_neighbours(
    rows: pd.DataFrame, training: Sequence[tuple[str, str]]
) -> dict[str, list[str]]:
    """name -> ``["<training molecule> (<relation>)", ...]`` for the molecules of ``rows`` with
    a training molecule one ring substituent added, removed or replaced away."""
    from densnet_core.near_neighbours import benchmark_neighbours

    found: dict[str, list[str]] = {}
    for name, smi in rows.drop_duplicates(K.MOL_ID)[[K.NAME, K.SMILES]].itertuples(index=False):
        near = benchmark_neighbours(smi, training)
        if near:
            found[name] = [f"{t} ({rel})" for t, rel in near]
    return found


def training_molecules(
    labels_dirs: Sequence[Path], level: LevelOfTheory, card: dict[str, Any]
) -> tuple[list[tuple[str, str]], int]:
    """(name, SMILES) of the labelled molecules whose InChIKey is in ``training_inchikeys``,
    looked up in ``labels_dirs``, and how many of those InChIKeys none of them holds."""
    wanted = set(card.get("training_inchikeys", []))
    found: dict[str, tuple[str, str]] = {}
    for labels_dir in labels_dirs:
        rows = _load(labels_dir, level)[0] if labels_dir.is_dir() else None
        if rows is None:
            continue
        for key, name, smi in rows[[K.MOL_ID, K.NAME, K.SMILES]].itertuples(index=False):
            if key in wanted:
                found.setdefault(key, (name, smi))
    return list(found.values()), len(wanted - set(found))


# --- references and baselines -----------------------------------------------------------------


def xtb_observables(sample: Sample) -> tuple[np.ndarray, np.ndarray, str]:
    """GFN2-xTB dipole (3,) e·bohr and finite-field alpha (3, 3) bohr^3; NaN and a reason on
    failure."""
    from densnet_core.xtb import xtb_dipole_au, xtb_polarizability_au

    args = (
        sample.inputs.numbers.tolist(),
        sample.inputs.positions_bohr,
        round(sample.inputs.charge),
        sample.multiplicity,
    )
    try:
        mu = xtb_dipole_au(*args)
        alpha = xtb_polarizability_au(*args)
        return mu, 0.5 * (alpha + alpha.T), ""
    except Exception as exc:  # ImportError (no tblite) or an SCC failure: NaN, reported
        return np.full(3, np.nan), np.full((3, 3), np.nan), f"{type(exc).__name__}: {exc}"


def _orbital_mol(sample: Sample, level: LevelOfTheory):
    from densnet_core.qm import build_mol

    return build_mol(
        sample.inputs.numbers.tolist(),
        sample.inputs.positions_bohr,
        charge=round(sample.inputs.charge),
        multiplicity=sample.multiplicity,
        basis=level.basis,
    )


def scf_density_matrix(
    sample: Sample, mol, level: LevelOfTheory, cache_dir: Path, threads: int | None
) -> tuple[np.ndarray | None, str]:
    """The SCF density matrix of a labelled conformer (recomputed once, then cached).

    Returns ``(dm, "")``, or ``(None, reason)`` when the SCF does not converge or does not
    reproduce the label's dipole to :data:`SCF_DIPOLE_TOL_AU`.
    """
    from densnet_core import qm
    from densnet_core.store import atomic_file

    path = cache_dir / level.hash / f"{sample.conformer_key}.npy"
    dm = None
    if path.is_file():
        try:
            dm = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            dm = None
        if dm is not None and dm.shape != (mol.nao, mol.nao):
            dm = None
    if dm is None:
        res = qm.run_scf(mol, level, threads=threads)
        if not res.converged:
            return None, "SCF not converged"
        dm = np.asarray(res.mf.make_rdm1())
        if dm.ndim == 3:
            dm = dm[0] + dm[1]
        with atomic_file(path) as fh:
            np.save(fh, dm)
    origin = qm.centre_of_nuclear_charge_bohr(mol)
    mu = nuclear_moment(mol, origin) - electronic_moment(mol, dm, origin)
    dev = float(np.linalg.norm(mu - sample.dipole_au))
    if dev > SCF_DIPOLE_TOL_AU:
        return None, f"recomputed SCF dipole differs from the label by {dev:.1e} au"
    return dm, ""


# --- evaluation -------------------------------------------------------------------------------


def evaluate_set(
    models: Sequence[Any],
    es: EvalSet,
    *,
    level: LevelOfTheory,
    grid_level: int,
    exact_scf: bool,
    scf_cache: Path,
    threads: int | None,
    use_xtb: bool,
) -> dict[str, Any]:
    """Per-conformer predictions and errors of model, prior and xTB, and their means.

    ``models`` holds one density model, or the K members of an ensemble: then "model" is the
    ensemble mean (the average density and its dipole and polarizability).
    """
    from densnet_core.qm import pyscf_threads

    assert es.rows is not None
    t0 = time.perf_counter()
    samples = make_samples(es.rows, level=level)
    preds = mean_predictions(
        [predict_samples(m, samples, auxbasis=level.fit_auxbasis) for m in models]
    )
    aux = level.fit_auxbasis
    per: list[dict[str, Any]] = []
    floors_stored = es.rows[K.FIT_ERROR_PERCENT].to_numpy(dtype=float)
    for s, p, floor in zip(samples, preds, floors_stored, strict=True):
        rec: dict[str, Any] = {
            "name": s.name,
            "mol_id": s.mol_id,
            "conformer_key": s.conformer_key,
            "n_atoms": len(s.inputs.numbers),
            "dipole_ref_au": s.dipole_au.tolist(),
            "alpha_ref_au": [math.nan] * 9
            if s.polarizability_au is None
            else s.polarizability_au.reshape(9).tolist(),
            "model_dipole_au": p.model_dipole_au.tolist(),
            "prior_dipole_au": p.prior_dipole_au.tolist(),
            "model_alpha_au": None
            if p.model_alpha_au is None
            else p.model_alpha_au.reshape(9).tolist(),
            "label_floor_stored_pct": float(floor),
        }
        with pyscf_threads(threads):
            mol = _orbital_mol(s, level)
            auxmol = make_auxmol(mol, aux)
            grid = molecular_grid(mol, grid_level)
            label = to_pyscf(s.density, s.inputs.numbers.tolist(), aux)
            nm = density_nmae_pct(
                auxmol,
                np.stack([p.model_coeffs, p.prior_coeffs]),
                label,
                n_electrons=s.n_electrons,
                grid=grid,
            )
            rec["model_nmae_fit_pct"], rec["prior_nmae_fit_pct"] = float(nm[0]), float(nm[1])
            rec["model_nmae_scf_pct"] = rec["prior_nmae_scf_pct"] = math.nan
            rec["label_nmae_scf_pct"] = math.nan
            if exact_scf:
                dm, why = scf_density_matrix(s, mol, level, scf_cache, threads)
                if dm is None:
                    rec["scf_note"] = why
                    es.notes.append(f"{s.name}: no exact-SCF NMAE ({why})")
                else:
                    nm = density_nmae_vs_scf_pct(
                        mol,
                        dm,
                        auxmol,
                        np.stack([p.model_coeffs, p.prior_coeffs, label]),
                        grid=grid,
                    )
                    rec["model_nmae_scf_pct"] = float(nm[0])
                    rec["prior_nmae_scf_pct"] = float(nm[1])
                    rec["label_nmae_scf_pct"] = float(nm[2])
        if use_xtb:
            mu, alpha, why = xtb_observables(s)
            if why:
                es.notes.append(f"{s.name}: GFN2-xTB failed ({why})")
        else:
            mu, alpha = np.full(3, np.nan), np.full((3, 3), np.nan)
        rec["xtb_dipole_au"] = mu.tolist()
        rec["xtb_alpha_au"] = alpha.reshape(9).tolist()
        per.append(rec)
        log.info("%s: done (%.0f s so far)", s.name, time.perf_counter() - t0)

    dip_ref = np.array([r["dipole_ref_au"] for r in per]).reshape(-1, 3)
    alpha_ref = np.array([r["alpha_ref_au"] for r in per]).reshape(-1, 3, 3)
    model_alpha = (
        None
        if any(r["model_alpha_au"] is None for r in per)
        else np.array([r["model_alpha_au"] for r in per]).reshape(-1, 3, 3)
    )
    if model_alpha is None:  # a model without response heads predicts no polarizability
        model_alpha = np.full_like(alpha_ref, np.nan)
    methods: dict[str, dict[str, float]] = {
        "model": observable_summary(
            np.array([r["model_dipole_au"] for r in per]).reshape(-1, 3),
            dip_ref,
            model_alpha,
            alpha_ref,
        ),
        "prior": observable_summary(
            np.array([r["prior_dipole_au"] for r in per]).reshape(-1, 3), dip_ref, None, alpha_ref
        ),
        "xtb": observable_summary(
            np.array([r["xtb_dipole_au"] for r in per]).reshape(-1, 3),
            dip_ref,
            np.array([r["xtb_alpha_au"] for r in per]).reshape(-1, 3, 3),
            alpha_ref,
        ),
    }
    for who in ("model", "prior"):
        for col in ("nmae_fit_pct", "nmae_scf_pct"):
            methods[who][col] = nan_mean([r[f"{who}_{col}"] for r in per])
    for col in ("nmae_fit_pct", "nmae_scf_pct"):
        methods["xtb"][col] = math.nan
    return {
        "title": es.title,
        "n_conformers": len(per),
        "n_molecules": len({r["mol_id"] for r in per}),
        "methods": methods,
        "label_floor_stored_pct": nan_mean(floors_stored),
        "label_floor_scf_pct": nan_mean([r["label_nmae_scf_pct"] for r in per]),
        "n_exact_scf": int(np.isfinite([r["model_nmae_scf_pct"] for r in per]).sum()),
        "seconds": time.perf_counter() - t0,
        "notes": es.notes,
        "training_neighbours": es.neighbours,
        "per_conformer": per,
    }


# --- output -----------------------------------------------------------------------------------


def _cell(value: float, fmt: str, width: int) -> str:
    text = "n/a" if value is None or not math.isfinite(value) else fmt.format(value)
    return f"{text:>{width}s}"


def _dipole_err(mu: Sequence[float], ref: np.ndarray) -> float:
    """|mu - ref|, debye."""
    return float(np.linalg.norm(np.asarray(mu, dtype=float) - ref) * DEBYE_PER_AU)


def _alpha_pct(alpha: Sequence[float] | None, iso_ref: float) -> float:
    """|alpha_iso - iso_ref| / iso_ref, percent (NaN for no alpha)."""
    if alpha is None:
        return math.nan
    iso = float(np.trace(np.reshape(np.asarray(alpha, dtype=float), (3, 3))) / 3)
    return 100.0 * abs(iso - iso_ref) / iso_ref


def _neighbour_lines(res: dict[str, Any]) -> list[str]:
    """Which molecules have a one-substituent neighbour in the training data, and the dipole
    MAE (model and GFN2-xTB) over the molecules that have none."""
    near = res.get("training_neighbours") or {}
    if not near:
        return []
    lines = [
        "  one ring substituent from a training molecule (densnet_core.near_neighbours; the"
        " heterocycle is that molecule with one substituent added, removed or replaced):"
    ]
    lines += [f"    {name}: {', '.join(v)}" for name, v in sorted(near.items())]
    strict = [r for r in res["per_conformer"] if r["name"] not in near]
    if strict:
        mae = {
            who: nan_mean(
                [_dipole_err(r[f"{who}_dipole_au"], np.asarray(r["dipole_ref_au"])) for r in strict]
            )
            for who in ("model", "xtb")
        }
        lines.append(
            f"  without them ({len(strict)} conformers): μ MAE model {mae['model']:.3f} D, "
            f"GFN2-xTB {mae['xtb']:.3f} D"
        )
    return lines


def format_set(key: str, res: dict[str, Any], *, per_molecule: bool) -> str:
    """The plain-text block of one evaluation set."""
    lines = [
        f"{res['title']}: {res['n_molecules']} molecule(s), {res['n_conformers']} conformer(s)",
    ]
    lines += [f"  note: {n}" for n in res["notes"]]
    w0, w = 15, 13
    lines.append(f"  {'method':<{w0}s}" + "".join(f"{h:>{w}s}" for _, h, _ in COLUMNS))
    for who, label in METHODS:
        m = res["methods"][who]
        lines.append(f"  {label:<{w0}s}" + "".join(_cell(m.get(c), f, w) for c, _, f in COLUMNS))
    goals = GOALS[key]
    lines.append(
        f"  {'goal (model)':<{w0}s}"
        + "".join(
            f"{('≤ ' + format(goals[c], '.2f')) if c in goals else '':>{w}s}" for c, _, _ in COLUMNS
        )
    )
    model, xtb = res["methods"]["model"], res["methods"]["xtb"]
    verdicts = []
    for c, name in (("dipole_mae_debye", "dipole"), ("alpha_iso_mape_pct", "α_iso MAPE")):
        v = model[c]
        met = math.isfinite(v) and v <= goals[c]
        verdicts.append(f"{name} {'met' if met else 'NOT met'}")
        if BEAT_XTB[key]:
            if not math.isfinite(xtb[c]):
                verdicts.append(f"{name} not compared with GFN2-xTB (no xTB number)")
            else:
                better = math.isfinite(v) and v < xtb[c]
                verdicts.append(f"{name} {'better' if better else 'NOT better'} than GFN2-xTB")
    lines.append("  goals: " + "; ".join(verdicts))
    floor = f"label fit vs SCF (fitting floor): stored {res['label_floor_stored_pct']:.2f} %"
    if res["n_exact_scf"]:
        floor += (
            f", recomputed {res['label_floor_scf_pct']:.2f} % "
            f"({res['n_exact_scf']} of {res['n_conformers']} conformers with the exact SCF)"
        )
    else:
        floor += "; NMAE vs the exact SCF density not computed for this set"
    lines.append("  " + floor)
    lines += _neighbour_lines(res)
    if per_molecule:
        lines.append(
            f"  {'conformer':<28s}{'|μ| ref D':>10s}{'Δμ model':>10s}{'Δμ prior':>10s}"
            f"{'Δμ xTB':>10s}{'α ref':>8s}{'α% model':>10s}{'α% xTB':>9s}{'NMAE% fit':>10s}"
        )
        for r in res["per_conformer"]:
            ref = np.asarray(r["dipole_ref_au"])
            a_ref = float(np.trace(np.reshape(r["alpha_ref_au"], (3, 3))) / 3)
            lines.append(
                f"  {r['name'][:27]:<28s}{np.linalg.norm(ref) * DEBYE_PER_AU:10.2f}"
                f"{_dipole_err(r['model_dipole_au'], ref):10.3f}"
                f"{_dipole_err(r['prior_dipole_au'], ref):10.3f}"
                f"{_cell(_dipole_err(r['xtb_dipole_au'], ref), '{:.3f}', 10)}{a_ref:8.1f}"
                f"{_cell(_alpha_pct(r['model_alpha_au'], a_ref), '{:.2f}', 10)}"
                f"{_cell(_alpha_pct(r['xtb_alpha_au'], a_ref), '{:.1f}', 9)}"
                f"{r['model_nmae_fit_pct']:10.2f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model or ensemble directory (default model); an ensemble is scored by its mean",
    )
    ap.add_argument("--seed-labels", type=Path, default=SEED_LABELS)
    ap.add_argument("--heterocycle-labels", type=Path, default=HETEROCYCLE_LABELS)
    ap.add_argument("--heterocycles", type=Path, default=HETEROCYCLES_SMI, help=".smi list")
    ap.add_argument(
        "--exact-scf",
        choices=("none", "heterocycles", "all"),
        default="heterocycles",
        help="recompute the SCF density (cached) for NMAE against it",
    )
    ap.add_argument(
        "--scf-cache", type=Path, default=None, help="default: <cache_dir>/accuracy-scf"
    )
    ap.add_argument("--grid-level", type=int, default=3, help="PySCF grid level of the NMAE")
    ap.add_argument("--threads", type=int, default=1, help="PySCF and torch threads")
    ap.add_argument("--no-xtb", action="store_true", help="skip the GFN2-xTB baseline")
    ap.add_argument("--per-molecule", action="store_true", help="also print every conformer")
    ap.add_argument("--json", type=Path, default=None, help="save the numbers here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    import torch

    from densnet_core.ensemble import is_ensemble_dir, load_ensemble
    from densnet_core.modelio import load_model
    from densnet_core.predict import ModelNotFoundError, resolve_model_dir
    from densnet_core.settings import get_settings

    torch.set_num_threads(max(1, args.threads))
    try:
        model_dir = resolve_model_dir(args.model)
    except ModelNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if is_ensemble_dir(model_dir):
        ens = load_ensemble(model_dir)
        models, level, elements = ens.members, ens.level, set(ens.elements)
        model_id = f"{ens.ensemble_id} (mean of {len(models)} members)"
        # held out = no member trained on it: the union of the members' training molecules
        card = {
            "training_inchikeys": ens.manifest.get("training_inchikeys", []),
            "validation_inchikeys": ens.manifest.get("validation_inchikeys", []),
            "n_train_molecules": len(ens.manifest.get("training_inchikeys", [])),
        }
    else:
        model, info = load_model(model_dir)
        models, level, elements = [model], info.level, set(info.elements)
        model_id, card = info.model_id, dict(info.card)
    scf_cache = args.scf_cache or get_settings().cache_dir / "accuracy-scf"

    print(f"model: {model_id} ({model_dir}); trained on {card.get('n_train_molecules', '?')}")
    print(
        f"reference: PySCF labels at {level.label} (dipole, CPKS polarizability, fitted density);"
        f" NMAE on grid level {args.grid_level}"
    )
    print("dipole error = |μ - μ_ref| (vector), means over conformers; prior: α = 0 by design")
    training, n_unknown = training_molecules([args.seed_labels, SEED_LABELS_APART], level, card)
    sets = [
        held_out_set(args.seed_labels, level, card, elements),
        heterocycle_set(
            args.heterocycle_labels,
            args.heterocycles,
            level,
            card,
            elements,
            seed_set_inchikeys(),
            training,
        ),
    ]
    if n_unknown:
        sets[1].notes.append(
            f"{n_unknown} training molecules are in no label store here: their neighbours "
            "are not checked"
        )
    results: dict[str, Any] = {}
    for es in sets:
        print()
        if es.rows is None or es.rows.empty:
            print(f"{es.title}: nothing to evaluate")
            for n in es.notes:
                print(f"  note: {n}")
            results[es.key] = {"title": es.title, "n_conformers": 0, "notes": es.notes}
            continue
        exact = args.exact_scf == "all" or args.exact_scf == es.key
        res = evaluate_set(
            models,
            es,
            level=level,
            grid_level=args.grid_level,
            exact_scf=exact,
            scf_cache=scf_cache,
            threads=args.threads,
            use_xtb=not args.no_xtb,
        )
        results[es.key] = res
        print(format_set(es.key, res, per_molecule=args.per_molecule), flush=True)
    if args.json is not None:
        payload = {
            "model_id": model_id,
            "model_dir": str(model_dir),
            "level_of_theory": level.label,
            "grid_level": args.grid_level,
            "goals": GOALS,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "sets": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_finite(payload), indent=1, allow_nan=False)
        args.json.write_text(text + "\n")
        print(f"\nnumbers saved to {args.json}")
    return 0


def _finite(obj: Any) -> Any:
    """JSON-ready copy: NaN/inf -> None, numpy scalars and arrays -> Python."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


if __name__ == "__main__":
    sys.exit(main())
