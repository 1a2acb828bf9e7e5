"""Prefect tasks of the MD stage: thin wrappers around :mod:`densnet_core.md` and
:mod:`densnet_core.ir`.

Three tasks, all taking paths and plain values:

- :func:`prepare_structure` reads the input (SMILES or a ``.smi``/``.sdf``/``.mol``/``.xyz``
  file), checks the model covers its elements, relaxes it on the model (BFGS) and writes
  ``start.xyz`` to the output folder. When the folder already holds a checkpoint the run
  continues from it: nothing is relaxed, and ``start.xyz`` only identifies the molecule.
- :func:`run_md_segment` advances the run to a given step with :func:`densnet_core.md.run_md`
  (which resumes from the checkpoint and writes one at the end of the segment).
- :func:`compute_ir` turns the production dipole series into the IR spectrum files, with the
  PySCF harmonic reference if asked (cached in ``ir_reference.json``: it costs minutes to
  hours).

The calculator is loaded once per process (:func:`get_calculator`), not once per segment.
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from densnet_core.md import (
    MIN_IR_SAMPLES,
    REFERENCE_FILE,
    MDSettings,
    harmonic_reference_cached,
    ir_of_run,
    read_checkpoint_state,
    read_structure,
    relax_on_model,
    run_md,
)
from densnet_core.store import atomic_file

#: the structure the run starts from (after relaxation), extended XYZ, Å
START_FILE = "start.xyz"

_LOCK = threading.Lock()


@lru_cache(maxsize=2)
def _cached_calculator(model_dir: str | None, device: str) -> Any:
    from densnet_core.calculator import DenSNetCalculator

    return DenSNetCalculator(model=model_dir, device=device)


def get_calculator(model_dir: str | None, device: str = "cpu") -> Any:
    """The :class:`~densnet_core.calculator.DenSNetCalculator` of this process for a model.

    Parameters
    ----------
    model_dir
        MD model directory (None: ``models/densnet-md-ethanol``).
    device
        torch device.

    Raises
    ------
    densnet_core.calculator.MDModelNotFoundError
        No MD model at ``model_dir``.
    """
    with _LOCK:
        return _cached_calculator(None if model_dir is None else str(model_dir), device)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def settings_dict(settings: MDSettings) -> dict[str, Any]:
    """:class:`~densnet_core.md.MDSettings` as the plain dict the tasks take."""
    return asdict(settings)


def _write_start(atoms: Any, path: Path) -> None:
    """``atoms`` (with its ``info`` and initial charges) as extended XYZ, atomically."""
    import io

    import ase.io

    a = atoms.copy()
    a.calc = None
    buf = io.StringIO()
    ase.io.write(buf, a, format="extxyz")
    with atomic_file(path) as fh:
        fh.write(buf.getvalue().encode())


@task(name="md-prepare-structure", cache_policy=NO_CACHE, persist_result=False)
def prepare_structure(
    input_text: str,
    out_dir: str,
    model_dir: str | None = None,
    optimize: bool = True,
    device: str = "cpu",
    threads: int | None = 1,
) -> dict[str, Any]:
    """Read, check and (for a new run) relax the start structure; writes ``start.xyz``.

    Parameters
    ----------
    input_text
        A SMILES string or a ``.smi``/``.sdf``/``.mol``/``.xyz`` path
        (:func:`densnet_core.md.read_structure`).
    out_dir
        The run's output folder (created).
    model_dir
        MD model directory (None: the shipped MD model for this molecule,
        :func:`densnet_core.calculator.md_model_for`).
    optimize
        Relax the start geometry on the model (BFGS to 0.05 eV/Å, at most 300 steps); only
        for a new run.
    device, threads
        torch device and intra-op threads.

    Returns
    -------
    dict
        ``start_path``, ``formula``, ``n_atoms``, ``name``, ``model_id``, ``model_dir`` (the
        model used: ``model_dir``, or the shipped model for this molecule), ``resuming`` (a
        checkpoint exists), ``relax_steps`` and ``relax_fmax_ev_per_angstrom`` (None when not
        relaxed now), ``relax_converged``.

    Raises
    ------
    ValueError
        Unreadable input, or elements the model does not cover.
    densnet_core.md.RelaxationError
        The relaxation on the model blew up (forces above 50 eV/Å or not finite; a
        ``RuntimeError``).
    """
    import ase.io

    from densnet_core.calculator import resolve_md_model_dir

    logger = get_run_logger()
    _set_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start_path = out / START_FILE
    resuming = read_checkpoint_state(out) is not None
    if resuming and start_path.is_file():
        atoms = ase.io.read(start_path, index=0)
    else:
        atoms = read_structure(input_text)
    model_path = str(resolve_md_model_dir(model_dir, atoms.get_atomic_numbers().tolist()))
    calc = get_calculator(model_path, device)
    unsupported = sorted(set(atoms.get_atomic_numbers().tolist()) - set(calc.potential.elements))
    if unsupported:
        raise ValueError(f"elements {unsupported} are not covered by the model {calc.model_id}")
    info: dict[str, Any] = {
        "relax_steps": None,
        "relax_fmax_ev_per_angstrom": None,
        "relax_converged": None,
    }
    if optimize and not resuming:
        info = relax_on_model(atoms, calc)
        logger.info(
            "relaxed on the model: %d BFGS steps, fmax %.3f eV/Å%s",
            info["relax_steps"],
            info["relax_fmax_ev_per_angstrom"],
            "" if info["relax_converged"] else " (not converged)",
        )
    if not (resuming and start_path.is_file()):
        _write_start(atoms, start_path)
    name = str(atoms.info.get("name") or atoms.get_chemical_formula())
    logger.info(
        "%s (%s, %d atoms), model %s%s",
        name,
        atoms.get_chemical_formula(),
        len(atoms),
        calc.model_id,
        ", continuing from the checkpoint" if resuming else "",
    )
    return {
        "start_path": str(start_path),
        "formula": atoms.get_chemical_formula(),
        "n_atoms": len(atoms),
        "name": name,
        "model_id": calc.model_id,
        "model_dir": model_path,
        "resuming": resuming,
        **info,
    }


@task(
    name="md-segment",
    task_run_name="md-segment-to-{until_step}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def run_md_segment(
    start_path: str,
    out_dir: str,
    settings: dict[str, Any],
    until_step: int,
    model_dir: str | None = None,
    device: str = "cpu",
    threads: int | None = 1,
) -> dict[str, Any]:
    """Advance the run in ``out_dir`` to ``until_step`` (from its checkpoint), checkpoint there.

    Parameters
    ----------
    start_path
        ``start.xyz`` of the run (used for a new run; for a resumed one it only has to be the
        same molecule as the checkpoint).
    out_dir
        The run's output folder.
    settings
        Fields of :class:`densnet_core.md.MDSettings`.
    until_step
        Last step of this segment, counted from the start of equilibration.
    model_dir, device, threads
        The MD model directory (None: default), torch device and intra-op threads.

    Returns
    -------
    dict
        The :func:`densnet_core.md.run_md` summary of this segment (``steps_run_now``,
        ``seconds``, ``step``, ``total_steps``, drift and mean temperature over the whole
        production so far, ...).
    """
    import ase.io

    _set_threads(threads)
    atoms = ase.io.read(start_path, index=0)
    calc = get_calculator(model_dir, device)
    summary = run_md(atoms, calc, out_dir, settings=MDSettings(**settings), until_step=until_step)
    get_run_logger().info(
        "step %d of %d: %d steps in %.1f s (%.2f steps/s)",
        summary["step"],
        summary["total_steps"],
        summary["steps_run_now"],
        summary["seconds"],
        summary["steps_per_second"],
    )
    return summary


@task(name="md-ir-spectrum", cache_policy=NO_CACHE, persist_result=False)
def compute_ir(
    out_dir: str,
    settings: dict[str, Any],
    start_path: str,
    reference: bool = False,
) -> dict[str, Any]:
    """IR spectrum of the production run in ``out_dir`` (dipole autocorrelation).

    Parameters
    ----------
    out_dir
        The run's output folder (reads ``timeseries.parquet``; writes ``ir_spectrum.parquet``,
        ``ir_peaks.parquet``, ``ir_spectrum.png`` and, with ``reference``,
        ``ir_reference.json``).
    settings
        Fields of :class:`densnet_core.md.MDSettings` (time step, fs; temperature, K).
    start_path
        ``start.xyz``: the geometry the harmonic reference starts from.
    reference
        Also compute the PySCF harmonic spectrum at the project's level of theory and draw it
        on the same axes (expensive; reused from ``ir_reference.json`` on a rerun).

    Returns
    -------
    dict
        ``computed`` (False with a ``reason`` when the production run has fewer than
        :data:`MIN_IR_SAMPLES` samples); else ``spectrum``, ``peaks_file``, ``png``,
        ``n_samples``, ``peaks`` (list of ``{"wavenumber_cm1", "intensity"}``, and
        ``nearest_harmonic_cm1`` with a reference) and ``reference_file``.
    """
    import ase.io

    logger = get_run_logger()
    out = Path(out_dir)
    start = ase.io.read(start_path, index=0)

    res = ir_of_run(
        out,
        MDSettings(**settings),
        formula=start.get_chemical_formula(),
        reference=(lambda: harmonic_reference_cached(out, start, logger.info))
        if reference
        else None,
    )
    if not res["computed"]:
        logger.info(res["reason"])
        return res
    logger.info(
        "IR peaks (cm-1): %s", ", ".join(f"{p['wavenumber_cm1']:.0f}" for p in res["peaks"])
    )
    return {**res, "reference_file": str(out / REFERENCE_FILE) if reference else None}


__all__ = [
    "MIN_IR_SAMPLES",
    "REFERENCE_FILE",
    "START_FILE",
    "compute_ir",
    "get_calculator",
    "prepare_structure",
    "run_md_segment",
    "settings_dict",
]
