"""``densnet md INPUT -o OUT_DIR``: molecular dynamics and the IR spectrum on the DenSNet model."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from densnet.console import fail, say, transient_progress


class NVEEnergy(StrEnum):
    """Choices of ``--nve-energy`` (:attr:`densnet_core.md.MDSettings.nve_energy`)."""

    canonical = "canonical"
    as_is = "as_is"


def md(
    input_text: Annotated[
        str, typer.Argument(help="A SMILES string, or a .smi, .sdf/.mol or .xyz file.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (resumed).")],
    model: Annotated[
        Path | None,
        typer.Option(help="MD model directory (default: models/densnet-md-ethanol)."),
    ] = None,
    temperature_k: Annotated[
        float, typer.Option("--temperature-K", min=1.0, help="Temperature, K.")
    ] = 300.0,
    timestep_fs: Annotated[
        float, typer.Option("--timestep-fs", min=0.01, help="Time step, fs.")
    ] = 0.5,
    steps: Annotated[int, typer.Option(min=1, help="NVE production steps.")] = 4000,
    equilibration_steps: Annotated[
        int, typer.Option(min=0, help="Langevin equilibration steps before production.")
    ] = 1000,
    friction_per_fs: Annotated[
        float, typer.Option("--friction-per-fs", min=0.0, help="Langevin friction, 1/fs.")
    ] = 0.01,
    nve_energy: Annotated[
        NVEEnergy,
        typer.Option(
            "--nve-energy",
            help="canonical: start NVE at the canonical mean energy of the temperature "
            "(momenta scaled once); as_is: at the last Langevin state.",
        ),
    ] = NVEEnergy.canonical,
    optimize: Annotated[
        bool, typer.Option(help="Relax the start geometry on the model first (BFGS).")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the velocities and Langevin noise.")] = 0,
    ir: Annotated[bool, typer.Option(help="Write the IR spectrum of the production run.")] = True,
    reference: Annotated[
        bool,
        typer.Option(
            help="Also compute the PySCF harmonic IR spectrum (Hessian + dipole derivatives; "
            "expensive) and draw it on the same axes."
        ),
    ] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    prefect: Annotated[
        bool,
        typer.Option(
            "--prefect",
            help="Run as the Prefect flow 'md' (MD in segments of 500 steps as tasks, progress "
            "and summary artifacts in the Prefect UI). Starts Prefect's temporary server "
            "(~10-25 s) unless PREFECT_API_URL is set.",
        ),
    ] = False,
) -> None:
    """Langevin equilibration, then NVE production, then the IR spectrum from the dipole.

    OUT_DIR gets trajectory.xyz (extended XYZ), timeseries.parquet, a checkpoint (rerunning the
    same command after an interruption continues where it stopped), summary.json and, with
    --ir, ir_spectrum.parquet, ir_peaks.parquet and ir_spectrum.png. --prefect runs the same
    work as the Prefect flow flows/md.py:md_flow (which also writes start.xyz).
    """
    t0 = time.perf_counter()
    if prefect:
        _run_flow(
            {
                "input": input_text,
                "output_dir": str(output),
                "model_dir": None if model is None else str(model),
                "temperature_K": temperature_k,
                "timestep_fs": timestep_fs,
                "steps": steps,
                "equilibration_steps": equilibration_steps,
                "friction_per_fs": friction_per_fs,
                "nve_energy": nve_energy.value,
                "seed": seed,
                "optimize": optimize,
                "ir": ir,
                "reference": reference,
                "device": device,
                "threads": threads,
            }
        )
        say(f"done in {time.perf_counter() - t0:.0f} s")
        return
    import torch

    torch.set_num_threads(threads)
    from densnet_core.calculator import (
        DenSNetCalculator,
        MDModelNotFoundError,
        resolve_md_model_dir,
    )
    from densnet_core.md import (
        CHECKPOINT_JSON,
        MDSettings,
        MDUnstableError,
        RelaxationError,
        harmonic_reference_cached,
        ir_of_run,
        read_structure,
        relax_on_model,
        run_md,
    )

    try:
        atoms = read_structure(input_text)
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    try:
        model_dir = resolve_md_model_dir(model, atoms.get_atomic_numbers().tolist())
        calc = DenSNetCalculator(model=model_dir, device=device)
    except MDModelNotFoundError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:
        raise fail(f"cannot load the MD model: {type(exc).__name__}: {exc}") from None
    unsupported = sorted(set(atoms.get_atomic_numbers().tolist()) - set(calc.potential.elements))
    if unsupported:
        raise fail(f"elements {unsupported} are not covered by the model {calc.model_id}")
    say(f"{atoms.get_chemical_formula()} ({len(atoms)} atoms), model {calc.model_id}")
    resuming = (output / CHECKPOINT_JSON).is_file()
    if optimize and not resuming:
        try:
            relax = relax_on_model(atoms, calc)
        except RelaxationError as exc:
            raise fail(str(exc), code=1) from None
        say(
            f"relaxed on the model: {relax['relax_steps']} BFGS steps, fmax "
            f"{relax['relax_fmax_ev_per_angstrom']:.3f} eV/Å"
            f"{'' if relax['relax_converged'] else ' (not converged)'}"
        )
    settings = MDSettings(
        temperature_K=temperature_k,
        timestep_fs=timestep_fs,
        steps=steps,
        equilibration_steps=equilibration_steps,
        friction_per_fs=friction_per_fs,
        seed=seed,
        nve_energy=nve_energy.value,
    )
    if resuming:
        say(f"resuming the run in {output}")
    try:
        summary = _run_with_progress(run_md, atoms, calc, output, settings)
    except ValueError as exc:
        raise fail(str(exc)) from None
    except MDUnstableError as exc:
        raise fail(str(exc), code=1) from None
    say(
        f"{summary['steps_run_now']} steps in {summary['seconds']:.0f} s "
        f"({summary['steps_per_second']:.1f} steps/s); production ⟨T⟩ "
        f"{summary['mean_temperature_K']:.0f} K; NVE drift "
        f"{1000 * summary['nve_drift_ev_per_atom_per_ps']:.3f} meV/atom/ps"
    )
    say(f"trajectory: {summary['trajectory']}")
    say(f"time series: {summary['timeseries']}")
    if ir:
        res = ir_of_run(
            output,
            settings,
            formula=atoms.get_chemical_formula(),
            reference=(lambda: harmonic_reference_cached(output, atoms, say))
            if reference
            else None,
        )
        _say_ir(res)
        if res["computed"]:
            say(f"IR spectrum: {res['spectrum']}  plot: {res['png']}")
    say(f"done in {time.perf_counter() - t0:.0f} s")


def _run_flow(params: dict[str, Any]) -> None:
    """The Prefect path: ``flows.md.md_flow`` on the (temporary) server; prints its summary."""
    from densnet.prefect_env import configure_for_cli, start_server_early

    configure_for_cli()
    boot = start_server_early()
    from densnet_core.md import MDUnstableError
    from flows.md import MDParams, md_flow

    try:
        validated = MDParams(**params)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if boot is not None:
        boot.join()
    try:
        s = md_flow(params=validated)
    except MDUnstableError as exc:
        raise fail(str(exc), code=1) from None
    except (ValueError, FileNotFoundError) as exc:  # bad input, model or output folder
        raise fail(str(exc)) from None
    except Exception as exc:
        raise fail(f"the MD flow failed: {type(exc).__name__}: {exc}", code=1) from None
    say(f"{s['formula']} ({s['n_atoms']} atoms), model {s['model_id']}; Prefect flow 'md'")
    say(
        f"{s['status']}: {s['steps_run_now']} steps in {s['segments_run']} segment(s) "
        f"({s['steps_per_second']:.1f} steps/s), step {s['step']} of {s['total_steps']}; "
        f"production ⟨T⟩ {s['mean_temperature_K']:.0f} K; NVE drift "
        f"{s['drift_mev_per_atom_per_ps']:.3f} meV/atom/ps"
    )
    for name, path in s["files"].items():
        say(f"{name}: {path}")
    if s.get("ir"):
        _say_ir(s["ir"])


def _say_ir(ir: dict[str, Any]) -> None:
    """The IR peaks of :func:`densnet_core.md.ir_of_run`'s result, or why there are none."""
    if ir.get("computed"):
        say("IR peaks (cm-1): " + ", ".join(f"{p['wavenumber_cm1']:.0f}" for p in ir["peaks"]))
    else:
        say(str(ir.get("reason")))


def _run_with_progress(run_md, atoms, calc, output, settings):
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        return run_md(atoms, calc, output, settings=settings)
    with transient_progress(console, "{task.description:>13}", rate=False) as bar:
        task = bar.add_task("md", total=settings.equilibration_steps + settings.steps)

        def update(done: int, total: int, phase: str) -> None:
            bar.update(task, completed=done, total=total, description=phase)

        return run_md(atoms, calc, output, settings=settings, progress=update)
