"""``densnet conformers INPUT -o OUT.parquet``: stage 1, 3D conformers for every input record."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from densnet.console import fail
from densnet.prefect_env import configure_for_cli, start_server_early

DEFAULT_ELEMENTS_TEXT = "H,C,N,O,F,P,S,Cl,Br"


def _parse_elements(text: str) -> list[str]:
    from rdkit import Chem

    table = Chem.GetPeriodicTable()
    symbols = [s.strip() for s in text.replace(" ", ",").split(",") if s.strip()]
    if not symbols:
        raise fail("--elements is empty")
    for s in symbols:
        try:
            table.GetAtomicNumber(s)
        except RuntimeError:
            raise fail(f"--elements: unknown element symbol {s!r}") from None
    return symbols


def conformers(
    input_path: Annotated[
        Path, typer.Argument(help="SMILES (.smi/.txt), .csv, .sdf/.mol, or a conformers table.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output Parquet file (conformers table).")
    ],
    n_conformers: Annotated[
        int, typer.Option("--n-conformers", min=1, help="Conformers kept per molecule.")
    ] = 1,
    seed: Annotated[int, typer.Option(help="ETKDG random seed.")] = 0xD5,
    max_heavy_atoms: Annotated[
        int, typer.Option(min=1, help="Larger molecules are reported as too_large.")
    ] = 100,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Worker processes [default: DENSNET_WORKERS or all cores]."),
    ] = None,
    elements: Annotated[
        str, typer.Option(help="Supported elements, comma-separated.")
    ] = DEFAULT_ELEMENTS_TEXT,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Records per Prefect task [default: automatic].")
    ] = None,
) -> None:
    """Embed 3D conformers (RDKit ETKDGv3 + MMFF94) for every record of INPUT.

    Every record gets at least one row; records that cannot be processed get a status other
    than "ok" and a readable error. The exit code is 0 when the run completed, whatever the
    per-record outcomes.
    """
    t0 = time.perf_counter()
    from rich.console import Console

    console = Console(stderr=True)
    out_console = Console()

    from densnet_core.inputs import InputFileError, detect_format

    try:
        detect_format(input_path)
    except InputFileError as exc:
        raise fail(str(exc)) from None
    if output.exists() and output.is_dir():
        raise fail(f"output {output} is a folder; give a .parquet file path")
    symbols = _parse_elements(elements)

    configure_for_cli()

    from densnet_core.conformers import shared_pool, shutdown_shared_pools
    from densnet_core.settings import get_settings

    n_workers = workers or get_settings().n_workers()
    if n_workers > 1:
        shared_pool(n_workers, warm=True)
    boot = start_server_early()

    from flows.conformers import conformers_flow, progress_listener

    if boot is not None:
        boot.join()

    show_bar = console.is_terminal
    try:
        if show_bar:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            with Progress(
                TextColumn("conformers"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            ) as bar:
                task_id = bar.add_task("conformers", total=None, rate="")

                def update(done: int, total: int) -> None:
                    elapsed = time.perf_counter() - t0
                    bar.update(
                        task_id, completed=done, total=total, rate=f"{done / elapsed:.1f} mol/s"
                    )

                with progress_listener(update):
                    summary = _run(
                        conformers_flow,
                        input_path,
                        output,
                        n_conformers,
                        seed,
                        max_heavy_atoms,
                        symbols,
                        n_workers,
                        batch_size,
                    )
        else:
            summary = _run(
                conformers_flow,
                input_path,
                output,
                n_conformers,
                seed,
                max_heavy_atoms,
                symbols,
                n_workers,
                batch_size,
            )
    finally:
        shutdown_shared_pools()

    seconds = time.perf_counter() - t0
    n = summary["n_records"]
    counts = summary["status_counts"]
    if n == 0:
        out_console.print(
            f"input {input_path} has no records; wrote an empty table", soft_wrap=True
        )
    parts = ", ".join(f"{status} {count}" for status, count in counts.items())
    out_console.print(
        f"{n} records → {summary['n_rows']} conformers in {seconds:.1f} s "
        f"({n / seconds:.1f} mol/s, {n_workers} workers)",
        highlight=False,
        soft_wrap=True,
    )
    if parts:
        out_console.print(f"status: {parts}", highlight=False, soft_wrap=True)
    out_console.print(f"output: {summary['output']}", highlight=False, soft_wrap=True)


def _run(
    flow_fn, input_path, output, n_conformers, seed, max_heavy_atoms, symbols, workers, batch_size
):
    try:
        return flow_fn(
            input_path=str(input_path),
            output_path=str(output),
            n_conformers=n_conformers,
            seed=seed,
            max_heavy_atoms=max_heavy_atoms,
            elements=symbols,
            workers=workers,
            batch_size=batch_size,
        )
    except Exception as exc:
        raise fail(f"the conformer run failed: {type(exc).__name__}: {exc}", code=1) from None
