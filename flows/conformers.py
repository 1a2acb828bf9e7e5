"""The conformer flow (stage 1): input file → conformers table, batched over a process pool.

The flow reads the records, splits them into contiguous batches (at least one per worker),
runs one :func:`tasks.conformers.conformers_batch` task per batch with at most ``workers`` in
flight, gathers the rows in input order, writes the table atomically, and leaves a table
artifact (records per status) and a markdown summary on the flow run.

It is what ``densnet conformers --prefect``, ``densnet label`` and the screening and pipeline
flows run. Plain ``densnet conformers`` runs the same batches in the same process pool without
Prefect (:func:`densnet_core.conformers.conformers_table`): on a 2-core machine, starting
Prefect's temporary server (~30 CPU-seconds with a fresh database) costs about as much as the
conformers of a thousand molecules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from densnet_core import keys as K
from densnet_core import store
from densnet_core.conformers import (
    DEFAULT_ELEMENTS,
    DEFAULT_SEED,
    failed_rows,
    shared_pool,
    status_counts,
)
from densnet_core.inputs import split_batches
from densnet_core.settings import get_settings
from tasks.conformers import conformers_batch, read_input

ProgressListener = Callable[[int, int], None]
_LISTENERS: list[ProgressListener] = []


@contextmanager
def progress_listener(listener: ProgressListener) -> Iterator[None]:
    """Call ``listener(records_done, records_total)`` as batches finish, within this block.

    Flow parameters must be serialisable, so a progress callback (the CLI's progress bar)
    is registered here instead of being passed to the flow.
    """
    _LISTENERS.append(listener)
    try:
        yield
    finally:
        _LISTENERS.remove(listener)


def _notify(done: int, total: int) -> None:
    for listener in list(_LISTENERS):
        try:
            listener(done, total)
        except Exception:  # a display problem must not fail the flow
            pass


def _run_name() -> str:
    params = flow_run.parameters
    stem = Path(str(params.get("input_path", "input"))).stem or "input"
    return f"conformers-{stem}-{datetime.now():%Y%m%d-%H%M%S}"


@task(name="write-conformers", cache_policy=NO_CACHE, persist_result=False)
def write_conformers(rows: list[dict[str, Any]], output_path: str) -> str:
    """Write the conformers table atomically; returns its path."""
    return str(store.write_table(rows, output_path, "conformers"))


def _summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Conformers: {Path(summary['input']).name}",
        "",
        f"- records: **{summary['n_records']}**, rows: {summary['n_rows']}",
        f"- wall time: {summary['seconds']:.1f} s "
        f"({summary['records_per_second']:.1f} records/s, {summary['workers']} workers)",
        f"- output: `{summary['output']}`",
        "",
        "| status | records |",
        "|---|---|",
    ]
    lines += [f"| {s} | {n} |" for s, n in summary["status_counts"].items()]
    return "\n".join(lines)


@flow(
    name="conformers",
    flow_run_name=_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=64),
    persist_result=False,
    log_prints=False,
)
def conformers_flow(
    input_path: str,
    output_path: str,
    n_conformers: int = 1,
    seed: int = DEFAULT_SEED,
    max_heavy_atoms: int = 100,
    elements: list[str] | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
    mmff_max_iters: int | None = None,
    sdf_energy: bool = True,
) -> dict[str, Any]:
    """Generate conformers for every record of ``input_path`` and write ``output_path``.

    Parameters
    ----------
    input_path
        ``.smi``/``.csv``/``.sdf`` file or a conformers table.
    output_path
        Destination Parquet file (conformers schema).
    n_conformers, seed, max_heavy_atoms, mmff_max_iters, sdf_energy
        See :func:`densnet_core.conformers.generate_conformers`.
    elements
        Supported element symbols (default H C N O F P S Cl Br).
    workers
        Parallel worker processes (default: ``DENSNET_WORKERS`` or the usable cores).
    batch_size
        Records per task (default: about 8 batches per worker, 8–200 records).

    Returns
    -------
    dict
        ``output``, ``n_records``, ``n_rows``, ``status_counts`` (records per status),
        ``seconds``, ``records_per_second``, ``workers``.
    """
    start = time.perf_counter()
    logger = get_run_logger()
    workers = workers or get_settings().n_workers()
    if workers > 1:
        shared_pool(workers, warm=True)  # worker start-up overlaps with reading the input
    options: dict[str, Any] = {
        "n_conformers": n_conformers,
        "seed": seed,
        "max_heavy_atoms": max_heavy_atoms,
        "supported_elements": tuple(elements or DEFAULT_ELEMENTS),
        "sdf_energy": sdf_energy,
    }
    if mmff_max_iters is not None:
        options["mmff_max_iters"] = mmff_max_iters

    records = read_input(input_path)
    total = len(records)
    batches = split_batches(total, workers, batch_size)
    logger.info("%d records in %d batches, %d workers", total, len(batches), workers)
    progress_id = create_progress_artifact(
        progress=0.0, key="conformers-progress", description="records processed (%)"
    )
    _notify(0, total)

    # Bounded submission: the pool has `workers` processes; one extra batch is queued ahead
    # so that no worker waits on the orchestration between two batches.
    window = workers + 1 if workers > 1 else 1
    results: dict[int, list[dict[str, Any]]] = {}
    pending = list(enumerate(batches))
    in_flight: dict[Any, tuple[int, range]] = {}
    done_records = 0
    while pending or in_flight:
        while pending and len(in_flight) < window:
            i, b = pending.pop(0)
            fut = conformers_batch.submit(
                [records[j] for j in b], options, workers, first_index=b.start
            )
            in_flight[fut] = (i, b)
        fut = next(as_completed(list(in_flight)))
        i, b = in_flight.pop(fut)
        result = fut.result(raise_on_failure=False)
        if isinstance(result, BaseException):  # the task itself failed: keep every record
            logger.error("batch at record %d failed: %r", b.start, result)
            result = failed_rows(
                [records[j] for j in b],
                K.STATUS_EMBEDDING_FAILED,
                f"batch task failed: {type(result).__name__}: {result}",
            )
        results[i] = result
        done_records += len(b)
        _notify(done_records, total)
        if total:
            update_progress_artifact(progress_id, progress=100.0 * done_records / total)

    rows = [row for i in range(len(batches)) for row in results[i]]
    out = write_conformers(rows, output_path)
    seconds = time.perf_counter() - start
    counts = status_counts(rows)
    summary: dict[str, Any] = {
        "input": str(input_path),
        "output": out,
        "n_records": total,
        "n_rows": len(rows),
        "status_counts": counts,
        "seconds": seconds,
        "records_per_second": total / seconds if seconds > 0 else 0.0,
        "workers": workers,
    }
    create_table_artifact(
        table=[
            {K.STATUS: s, "records": n, "percent": round(100.0 * n / max(total, 1), 1)}
            for s, n in counts.items()
        ],
        key="conformers-status-counts",
        description=f"Records per status for {Path(input_path).name}",
    )
    create_markdown_artifact(
        markdown=_summary_markdown(summary),
        key="conformers-summary",
        description="Conformer stage summary",
    )
    logger.info("wrote %d rows for %d records to %s: %s", len(rows), total, out, counts)
    return summary
