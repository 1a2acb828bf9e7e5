"""One PySCF label per conformer: SCF, energy, forces, dipole, polarizability, fitted densities.

:func:`label_conformer` turns a row of the conformers table into a row of the labels table.
It never raises for a molecule's own problem: an SCF that does not converge gives
``status="scf_not_converged"`` (with the attempts and cycle count), any other failure
``status="qm_failed"`` with the exception text. Conformer rows that already failed upstream
pass through with their status and error, so the label table has a row for every input record.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from densnet_core import keys as K
from densnet_core import qm, store
from densnet_core.basis import make_auxmol
from densnet_core.fitting import CoulombFitter, fit_density, fit_error_percent, fit_response
from densnet_core.level import LevelOfTheory
from densnet_core.units import BOHR_PER_ANGSTROM

log = logging.getLogger(__name__)

_IDENTITY_COLUMNS = (
    K.RECORD_INDEX,
    K.NAME,
    K.SMILES,
    K.MOL_ID,
    K.CONFORMER_ID,
    K.CONFORMER_KEY,
    K.CHARGE,
    K.MULTIPLICITY,
    K.NUMBERS,
    K.POSITIONS_ANGSTROM,
)


def label_key(conformer_key: str, level: LevelOfTheory) -> str:
    """The key of a label: conformer (geometry, charge, multiplicity) × level of theory."""
    return f"{conformer_key}@{level.hash}"


def failed_record_key(row: Mapping[str, Any]) -> str:
    """A stable key for a record that has no geometry (failed before embedding)."""
    text = f"{row.get(K.INPUT_SMILES) or row.get(K.SMILES)}|{row.get(K.NAME)}"
    return "record-" + hashlib.sha1(text.encode()).hexdigest()[:20]


def _empty_label(row: Mapping[str, Any], level: LevelOfTheory) -> dict[str, Any]:
    out = {col: _plain(row.get(col)) for col in _IDENTITY_COLUMNS}
    out[K.CONFORMER_KEY] = conformer_key_of(row)
    out.update(
        {
            K.LEVEL_OF_THEORY: level.label,
            K.LEVEL_HASH: level.hash,
            K.AUX_BASIS: level.fit_auxbasis,
            K.ENERGY_HARTREE: math.nan,
            K.FORCES_HARTREE_PER_BOHR: None,
            K.DIPOLE_AU: None,
            K.POLARIZABILITY_AU: None,
            K.DENSITY_COEFFS: None,
            K.RESPONSE_COEFFS: None,
            K.FIT_ERROR_PERCENT: math.nan,
            K.SCF_CONVERGED: False,
            K.SCF_CYCLES: 0,
            K.SCF_STRATEGY: "",
            K.WALL_SECONDS: 0.0,
            K.STATUS: row.get(K.STATUS) or K.STATUS_OK,
            K.ERROR: row.get(K.ERROR) or "",
        }
    )
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def label_conformer(
    row: Mapping[str, Any],
    level: LevelOfTheory,
    *,
    threads: int | None = None,
    max_memory_mb: int = 4000,
    with_fit_error: bool = True,
) -> dict[str, Any]:
    """Label one conformer with PySCF.

    Parameters
    ----------
    row
        A conformers-table row (``numbers``, ``positions_angstrom`` (N, 3) Å, ``charge``,
        ``multiplicity``, identity columns, ``status``).
    level
        Level of theory (functional, basis, grid, fit aux basis).
    threads
        PySCF OpenMP threads for this label (None = PySCF's default, all cores).
    max_memory_mb
        PySCF ``max_memory``, MB.
    with_fit_error
        Also compute the real-space fitting floor (``fit_error_percent``) on a grid.

    Returns
    -------
    dict
        A labels-table row: energy (Eh), forces (N, 3) Eh/bohr, dipole (3,) e·bohr about the
        centre of nuclear charge, polarizability (9,) bohr³ row-major (CPKS, symmetrised),
        density coefficients (M,) and response coefficients (3·M,) in PySCF aux-AO order
        (polarizability and response None when ``level.polarizability`` is False, forces
        None when ``level.forces`` is False),
        fitting floor (%), SCF diagnostics, wall time, status and error.
    """
    out = _empty_label(row, level)
    if out[K.STATUS] != K.STATUS_OK:
        return out
    t0 = time.perf_counter()
    try:
        with qm.pyscf_threads(threads):
            _label_into(out, row, level, max_memory_mb=max_memory_mb, with_fit_error=with_fit_error)
    except Exception as exc:  # one molecule's failure never stops the others
        log.warning("labelling %s failed: %s", out[K.NAME], exc, exc_info=True)
        out[K.STATUS] = K.STATUS_QM_FAILED
        out[K.ERROR] = f"{type(exc).__name__}: {exc}"
    out[K.WALL_SECONDS] = time.perf_counter() - t0
    return out


def _label_into(
    out: dict[str, Any],
    row: Mapping[str, Any],
    level: LevelOfTheory,
    *,
    max_memory_mb: int,
    with_fit_error: bool,
) -> None:
    multiplicity = int(row[K.MULTIPLICITY])
    if multiplicity != 1:
        out[K.STATUS] = K.STATUS_UNSUPPORTED_MULTIPLICITY
        out[K.ERROR] = (
            f"multiplicity {multiplicity}: labels (polarizability response) are implemented "
            "for closed-shell molecules only"
        )
        return
    # rows read back from Parquet hold an object array of per-atom arrays
    positions_bohr = np.stack([np.asarray(p, dtype=float) for p in row[K.POSITIONS_ANGSTROM]])
    positions_bohr = positions_bohr * BOHR_PER_ANGSTROM
    mol = qm.build_mol(
        [int(z) for z in row[K.NUMBERS]],
        positions_bohr,
        charge=int(row[K.CHARGE]),
        multiplicity=multiplicity,
        basis=level.basis,
        max_memory_mb=max_memory_mb,
    )
    scf = qm.run_scf(mol, level)
    out[K.SCF_CONVERGED] = bool(scf.converged)
    out[K.SCF_CYCLES] = int(scf.cycles)
    out[K.SCF_STRATEGY] = scf.strategy
    if not scf.converged:
        out[K.STATUS] = K.STATUS_SCF_NOT_CONVERGED
        out[K.ERROR] = f"SCF not converged after {scf.cycles} cycles; tried: " + "; ".join(
            scf.attempts
        )
        return
    mf = scf.mf
    out[K.ENERGY_HARTREE] = float(scf.energy_hartree)
    if level.forces:
        out[K.FORCES_HARTREE_PER_BOHR] = qm.forces_hartree_per_bohr(mf).tolist()
    origin = qm.centre_of_nuclear_charge_bohr(mol)
    dipole = qm.dipole_au(mf, origin_bohr=origin)
    out[K.DIPOLE_AU] = dipole.tolist()
    dm1 = None
    if level.polarizability:
        alpha, dm1 = qm.polarizability_au(mf)
        out[K.POLARIZABILITY_AU] = np.asarray(alpha).reshape(9).tolist()

    auxmol = make_auxmol(mol, level.fit_auxbasis)
    fitter = CoulombFitter(auxmol)
    dm = np.asarray(mf.make_rdm1())
    fit = fit_density(
        mol,
        dm,
        auxmol,
        n_electrons=float(mol.nelectron),
        dipole_au=dipole,
        origin_bohr=origin,
        fitter=fitter,
        max_memory_mb=max_memory_mb / 4,
    )
    out[K.DENSITY_COEFFS] = fit.coeffs.tolist()
    if dm1 is not None:
        response = fit_response(mol, dm1, auxmol, fitter=fitter, max_memory_mb=max_memory_mb / 4)
        out[K.RESPONSE_COEFFS] = response.reshape(-1).tolist()
    if with_fit_error:
        out[K.FIT_ERROR_PERCENT] = float(
            fit_error_percent(mol, dm, auxmol, fit.coeffs, grid_level=level.grid_level)
        )


def finished_label_keys(labels: Any, level: LevelOfTheory) -> set[str]:
    """Label keys already in a label dataset for ``level`` that need no recomputation.

    ``ok`` labels and deterministic failures (SCF not converged, unsupported multiplicity,
    records that failed upstream) are final; ``qm_failed`` (an exception, possibly transient:
    memory, a killed worker) is retried on the next run.

    Parameters
    ----------
    labels
        The labels DataFrame (``store.read_dataset(labels_dir, "labels")``).
    level
        Only labels of this level of theory count, or of a level that
        :meth:`~densnet_core.level.LevelOfTheory.provides` everything it computes (a full
        label makes a density-only one unnecessary).
    """
    if len(labels) == 0:
        return set()
    hashes = {v.hash for v in level.providers()}
    same = labels[labels[K.LEVEL_HASH].isin(hashes)]
    final = same[same[K.STATUS] != K.STATUS_QM_FAILED]
    return {label_key(key, level) for key in final[K.CONFORMER_KEY]}


def conformer_key_of(row: Mapping[str, Any]) -> str:
    """The row's ``conformer_key``, or :func:`failed_record_key` for a row without geometry."""
    return str(row.get(K.CONFORMER_KEY) or failed_record_key(row))


def row_label_key(row: Mapping[str, Any], level: LevelOfTheory) -> str:
    """The label key a conformers-table row will get (see :func:`label_key`)."""
    return label_key(conformer_key_of(row), level)


def label_into_dataset(
    rows: Iterable[Mapping[str, Any]],
    labels_dir: str | os.PathLike[str],
    level: LevelOfTheory,
    *,
    threads: int | None = None,
    max_memory_mb: int = 4000,
    skip_keys: Iterable[str] = (),
    on_label: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Label conformer rows and append each finished label to a label dataset at once.

    One part file per label, written atomically: a run killed half-way loses at most the label
    in flight, and a rerun skips everything already written (pass
    ``finished_label_keys(store.read_dataset(labels_dir), level)`` as ``skip_keys``).

    Parameters
    ----------
    rows
        Conformers-table rows.
    labels_dir
        The label dataset folder.
    level
        Level of theory.
    threads, max_memory_mb
        PySCF threads and memory per label.
    skip_keys
        Label keys (:func:`row_label_key`) not to compute again.
    on_label
        Called with a short summary (key, name, status, wall seconds) after each label.

    Returns
    -------
    list[dict]
        One summary per row: ``label_key``, ``name``, ``status``, ``error``, ``wall_seconds``,
        ``skipped`` (True when the key was already done).
    """
    done = set(skip_keys)
    summaries = []
    for row in rows:
        key = row_label_key(row, level)
        if key in done:
            summaries.append(
                {
                    "label_key": key,
                    K.NAME: row.get(K.NAME),
                    K.STATUS: "skipped",
                    K.ERROR: "",
                    K.WALL_SECONDS: 0.0,
                    "skipped": True,
                }
            )
            continue
        label = label_conformer(row, level, threads=threads, max_memory_mb=max_memory_mb)
        store.append_part([label], labels_dir, "labels")
        done.add(key)
        summary = {
            "label_key": key,
            K.NAME: label[K.NAME],
            K.STATUS: label[K.STATUS],
            K.ERROR: label[K.ERROR],
            K.WALL_SECONDS: label[K.WALL_SECONDS],
            "skipped": False,
        }
        summaries.append(summary)
        if on_label is not None:
            on_label(summary)
    return summaries
