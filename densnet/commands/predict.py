"""``densnet predict INPUT -o OUT.parquet``: dipoles and polarizabilities from the density model.

By default the command runs the library directly (:func:`densnet_core.predict.screen_file`: the
conformer stage — for a 3D SDF only the parse — is handed to its process pool before torch is
imported, and runs while this process imports and loads the model; batches that finish while
the pool still works are predicted here, the rest in processes forked from the loaded model, one
torch thread each) and never imports Prefect. Starting Prefect's
temporary server costs ~10-25 s of wall time on a 2-core machine, longer than predicting the
whole 1,017-compound ChEMBL series, so it is opt-in: ``--prefect`` runs ``flows/screen.py``'s
``screen_flow`` (flow and task runs, progress, top-N and summary artifacts in the Prefect UI).
``densnet run`` always uses Prefect.

``--model`` may name a single model or an ensemble directory (``densnet train --ensemble K``):
with an ensemble the rows carry the calibrated spreads ``dipole_debye_std`` / ``alpha_iso_au_std``.
Every ok row carries ``ood`` / ``ood_reason`` (outside the training domain); the summary counts
them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from densnet.console import (
    check_table_paths,
    fail,
    request_fast_exit,
    say,
    status_line,
    transient_progress,
)

ProgressFn = Callable[[str, int, int], None]


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
            help="Model or ensemble directory [default: DENSNET_MODEL_DIR or "
            "models/densnet-default].",
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
            help="Processes for conformers and prediction [default: DENSNET_WORKERS or all "
            "cores; prediction workers are forked from the loaded model, 1 torch thread each].",
        ),
    ] = None,
    threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="Torch intra-op threads when predicting in one process (--workers 1).",
        ),
    ] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Molecules per forward pass.")] = 64,
    prefect: Annotated[
        bool,
        typer.Option(
            "--prefect",
            help="Run as the Prefect flow 'screen' (tracked in the Prefect UI, with artifacts). "
            "Starts Prefect's temporary server (~10-25 s) unless PREFECT_API_URL is set.",
        ),
    ] = False,
    dask_address: Annotated[
        str | None,
        typer.Option(
            help="Scheduler address of an existing Dask cluster, e.g. tcp://host:8786 "
            "(implies --prefect)."
        ),
    ] = None,
    top_n: Annotated[
        int, typer.Option(min=0, help="Candidates in the top-N artifact (--prefect only).")
    ] = 20,
) -> None:
    """Predict dipole moments and polarizabilities for every record of INPUT.

    Every record gets at least one row; records that cannot be predicted (invalid input,
    element or charge the model was not trained for) get a status other than "ok" and a
    readable error. The exit code is 0 when the run completed, whatever the per-record
    outcomes.
    """
    t0 = time.perf_counter()
    check_table_paths(input_path, output)

    from densnet_core.predict import ModelNotFoundError, resolve_model_dir

    try:
        model_dir = resolve_model_dir(model)
    except ModelNotFoundError as exc:
        raise fail(str(exc)) from None

    use_prefect = prefect or dask_address is not None
    with _progress_bar() as update:
        job = _Job(input_path, output, model_dir, n_conformers, workers, threads, batch_size)
        if use_prefect:
            summary = _run_flow(job, dask_address, top_n, update)
        else:
            summary = _run_local(job, update)

    seconds = time.perf_counter() - t0
    n, n_rows = summary["n_records"], summary["n_rows"]
    if n == 0:
        say(f"input {input_path} has no records; wrote an empty table")
    mode = "Prefect flow" if use_prefect else f"no Prefect, {summary.get('workers', 1)} workers"
    say(
        f"{n} records → {n_rows} predictions in {seconds:.1f} s "
        f"({n / seconds:.1f} mol/s end to end, {mode}; model {summary['model_id']})"
    )
    say(status_line(summary["status_counts"]))
    n_ok = summary["status_counts"].get("ok", 0)
    if n_ok:
        n_ood = int(summary.get("n_ood", 0))
        kind = (
            f"ensemble of {summary['n_members']}: spreads in dipole_debye_std, alpha_iso_au_std"
            if summary.get("n_members", 1) > 1
            else "single model: no spreads, domain checks only"
        )
        say(
            f"out of the training distribution: {n_ood} of {n_ok} ok rows "
            f"(column ood, reasons in ood_reason; {kind})"
        )
    say(f"output: {summary['output']}")
    if summary.get("conformers_output"):
        say(f"conformers: {summary['conformers_output']}")
    if summary.get("molecules_output"):
        say(f"per-molecule Boltzmann averages: {summary['molecules_output']}")
    say(f'open it: pandas.read_parquet("{summary["output"]}")')
    if not use_prefect:
        request_fast_exit()  # every table is written and closed; no Prefect, no pools left


@dataclass(frozen=True)
class _Job:
    """What both paths (library and Prefect flow) are asked to do."""

    input_path: Path
    output: Path
    model_dir: Path
    n_conformers: int
    workers: int | None
    threads: int
    batch_size: int

    def options(self) -> dict[str, Any]:
        """The keyword arguments of both paths: ``model_dir``, ``n_conformers``, ``workers``,
        ``threads``, ``batch_size``."""
        return {k: v for k, v in asdict(self).items() if k not in ("input_path", "output")}


def _run_local(job: _Job, update: ProgressFn | None) -> dict[str, Any]:
    """The library path (:func:`densnet_core.predict.screen_file`); Prefect is never imported."""
    import gc

    gc.disable()  # start-up makes ~10^6 long-lived objects: no collections while it runs
    # Hand the conformer work (for an SDF: parsing) to its worker pool first, so that it runs
    # on the other core while this process imports torch and loads the model (~3-4 s).
    from densnet_core.conformer_pool import start_conformer_stage
    from densnet_core.settings import get_settings

    workers = max(1, int(job.workers or get_settings().n_workers()))
    try:
        stage = start_conformer_stage(
            job.input_path, workers=workers, n_conformers=job.n_conformers
        )
    except Exception as exc:
        raise fail(f"the predict run failed: {type(exc).__name__}: {exc}", code=1) from None
    from densnet_core.allocator import retain_freed_memory
    from densnet_core.predict import import_e3nn_without_dynamo, screen_file

    retain_freed_memory()  # before torch: keep big tensors' pages for the next batch
    import torch

    torch.set_num_threads(job.threads)  # before any op; forked workers run 1 thread each
    import_e3nn_without_dynamo()
    try:
        return screen_file(
            job.input_path,
            job.output,
            **{**job.options(), "workers": workers},
            on_progress=update,
            freeze_gc=True,  # re-enables the collector once the model is loaded
            conformer_stage=stage,
        )
    except Exception as exc:
        raise fail(f"the predict run failed: {type(exc).__name__}: {exc}", code=1) from None


def _run_flow(
    job: _Job, dask_address: str | None, top_n: int, update: ProgressFn | None
) -> dict[str, Any]:
    """The Prefect path: ``flows.screen.screen_flow`` on the (temporary) server."""
    from densnet.prefect_env import configure_for_cli, start_server_early

    configure_for_cli()
    boot = start_server_early()

    # torch threads: set once here, before any model is loaded
    import torch

    torch.set_num_threads(job.threads)
    from flows.runners import task_runner
    from flows.screen import progress_listener, screen_flow

    pred_workers = 1 if job.workers is None else job.workers
    flow_fn = screen_flow
    if pred_workers > 1 or dask_address:
        flow_fn = screen_flow.with_options(
            task_runner=task_runner(workers=pred_workers, dask_address=dask_address)
        )
    else:  # load the model while Prefect's server boots (the task reuses this Predictor)
        from tasks.screen import get_predictor

        try:
            get_predictor(str(job.model_dir), batch_size=job.batch_size, threads=job.threads)
        except Exception as exc:
            raise fail(f"cannot load the model at {job.model_dir}: {exc}") from None
    if boot is not None:
        boot.join()

    kwargs: dict[str, Any] = {
        **job.options(),
        "input_path": str(job.input_path),
        "output_path": str(job.output),
        "model_dir": str(job.model_dir),
        "dask_address": dask_address,
        "top_n": top_n,
    }
    try:
        if update is None:
            return flow_fn(**kwargs)
        with progress_listener(update):
            return flow_fn(**kwargs)
    except Exception as exc:
        raise fail(f"the predict run failed: {type(exc).__name__}: {exc}", code=1) from None


@contextmanager
def _progress_bar() -> Iterator[ProgressFn | None]:
    """A transient progress bar per stage (rate, ETA) on a terminal; yields its update
    function ``update(stage, done, total)``, or None when stderr is not a terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    # no refresh thread: prediction workers are forked from here
    with transient_progress(console, "{task.description:>10}", auto_refresh=False) as bar:
        ids: dict[str, Any] = {}
        started: dict[str, float] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in ids:
                ids[stage] = bar.add_task(stage, total=None, rate="")
                started[stage] = time.perf_counter()
            elapsed = max(time.perf_counter() - started[stage], 1e-9)
            bar.update(ids[stage], completed=done, total=total, rate=f"{done / elapsed:.1f}/s")
            bar.refresh()

        yield update
