"""Active learning: pick uncertain and diverse molecules to label, record every round.

A round (driven by ``flows/active_learning.py`` or ``benchmarks/active_learning.py``):
screen a pool of candidate conformers with an ensemble (:func:`screen_pool`) → pick N
molecules (:func:`select_uncertain_diverse`, or :func:`select_random` as the baseline) →
label them with PySCF → fine-tune the ensemble on the seed labels plus the new labels → screen
the pool again → append a :class:`RoundRecord` to a Parquet table (:func:`append_round`).
:func:`stop_reason` decides whether another round runs.

Uncertainty score
-----------------
The ensemble gives, per conformer, the calibrated spread of |mu| (``dipole_debye_std``, D) and
of alpha_iso (``alpha_iso_au_std``, bohr^3). The two are put on one scale by dividing each by
its median over the candidate pool, after making the polarizability spread relative
(sigma_alpha / alpha_iso: alpha grows with molecular size, and its error is judged as a
percentage, MAPE, while the dipole error is judged in D)::

    score_i = 0.5 * ( s_mu_i / median_j s_mu_j  +  r_alpha_i / median_j r_alpha_j ),
    s_mu = dipole_debye_std,  r_alpha = alpha_iso_au_std / |alpha_iso_au|

so a conformer as uncertain as the pool's typical one scores 1, and each property weighs the
same whatever its unit. If one term is missing (NaN: e.g. no response head), the other alone
is the score. A molecule's score is the largest over its conformers (all its conformers are
labelled when it is picked).

Selection
---------
:func:`select_uncertain_diverse` drops molecules already labelled (InChIKey, ``mol_id``),
ranks the rest by score, keeps the ``shortlist_factor * N`` most uncertain, and runs MaxMin on
their Morgan fingerprints (:func:`densnet_core.seeds.maxmin_pick`, Tanimoto distance) starting
from the most uncertain one: the picks are among the most uncertain and unlike each other, so
a round does not spend its budget on near-duplicates that share one model error.

Training on several label stores
--------------------------------
The fine-tuning trains on the seed labels plus the active-learning labels without copying
either: :func:`label_view` makes a folder of symbolic links to the part files of several label
stores (plus their ``level.json``), which every reader of a label store
(:func:`densnet_core.store.read_dataset`, training, calibration) reads as one store. A view is
a snapshot: labels added to a source later are not in it (a round trains on fixed data).

Round table
-----------
One row per finished round (:data:`ROUND_COLUMNS`), written atomically (temporary file +
rename, :func:`densnet_core.store.write_parquet_atomic`) with ``schema_version`` and
``table = "active_learning_rounds"`` in the Arrow metadata; appending a round that is already
there replaces it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from densnet_core import keys as K
from densnet_core.level import LevelOfTheory
from densnet_core.store import SCHEMA_VERSION, part_files, read_table, write_parquet_atomic

__all__ = [
    "ROUNDS_TABLE",
    "ROUND_COLUMNS",
    "RoundRecord",
    "StoppingRule",
    "append_round",
    "copy_known_labels",
    "evaluate_ensemble",
    "fine_tune_ensemble",
    "label_view",
    "member_init_dir",
    "molecule_scores",
    "pool_uncertainty",
    "read_rounds",
    "screen_pool",
    "select_random",
    "select_uncertain_diverse",
    "stop_reason",
    "uncertainty_scores",
]

ROUNDS_TABLE = "active_learning_rounds"
SCORE = "uncertainty_score"
REL_ALPHA_STD = "alpha_iso_rel_std"

_f64, _i64, _str = pa.float64(), pa.int64(), pa.string()
_ROUND_SCHEMA = pa.schema(
    [
        ("round", _i64),  # 1-based round number
        ("strategy", _str),  # "uncertainty_maxmin" or "random"
        ("seed", _i64),  # seed of the pick (MaxMin ties / random draw)
        ("budget", _i64),  # molecules to pick this round (after clipping to the total budget)
        ("n_picked", _i64),  # molecules picked
        ("n_labels_ok", _i64),  # conformers of the picks labelled ok
        ("n_labelled_total", _i64),  # molecules labelled by active learning so far
        ("label_budget", _i64),  # total molecule budget (-1 = none)
        ("picked_names", pa.list_(_str)),
        ("picked_mol_ids", pa.list_(_str)),  # InChIKeys
        ("picked_scores", pa.list_(_f64)),  # uncertainty score at the pick
        ("init_dir", _str),  # ensemble fine-tuned from
        ("ensemble_dir", _str),  # ensemble of this round
        ("ensemble_id", _str),
        ("val_dipole_mae_debye", _f64),  # ensemble-mean |mu| MAE on the validation molecules, D
        ("val_alpha_iso_mae_au", _f64),  # bohr^3
        ("val_alpha_iso_mape_pct", _f64),  # %, mean over members
        ("pool_size", _i64),  # pool molecules scored (unlabelled after this round)
        ("pool_mean_std_dipole_debye_before", _f64),  # mean calibrated sigma, D
        ("pool_mean_std_dipole_debye_after", _f64),
        ("pool_mean_rel_std_alpha_before", _f64),  # mean sigma_alpha / alpha_iso
        ("pool_mean_rel_std_alpha_after", _f64),
        ("test_dipole_mae_debye", _f64),  # optional held-out test set (NaN without one), D
        ("test_alpha_iso_mape_pct", _f64),  # %
        ("stop_reason", _str),  # why no further round runs after this one ("" = continue)
        ("started", _str),  # ISO 8601, UTC
        ("finished", _str),
        ("wall_seconds", _f64),
    ],
    metadata={b"schema_version": SCHEMA_VERSION.encode(), b"table": ROUNDS_TABLE.encode()},
)
ROUND_COLUMNS: tuple[str, ...] = tuple(_ROUND_SCHEMA.names)


# ------------------------------------------------------------------------------------------
# Scores and selection
# ------------------------------------------------------------------------------------------
def _normalised(x: np.ndarray) -> np.ndarray:
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.full_like(x, np.nan)
    ref = float(np.median(finite))
    if not ref > 0:
        ref = float(np.mean(np.abs(finite))) or 1.0
    return x / ref


def uncertainty_scores(
    dipole_debye_std: Sequence[float] | np.ndarray,
    alpha_iso_au_std: Sequence[float] | np.ndarray,
    alpha_iso_au: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """The normalised uncertainty score of every conformer (module docstring).

    Parameters
    ----------
    dipole_debye_std
        (S,) calibrated ensemble spread of |mu|, D.
    alpha_iso_au_std
        (S,) calibrated ensemble spread of alpha_iso, bohr^3.
    alpha_iso_au
        (S,) ensemble-mean alpha_iso, bohr^3.

    Returns
    -------
    numpy.ndarray
        (S,) dimensionless score (1 = as uncertain as the pool's median); NaN where both
        terms are missing.
    """
    sd = np.asarray(dipole_debye_std, float)
    rel = np.asarray(alpha_iso_au_std, float) / np.abs(np.asarray(alpha_iso_au, float))
    terms = np.stack([_normalised(sd), _normalised(rel)])  # (2, S)
    finite = np.isfinite(terms)
    n = finite.sum(axis=0)
    total = np.where(finite, terms, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def molecule_scores(candidates: pd.DataFrame) -> pd.DataFrame:
    """One row per molecule of a screened pool, most uncertain first.

    Parameters
    ----------
    candidates
        Conformer rows with ``mol_id``, ``name``, ``smiles``, ``status``,
        ``dipole_debye_std``, ``alpha_iso_au_std``, ``alpha_iso_au`` (:func:`screen_pool`).

    Returns
    -------
    pandas.DataFrame
        ``mol_id``, ``name``, ``smiles``, ``uncertainty_score`` (max over the molecule's ok
        conformers), ``dipole_debye_std``, ``alpha_iso_rel_std`` (means over them),
        ``n_conformers``; molecules without a finite score are left out.
    """
    ok = candidates[candidates[K.STATUS] == K.STATUS_OK].copy()
    cols = [K.MOL_ID, K.NAME, K.SMILES, SCORE, K.DIPOLE_DEBYE_STD, REL_ALPHA_STD, "n_conformers"]
    if ok.empty:
        return pd.DataFrame({c: [] for c in cols})
    ok[SCORE] = uncertainty_scores(
        ok[K.DIPOLE_DEBYE_STD], ok[K.ALPHA_ISO_AU_STD], ok[K.ALPHA_ISO_AU]
    )
    ok[REL_ALPHA_STD] = ok[K.ALPHA_ISO_AU_STD] / ok[K.ALPHA_ISO_AU].abs()
    ok = ok[np.isfinite(ok[SCORE].to_numpy(float))]
    if ok.empty:
        return pd.DataFrame({c: [] for c in cols})
    g = ok.groupby(K.MOL_ID, sort=True)
    mol = pd.DataFrame(
        {
            K.NAME: g[K.NAME].first(),
            K.SMILES: g[K.SMILES].first(),
            SCORE: g[SCORE].max(),
            K.DIPOLE_DEBYE_STD: g[K.DIPOLE_DEBYE_STD].mean(),
            REL_ALPHA_STD: g[REL_ALPHA_STD].mean(),
            "n_conformers": g.size(),
        }
    ).reset_index()
    # stable: equal scores keep InChIKey order
    return mol.sort_values(SCORE, ascending=False, kind="mergesort").reset_index(drop=True)[cols]


def _eligible(candidates: pd.DataFrame, exclude_mol_ids: Iterable[str]) -> pd.DataFrame:
    mol = molecule_scores(candidates)
    excluded = set(exclude_mol_ids)
    return mol[~mol[K.MOL_ID].isin(excluded)].reset_index(drop=True)


def select_uncertain_diverse(
    candidates: pd.DataFrame,
    n: int,
    *,
    exclude_mol_ids: Iterable[str] = (),
    shortlist_factor: float = 3.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Pick ``n`` uncertain and mutually diverse molecules (module docstring).

    Parameters
    ----------
    candidates
        Screened conformer rows (:func:`screen_pool`).
    n
        Molecules to pick (fewer if fewer are eligible).
    exclude_mol_ids
        InChIKeys already labelled (training set, label stores): never picked.
    shortlist_factor
        MaxMin runs on the ``ceil(shortlist_factor * n)`` most uncertain molecules (>= n).
    seed
        Seed of the MaxMin picker (ties only).

    Returns
    -------
    pandas.DataFrame
        The picks (columns of :func:`molecule_scores` plus ``pick_order``), most uncertain
        first, then in MaxMin order.
    """
    from densnet_core.seeds import maxmin_pick, morgan_fingerprints

    mol = _eligible(candidates, exclude_mol_ids)
    if n <= 0 or mol.empty:
        return mol.iloc[0:0].assign(pick_order=pd.Series(dtype=int))
    k = min(len(mol), max(int(n), math.ceil(shortlist_factor * n)))
    short = mol.iloc[:k].reset_index(drop=True)
    fps = morgan_fingerprints(list(short[K.SMILES]))
    idx = maxmin_pick(fps, min(int(n), k), first_picks=[0], seed=seed)
    out = short.iloc[idx].reset_index(drop=True)
    return out.assign(pick_order=np.arange(len(out)))


def select_random(
    candidates: pd.DataFrame,
    n: int,
    *,
    exclude_mol_ids: Iterable[str] = (),
    seed: int = 0,
) -> pd.DataFrame:
    """The baseline: ``n`` eligible molecules drawn uniformly at random (reproducible).

    Eligible molecules are ordered by InChIKey before the draw, so the pick depends only on
    the set of candidates and ``seed`` (``numpy.random.default_rng(seed)``), not on row order.

    Returns
    -------
    pandas.DataFrame
        As :func:`select_uncertain_diverse`.
    """
    mol = _eligible(candidates, exclude_mol_ids).sort_values(K.MOL_ID).reset_index(drop=True)
    if n <= 0 or mol.empty:
        return mol.iloc[0:0].assign(pick_order=pd.Series(dtype=int))
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(mol), size=min(int(n), len(mol)), replace=False)
    out = mol.iloc[idx].reset_index(drop=True)
    return out.assign(pick_order=np.arange(len(out)))


# ------------------------------------------------------------------------------------------
# Screening and evaluation
# ------------------------------------------------------------------------------------------
def screen_pool(
    ensemble: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Predict a pool of conformer rows with every ensemble member.

    Parameters
    ----------
    ensemble
        :class:`densnet_core.ensemble.Ensemble`.
    rows
        Conformers-table (or label-store) rows: ``name``, ``smiles``, ``mol_id``,
        ``conformer_id``, ``conformer_key``, ``charge``, ``numbers`` (N,),
        ``positions_angstrom`` (N, 3), ``status``.

    Returns
    -------
    pandas.DataFrame
        One row per input row: identity, ``status`` (input status; ``unsupported_element``
        for elements the ensemble lacks), ``error``, ``dipole_debye`` and
        ``dipole_debye_std`` (D), ``alpha_iso_au`` and ``alpha_iso_au_std`` (bohr^3, the
        spreads calibrated), ``model_id`` (the ensemble id).
    """
    from densnet_core.featurize import get_featurizer
    from densnet_core.units import BOHR_PER_ANGSTROM

    feat = get_featurizer(ensemble.level)
    allowed = {int(z) for z in ensemble.elements}
    out: list[dict[str, Any]] = []
    inputs, where = [], []
    for r in rows:
        rec = {
            K.NAME: str(r.get(K.NAME, "")),
            K.SMILES: str(r.get(K.SMILES, "")),
            K.MOL_ID: str(r.get(K.MOL_ID, "")),
            K.CONFORMER_ID: int(r.get(K.CONFORMER_ID) or 0),
            K.CONFORMER_KEY: str(r.get(K.CONFORMER_KEY) or ""),
            K.MODEL_ID: ensemble.ensemble_id,
            K.STATUS: str(r.get(K.STATUS) or K.STATUS_OK),
            K.ERROR: str(r.get(K.ERROR) or ""),
            K.DIPOLE_DEBYE: math.nan,
            K.DIPOLE_DEBYE_STD: math.nan,
            K.ALPHA_ISO_AU: math.nan,
            K.ALPHA_ISO_AU_STD: math.nan,
        }
        out.append(rec)
        if rec[K.STATUS] != K.STATUS_OK:
            continue
        numbers = [int(z) for z in r[K.NUMBERS]]
        missing = sorted(set(numbers) - allowed)
        if missing:
            rec[K.STATUS] = K.STATUS_UNSUPPORTED_ELEMENT
            rec[K.ERROR] = f"elements {missing} are not supported by the ensemble"
            continue
        pos = np.stack([np.asarray(p, float) for p in r[K.POSITIONS_ANGSTROM]])
        inputs.append(feat(numbers, pos * BOHR_PER_ANGSTROM, int(r.get(K.CHARGE) or 0)))
        where.append(len(out) - 1)
    if inputs:
        pred = ensemble.predict_inputs(inputs, batch_size=batch_size)
        for j, i in enumerate(where):
            out[i][K.DIPOLE_DEBYE] = float(pred.dipole_debye[j])
            out[i][K.DIPOLE_DEBYE_STD] = float(pred.dipole_debye_std[j])
            out[i][K.ALPHA_ISO_AU] = float(pred.alpha_iso_au[j])
            out[i][K.ALPHA_ISO_AU_STD] = float(pred.alpha_iso_au_std[j])
    return pd.DataFrame(out)


def pool_uncertainty(
    screened: pd.DataFrame, *, exclude_mol_ids: Iterable[str] = ()
) -> dict[str, float]:
    """Mean calibrated spreads over the pool molecules not in ``exclude_mol_ids``.

    Returns
    -------
    dict
        ``n`` (molecules), ``mean_std_dipole_debye`` (D), ``mean_rel_std_alpha``
        (sigma_alpha / alpha_iso, dimensionless); NaN when the pool is empty.
    """
    mol = _eligible(screened, exclude_mol_ids)
    if mol.empty:
        return {"n": 0, "mean_std_dipole_debye": math.nan, "mean_rel_std_alpha": math.nan}
    return {
        "n": len(mol),
        "mean_std_dipole_debye": float(np.nanmean(mol[K.DIPOLE_DEBYE_STD])),
        "mean_rel_std_alpha": float(np.nanmean(mol[REL_ALPHA_STD])),
    }


def evaluate_ensemble(
    ensemble: Any, labelled: Any, *, batch_size: int = 32, calibrated: bool = True
) -> dict[str, float]:
    """Errors of the ensemble mean on a labelled set (PySCF labels as reference).

    Parameters
    ----------
    ensemble
        :class:`densnet_core.ensemble.Ensemble`.
    labelled
        :class:`densnet_core.calibration.LabelledSet`.
    calibrated
        Spreads times the ensemble's calibrated scale factors (False: the raw member spread,
        to compare an ensemble without calibration with one that has it).

    Returns
    -------
    dict
        ``n`` (conformers), ``dipole_mae_debye`` (D), ``alpha_iso_mae_au`` (bohr^3),
        ``alpha_iso_mape_pct`` (%), ``mean_std_dipole_debye`` (D), ``mean_rel_std_alpha``.
    """
    if len(labelled) == 0:
        nan = math.nan
        return {
            "n": 0,
            "dipole_mae_debye": nan,
            "alpha_iso_mae_au": nan,
            "alpha_iso_mape_pct": nan,
            "mean_std_dipole_debye": nan,
            "mean_rel_std_alpha": nan,
        }
    pred = ensemble.predict_inputs(labelled.inputs, batch_size=batch_size, calibrated=calibrated)
    ref_d, ref_a = labelled.dipole_debye, labelled.alpha_iso_au
    err_a = np.abs(pred.alpha_iso_au - ref_a)
    return {
        "n": len(labelled),
        "dipole_mae_debye": float(np.mean(np.abs(pred.dipole_debye - ref_d))),
        "alpha_iso_mae_au": float(np.mean(err_a)),
        "alpha_iso_mape_pct": float(100.0 * np.mean(err_a / np.abs(ref_a))),
        "mean_std_dipole_debye": float(np.nanmean(pred.dipole_debye_std)),
        "mean_rel_std_alpha": float(np.nanmean(pred.alpha_iso_au_std / np.abs(pred.alpha_iso_au))),
    }


# ------------------------------------------------------------------------------------------
# Label stores
# ------------------------------------------------------------------------------------------
LEVEL_FILE = "level.json"


def label_view(
    view_dir: str | os.PathLike[str],
    sources: Sequence[str | os.PathLike[str]],
    *,
    exclude_mol_ids: Iterable[str] = (),
) -> Path:
    """A label store made of symbolic links to the part files of ``sources`` (no copies).

    Parameters
    ----------
    view_dir
        Folder to create. If it exists already (a resumed round), it is returned unchanged.
    sources
        Label stores; their ``level.json`` files must agree (the first one found is linked).
    exclude_mol_ids
        Molecules (InChIKeys) to leave out (e.g. a benchmark's test set): a part holding only
        them is not linked, a part mixing them with others is written filtered (a copy of the
        remaining rows) instead of linked.

    Returns
    -------
    Path
        ``view_dir``. It is built in a temporary sibling folder and renamed into place, so a
        killed run never leaves a half-made view.

    Raises
    ------
    ValueError
        If two sources record different levels of theory.
    """
    view = Path(view_dir)
    if view.is_dir():
        return view
    levels = {}
    for src in sources:
        lv = Path(src) / LEVEL_FILE
        if lv.is_file():
            levels[str(Path(src))] = json.loads(lv.read_text())
    # compare levels, not their JSON: a store written before a field existed (e.g.
    # ``polarizability``, default True) has the same level as one that spells it out
    if len({LevelOfTheory(**v).hash for v in levels.values()}) > 1:
        raise ValueError(f"label stores at different levels of theory: {levels}")
    tmp = view.parent / f".{view.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        excluded = set(exclude_mol_ids)
        for src in sources:
            for part in part_files(src):
                link = tmp / part.name
                if link.exists():  # the same part reached through two sources
                    continue
                if excluded:
                    ids = pq.read_table(part, columns=[K.MOL_ID]).column(0).to_pylist()
                    drop = [m in excluded for m in ids]
                    if all(drop):
                        continue
                    if any(drop):
                        tbl = pq.read_table(part)
                        keep = pa.array([not d for d in drop])
                        write_parquet_atomic(tbl.filter(keep), link)
                        continue
                link.symlink_to(part.resolve())
        if levels:
            first = next(iter(levels))
            (tmp / LEVEL_FILE).symlink_to((Path(first) / LEVEL_FILE).resolve())
        os.replace(tmp, view)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return view


def copy_known_labels(
    rows: Sequence[Mapping[str, Any]],
    sources: Sequence[str | os.PathLike[str]],
    dest: str | os.PathLike[str],
    level: Any,
) -> int:
    """Copy labels that exist already (e.g. a benchmark's label store) into ``dest``.

    Labelling a conformer whose label (same conformer key and level hash, ``status == "ok"``)
    is in one of ``sources`` is a lookup: the label rows are appended to ``dest`` as one part
    file, and the label flow then skips them. Labels already in ``dest`` are not copied again.

    Returns
    -------
    int
        Label rows copied.
    """
    from densnet_core.labelling import finished_label_keys, row_label_key
    from densnet_core.store import append_part, read_dataset

    have = finished_label_keys(read_dataset(dest, "labels"), level)
    wanted = {row_label_key(r, level) for r in rows} - have
    if not wanted:
        return 0
    found = []
    for src in sources:
        if not Path(src).is_dir():
            continue
        df = read_dataset(src, "labels")
        if df.empty:
            continue
        ok = df[(df[K.STATUS] == K.STATUS_OK) & (df[K.LEVEL_HASH] == level.hash)]
        ok = ok.drop_duplicates(K.CONFORMER_KEY, keep="last")
        keys = ok[K.CONFORMER_KEY].astype(str) + "@" + level.hash
        hit = ok[keys.isin(wanted)]
        wanted -= set(keys[keys.isin(wanted)])
        if len(hit):
            found.append(hit)
    if not found:
        return 0
    table = pd.concat(found, ignore_index=True)
    append_part(table, dest, "labels")
    return len(table)


# ------------------------------------------------------------------------------------------
# Fine-tuning (library path; the flow uses flows/train.py)
# ------------------------------------------------------------------------------------------
def member_init_dir(init: str | os.PathLike[str] | None, member: str) -> str | None:
    """The model ensemble member ``member`` fine-tunes from.

    ``init`` may be a single model directory (every member starts from it) or an ensemble
    directory (``ensemble.json``): then ``member-k`` starts from ``init/member-k`` (members
    stay distinct), or from the first member if the init ensemble has no ``member-k``.
    """
    from densnet_core.ensemble import is_ensemble_dir, read_manifest

    if init is None or not is_ensemble_dir(init):
        return None if init is None else str(init)
    dirs = [m["dir"] for m in read_manifest(init)["members"]]
    return str(Path(init) / (member if member in dirs else dirs[0]))


def fine_tune_ensemble(
    labels_dir: str | os.PathLike[str],
    init_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    bootstrap: bool = True,
    seed: int = 0,
    calibrate: bool = True,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Fine-tune every member of the ensemble ``init_dir`` on ``labels_dir`` into ``out_dir``.

    Member k starts from ``init_dir/member-k`` (:func:`member_init_dir`) and keeps the
    validation molecules of ``init_dir``'s manifest (``validation_mol_ids``), so every newly
    labelled molecule trains. Finished members are skipped (resumable).

    Parameters
    ----------
    labels_dir
        Label store (e.g. a :func:`label_view` of seed + new labels).
    init_dir
        Ensemble directory to start from.
    out_dir
        New ensemble directory.
    bootstrap, seed, calibrate
        As :func:`densnet_core.ensemble.train_ensemble`.
    **train_kwargs
        Keyword arguments of :func:`densnet_core.train.train` (epochs, lr, batch_size, ...).

    Returns
    -------
    dict
        The new manifest.
    """
    from densnet_core.ensemble import member_specs, read_manifest, train_member, write_manifest

    init_manifest = read_manifest(init_dir)
    n = int(init_manifest["n_members"])
    kw = dict(train_kwargs)
    kw.setdefault("validation_mol_ids", list(init_manifest.get("validation_inchikeys") or []))
    for spec in member_specs(n, seed=seed, bootstrap=bootstrap):
        train_member(labels_dir, out_dir, spec, init=member_init_dir(init_dir, spec.name), **kw)
    return write_manifest(
        labels_dir,
        out_dir,
        members=n,
        calibrate=calibrate,
        plot=False,
        device=str(kw.get("device", "cpu")),
    )


# ------------------------------------------------------------------------------------------
# Round records and the stopping rule
# ------------------------------------------------------------------------------------------
@dataclass
class RoundRecord:
    """One finished active-learning round (a row of the round table, :data:`ROUND_COLUMNS`).

    Units are in the field names (D, bohr^3 = au, %); ``*_rel_std_alpha`` are
    sigma_alpha / alpha_iso. NaN = not measured.
    """

    round: int
    strategy: str
    seed: int
    budget: int
    n_picked: int
    n_labels_ok: int
    n_labelled_total: int
    label_budget: int
    picked_names: list[str]
    picked_mol_ids: list[str]
    picked_scores: list[float]
    init_dir: str
    ensemble_dir: str
    ensemble_id: str
    val_dipole_mae_debye: float = math.nan
    val_alpha_iso_mae_au: float = math.nan
    val_alpha_iso_mape_pct: float = math.nan
    pool_size: int = 0
    pool_mean_std_dipole_debye_before: float = math.nan
    pool_mean_std_dipole_debye_after: float = math.nan
    pool_mean_rel_std_alpha_before: float = math.nan
    pool_mean_rel_std_alpha_after: float = math.nan
    test_dipole_mae_debye: float = math.nan
    test_alpha_iso_mape_pct: float = math.nan
    stop_reason: str = ""
    started: str = ""
    finished: str = ""
    wall_seconds: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        """The table row (``extra`` left out)."""
        d = asdict(self)
        d.pop("extra")
        return d


def read_rounds(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The round table (empty, with the declared columns, if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return _ROUND_SCHEMA.empty_table().to_pandas()
    return read_table(path, ROUNDS_TABLE).sort_values("round").reset_index(drop=True)


def append_round(path: str | os.PathLike[str], record: RoundRecord | Mapping[str, Any]) -> Path:
    """Add a round to the table at ``path`` (replacing a row of the same round), atomically.

    Returns
    -------
    Path
        ``path``.
    """
    row = record.row() if isinstance(record, RoundRecord) else dict(record)
    missing = [c for c in ROUND_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"round record lacks {missing}")
    old = read_rounds(path)
    old = old[old["round"] != int(row["round"])]
    rows = [*old.to_dict("records"), {c: row[c] for c in ROUND_COLUMNS}]
    rows.sort(key=lambda r: int(r["round"]))
    cols = {
        c: [list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v for v in col]
        for c, col in ((c, [r[c] for r in rows]) for c in ROUND_COLUMNS)
    }
    tbl = pa.Table.from_pydict(cols, schema=_ROUND_SCHEMA)
    return write_parquet_atomic(tbl, path)


@dataclass(frozen=True)
class StoppingRule:
    """When active learning stops (checked before every round).

    Attributes
    ----------
    max_rounds
        Rounds in total.
    label_budget
        Molecules labelled in total over all rounds (None = no limit).
    target_std_dipole_debye
        Stop once the mean calibrated |mu| spread over the unlabelled pool is below this (D).
    target_rel_std_alpha
        ... and/or the mean sigma_alpha / alpha_iso is below this (both, when both are given).
    min_improvement
        Stop when the last round lowered neither pool mean (|mu| spread, relative alpha
        spread) by at least this fraction of its value before the round.
    """

    max_rounds: int = 3
    label_budget: int | None = None
    target_std_dipole_debye: float | None = None
    target_rel_std_alpha: float | None = None
    min_improvement: float | None = None


def _rel_drop(before: float, after: float) -> float:
    if not (math.isfinite(before) and math.isfinite(after)) or before <= 0:
        return math.nan
    return (before - after) / before


def stop_reason(
    rounds: pd.DataFrame | Sequence[Mapping[str, Any]],
    rule: StoppingRule,
    *,
    pool_remaining: int | None = None,
) -> str:
    """Why no further round should run ("" = run another).

    Parameters
    ----------
    rounds
        Finished rounds (:func:`read_rounds` or records).
    rule
        The stopping rule.
    pool_remaining
        Unlabelled eligible pool molecules (0 stops: ``"pool_exhausted"``).

    Returns
    -------
    str
        ``"max_rounds"``, ``"label_budget"``, ``"uncertainty_target"``, ``"no_improvement"``,
        ``"pool_exhausted"`` or "".
    """
    recs = rounds.to_dict("records") if isinstance(rounds, pd.DataFrame) else list(rounds)
    recs.sort(key=lambda r: int(r["round"]))
    if len(recs) >= rule.max_rounds:
        return "max_rounds"
    used = sum(int(r["n_picked"]) for r in recs)
    if rule.label_budget is not None and used >= rule.label_budget:
        return "label_budget"
    if pool_remaining is not None and pool_remaining <= 0:
        return "pool_exhausted"
    if recs:
        last = recs[-1]
        sd = float(last["pool_mean_std_dipole_debye_after"])
        ra = float(last["pool_mean_rel_std_alpha_after"])
        checks = []
        if rule.target_std_dipole_debye is not None:
            checks.append(math.isfinite(sd) and sd < rule.target_std_dipole_debye)
        if rule.target_rel_std_alpha is not None:
            checks.append(math.isfinite(ra) and ra < rule.target_rel_std_alpha)
        if checks and all(checks):
            return "uncertainty_target"
        if rule.min_improvement is not None:
            drops = [
                _rel_drop(float(last["pool_mean_std_dipole_debye_before"]), sd),
                _rel_drop(float(last["pool_mean_rel_std_alpha_before"]), ra),
            ]
            finite = [d for d in drops if math.isfinite(d)]
            if finite and max(finite) < rule.min_improvement:
                return "no_improvement"
    return ""


def round_budget(rounds: pd.DataFrame, rule: StoppingRule, per_round: int) -> int:
    """Molecules to pick in the next round: ``per_round``, clipped to the budget left."""
    used = int(rounds["n_picked"].sum()) if len(rounds) else 0
    if rule.label_budget is None:
        return int(per_round)
    return max(0, min(int(per_round), int(rule.label_budget) - used))
