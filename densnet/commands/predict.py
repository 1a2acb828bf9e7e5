"""``densnet predict INPUT -o OUT.parquet``: dipoles and polarizabilities from the density model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from densnet.console import fail, say, status_line


def predict(
    input_path: Annotated[
        Path,
        typer.Argument(
            help="SMILES (.smi/.txt), .csv, .sdf/.mol (3D kept), or a conformers table."
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output Parquet file (predictions table).")
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Model directory [default: DENSNET_MODEL_DIR or models/densnet-default].",
        ),
    ] = None,
    n_conformers: Annotated[
        int,
        typer.Option(
            "--n-conformers",
            min=1,
            help="Conformers per molecule; > 1 also writes Boltzmann averages per molecule.",
        ),
    ] = 1,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes for conformers and prediction [default: conformers on all cores, "
            "prediction in 1 process with 1 thread — the fastest measured on 2 cores].",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Molecules per forward pass.")] = 64,
    dask_address: Annotated[
        str | None,
        typer.Option(help="Scheduler address of an existing Dask cluster, e.g. tcp://host:8786."),
    ] = None,
    top_n: Annotated[int, typer.Option(min=0, help="Candidates in the top-N artifact.")] = 20,
) -> None:
    """Predict dipole moments and polarizabilities for every record of INPUT.

    Every record gets at least one row; records that cannot be predicted (invalid input,
    element or charge the model was not trained for) get a status other than "ok" and a
    readable error. The exit code is 0 when the run completed, whatever the per-record
    outcomes.
    """
    t0 = time.perf_counter()
    from densnet_core.inputs import InputFileError, detect_format

    try:
        detect_format(input_path)
    except InputFileError as exc:
        raise fail(str(exc)) from None
    if output.exists() and output.is_dir():
        raise fail(f"output {output} is a folder; give a .parquet file path")

    from densnet_core.predict import ModelNotFoundError, resolve_model_dir

    try:
        model_dir = resolve_model_dir(model)
    except ModelNotFoundError as exc:
        raise fail(str(exc)) from None

    from densnet.prefect_env import configure_for_cli, start_server_early

    configure_for_cli()
    boot = start_server_early()

    # torch threads: set once here, before any model is loaded (1 measured fastest)
    import torch

    torch.set_num_threads(1)
    from flows.runners import task_runner
    from flows.screen import screen_flow

    pred_workers = 1 if workers is None else workers
    flow_fn = screen_flow
    if pred_workers > 1 or dask_address:
        flow_fn = screen_flow.with_options(
            task_runner=task_runner(workers=pred_workers, dask_address=dask_address)
        )
    else:  # load the model while Prefect's server boots (the task reuses this Predictor)
        from tasks.screen import get_predictor

        try:
            get_predictor(str(model_dir), batch_size=batch_size, threads=1)
        except Exception as exc:
            raise fail(f"cannot load the model at {model_dir}: {exc}") from None
    if boot is not None:
        boot.join()

    kwargs: dict[str, Any] = {
        "input_path": str(input_path),
        "output_path": str(output),
        "model_dir": str(model_dir),
        "n_conformers": n_conformers,
        "workers": workers,
        "batch_size": batch_size,
        "dask_address": dask_address,
        "top_n": top_n,
        "threads": 1,
    }
    summary = _run_with_progress(flow_fn, kwargs, t0)

    seconds = time.perf_counter() - t0
    n, n_rows = summary["n_records"], summary["n_rows"]
    if n == 0:
        say(f"input {input_path} has no records; wrote an empty table")
    say(
        f"{n} records → {n_rows} predictions in {seconds:.1f} s "
        f"({n / seconds:.1f} mol/s end to end; model {summary['model_id']})"
    )
    say(status_line(summary["status_counts"]))
    say(f"output: {summary['output']}")
    if summary.get("molecules_output"):
        say(f"per-molecule Boltzmann averages: {summary['molecules_output']}")
    say(f'open it: pandas.read_parquet("{summary["output"]}")')


def _run_with_progress(flow_fn: Any, kwargs: dict[str, Any], t0: float) -> dict[str, Any]:
    from rich.console import Console

    from flows.screen import progress_listener

    console = Console(stderr=True)
    if not console.is_terminal:
        return _run(flow_fn, kwargs)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        ids: dict[str, Any] = {}
        started: dict[str, float] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in ids:
                ids[stage] = bar.add_task(stage, total=None, rate="")
                started[stage] = time.perf_counter()
            elapsed = max(time.perf_counter() - started[stage], 1e-9)
            bar.update(ids[stage], completed=done, total=total, rate=f"{done / elapsed:.1f}/s")

        with progress_listener(update):
            return _run(flow_fn, kwargs)


def _run(flow_fn: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        return flow_fn(**kwargs)
    except Exception as exc:
        raise fail(f"the predict run failed: {type(exc).__name__}: {exc}", code=1) from None
