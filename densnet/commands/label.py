"""``densnet label INPUT -o LABELS_DIR``: stage 2, PySCF labels for every conformer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from densnet.console import fail, say, status_line


def _level(text: str | None):
    from pydantic import ValidationError

    from densnet_core.level import LevelOfTheory

    if not text:
        return LevelOfTheory()
    try:
        raw = Path(text).read_text() if Path(text).is_file() else text
        return LevelOfTheory(**json.loads(raw))
    except (json.JSONDecodeError, ValidationError, TypeError) as exc:
        raise fail(f"--level: {exc}") from None


def label(
    input_path: Annotated[
        Path,
        typer.Argument(help="SMILES (.smi/.txt), .csv, .sdf/.mol, or a conformers table."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Label dataset folder (created or extended).")
    ],
    level: Annotated[
        str | None,
        typer.Option(
            help='Level of theory as JSON (or a JSON file), e.g. \'{"xc": "pbe0"}\' '
            "[default: B3LYP/def2-SVPD, DF, grid 3, fit def2-universal-jkfit]."
        ),
    ] = None,
    n_conformers: Annotated[
        int, typer.Option(min=1, help="Conformers per molecule (SMILES/CSV input).")
    ] = 1,
    workers: Annotated[
        int,
        typer.Option(min=1, help="Labelling processes (>1 starts a local Dask cluster)."),
    ] = 1,
    dask_address: Annotated[
        str | None,
        typer.Option(help="Scheduler address of an existing Dask cluster, e.g. tcp://host:8786."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Conformers per Prefect task.")] = 4,
    max_memory_mb: Annotated[
        int | None,
        typer.Option(
            min=200,
            help="PySCF memory per calculation, MB (default: DENSNET_PYSCF_MAX_MEMORY_MB or 4000).",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="OpenMP threads per PySCF calculation (default: DENSNET_PYSCF_THREADS, or the "
            "cores shared out over --workers). Use 1 for labelling runs that share the machine.",
        ),
    ] = None,
    density_only: Annotated[
        bool,
        typer.Option(
            "--density-only",
            help="Skip the polarizability (CPKS) and the forces, ~1/3 of a label's cost: the "
            "density, dipole and energy only. densnet train uses such labels for everything "
            "but the polarizability terms.",
        ),
    ] = False,
) -> None:
    """Label conformers with PySCF: energy, forces, dipole, polarizability, fitted densities.

    Finished labels are kept: a rerun (or a run after an interruption) computes only what is
    missing. Every conformer row gets a label row, with a status and an error when it failed.
    """
    t0 = time.perf_counter()
    if not input_path.exists():
        raise fail(f"input {input_path} does not exist")
    lot = _level(level)
    if density_only:
        lot = lot.model_copy(update={"polarizability": False, "forces": False})

    from densnet.prefect_env import configure_for_cli, start_server_early

    configure_for_cli()
    boot = start_server_early()
    from flows.label import label_flow
    from flows.runners import task_runner

    if boot is not None:
        boot.join()
    flow_fn = label_flow.with_options(
        task_runner=task_runner(workers=workers, dask_address=dask_address)
    )
    try:
        summary = flow_fn(
            input_path=str(input_path),
            labels_dir=str(output),
            level=lot,
            n_conformers=n_conformers,
            workers=workers,
            dask_address=dask_address,
            batch_size=batch_size,
            max_memory_mb=max_memory_mb,
            threads=threads,
        )
    except Exception as exc:
        raise fail(f"the label run failed: {type(exc).__name__}: {exc}", code=1) from None
    seconds = time.perf_counter() - t0
    say(
        f"{summary['n_rows']} conformers: {summary['n_labelled']} labelled now, "
        f"{summary['n_skipped']} already done, in {seconds:.1f} s at {summary['level']}"
    )
    say(status_line(summary["status_counts"]))
    say(f"labels: {summary['labels_dir']}  (read with densnet_core.store.read_table)")
