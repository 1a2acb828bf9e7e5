"""``densnet conformers INPUT -o OUT.parquet``: stage 1, 3D conformers for every input record.

By default the command runs the library directly (:func:`densnet_core.conformers.conformers_table`:
a process pool on all cores, no Prefect import). Prefect is opt-in: ``--prefect`` runs
``flows/conformers.py`` as a Prefect flow (flow run, task runs, progress and status artifacts in
the UI; the same batch function in the same process pool). Measured on the 1,017-compound ChEMBL
series on 2 cores, with a fresh ``PREFECT_HOME``: 96 CPU-seconds without Prefect, 141 with
``--prefect`` (its temporary server alone takes ~21 CPU-s to start and migrate its database,
plus ~7 CPU-s to import) — on a 2-core machine that is ~20 s more wall time. ``densnet run``
and ``densnet label`` still run the conformer stage as part of their Prefect flows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from densnet.console import check_table_paths, fail, transient_progress

DEFAULT_ELEMENTS_TEXT = "H,C,N,O,F,P,S,Cl,Br"
DEFAULT_MMFF_MAX_ITERS = 1000  # = densnet_core.conformers.DEFAULT_MMFF_MAX_ITERS (no RDKit here)

ProgressFn = Callable[[int, int], None]


def _parse_elements(text: str) -> list[str]:
    from rdkit import Chem, rdBase

    table = Chem.GetPeriodicTable()
    symbols = [s.strip() for s in text.replace(" ", ",").split(",") if s.strip()]
    if not symbols:
        raise fail("--elements is empty")
    for s in symbols:
        try:
            with rdBase.BlockLogs():  # RDKit would print a C++ stack trace first
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
        typer.Option(min=1, help="Worker processes (default: DENSNET_WORKERS or all cores)."),
    ] = None,
    elements: Annotated[
        str, typer.Option(help="Supported elements, comma-separated.")
    ] = DEFAULT_ELEMENTS_TEXT,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Records per batch, per Prefect task with --prefect (default: automatic).",
        ),
    ] = None,
    mmff_max_iters: Annotated[
        int,
        typer.Option(
            min=1,
            help="Force-field iterations allowed per conformer; the ff_converged column says "
            "whether they sufficed.",
        ),
    ] = DEFAULT_MMFF_MAX_ITERS,
    prefect: Annotated[
        bool,
        typer.Option(
            "--prefect",
            help="Run as the Prefect flow 'conformers' (tracked in the Prefect UI). Starts "
            "Prefect's temporary server (~10-25 s) unless PREFECT_API_URL is set.",
        ),
    ] = False,
) -> None:
    """Embed 3D conformers (RDKit ETKDGv3 + MMFF94) for every record of INPUT.

    Runs in this process with a pool of worker processes, without Prefect; --prefect runs the
    same work as a Prefect flow instead (flow run, task runs and artifacts in the Prefect UI).

    Every record gets at least one row; records that cannot be processed get a status other
    than "ok" and a readable error. The exit code is 0 when the run completed, whatever the
    per-record outcomes.
    """
    t0 = time.perf_counter()
    from rich.console import Console

    console = Console(stderr=True)
    out_console = Console()

    check_table_paths(input_path, output)

    from densnet_core.settings import get_settings

    n_workers = workers or get_settings().n_workers()
    boot = None
    if prefect:
        from densnet.prefect_env import configure_for_cli, start_server_early

        configure_for_cli()
        boot = start_server_early()  # the server boots while RDKit and the workers load

    from densnet_core.conformers import shared_pool, shutdown_shared_pools

    if n_workers > 1:
        shared_pool(n_workers, warm=True)  # workers import RDKit while we get ready
    symbols = _parse_elements(elements)
    options: dict[str, Any] = {
        "n_conformers": n_conformers,
        "seed": seed,
        "max_heavy_atoms": max_heavy_atoms,
        "elements": symbols,
        "workers": n_workers,
        "batch_size": batch_size,
        "mmff_max_iters": mmff_max_iters,
    }
    try:
        with _progress_bar(console, t0) as update:
            if prefect:
                summary = _run_flow(input_path, output, options, update, boot)
            else:
                summary = _run_local(input_path, output, options, update)
    except typer.Exit:
        raise
    except Exception as exc:
        raise fail(f"the conformer run failed: {type(exc).__name__}: {exc}", code=1) from None
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
    mode = "Prefect flow" if prefect else "no Prefect"
    out_console.print(
        f"{n} records → {summary['n_rows']} conformers in {seconds:.1f} s "
        f"({n / seconds:.1f} mol/s, {n_workers} workers, {mode})",
        highlight=False,
        soft_wrap=True,
    )
    if parts:
        out_console.print(f"status: {parts}", highlight=False, soft_wrap=True)
    out_console.print(f"output: {summary['output']}", highlight=False, soft_wrap=True)


@contextmanager
def _progress_bar(console: Any, t0: float) -> Iterator[ProgressFn | None]:
    """A transient progress bar with rate and ETA on a terminal; yields its update function
    (None when stderr is not a terminal)."""
    if not console.is_terminal:
        yield None
        return
    with transient_progress(console, "conformers") as bar:
        task_id = bar.add_task("conformers", total=None, rate="")

        def update(done: int, total: int) -> None:
            elapsed = time.perf_counter() - t0
            bar.update(task_id, completed=done, total=total, rate=f"{done / elapsed:.1f} mol/s")

        yield update


def _run_local(
    input_path: Path, output: Path, options: dict[str, Any], update: ProgressFn | None
) -> dict[str, Any]:
    """The library path: :func:`densnet_core.conformers.conformers_table`."""
    from densnet_core.conformers import conformers_table

    opts = dict(options)
    return conformers_table(
        input_path,
        output,
        workers=opts.pop("workers"),
        batch_size=opts.pop("batch_size"),
        on_progress=update,
        supported_elements=tuple(opts.pop("elements")),
        **opts,
    )


def _run_flow(
    input_path: Path,
    output: Path,
    options: dict[str, Any],
    update: ProgressFn | None,
    boot: Any,
) -> dict[str, Any]:
    """The Prefect path: ``flows.conformers.conformers_flow`` on the (temporary) server."""
    from flows.conformers import conformers_flow, progress_listener

    if boot is not None:
        boot.join()
    listening = progress_listener(update) if update else nullcontext()
    with listening:
        return conformers_flow(input_path=str(input_path), output_path=str(output), **options)
