"""The label flow (stage 2): conformers → PySCF labels in a resumable label dataset.

The flow takes any input the conformer stage takes (or a conformers table as it is), skips
every conformer whose label is already in ``labels_dir`` at this level of theory, labels the
rest in batches (one Prefect task per batch; each finished label is written at once), and
leaves a table artifact (labels per status) and a markdown summary. A killed run, started
again, finishes the set without recomputing finished labels.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.runtime import flow_run

from densnet_core import keys as K
from densnet_core import store
from densnet_core.labelling import conformer_key_of, finished_label_keys, row_label_key
from densnet_core.level import LevelOfTheory
from densnet_core.settings import get_settings
from flows.conformers import conformers_flow
from flows.runners import threads_per_worker
from tasks.label import label_batch

LEVEL_FILE = "level.json"


def _run_name() -> str:
    stem = Path(str(flow_run.parameters.get("input_path", "input"))).stem or "input"
    return f"label-{stem}-{datetime.now():%Y-%m-%d-%H%M%S}"


def conformer_rows(input_path: str, labels_dir: str, n_conformers: int) -> list[dict[str, Any]]:
    """Rows of a conformers table: the input itself, or made by the conformer flow."""
    if store.table_name(input_path) == "conformers":
        return store.read_table(input_path, "conformers").to_dict("records")
    out = Path(labels_dir) / "conformers" / f"{Path(input_path).stem}.parquet"
    conformers_flow(input_path=input_path, output_path=str(out), n_conformers=n_conformers)
    return store.read_table(out, "conformers").to_dict("records")


def write_level(labels_dir: str, level: LevelOfTheory) -> None:
    """Record the level of theory of a label dataset (``level.json``), refusing a mismatch.

    Variants of the recorded level with or without polarizability and forces
    (:meth:`~densnet_core.level.LevelOfTheory.full` agrees) may share the folder: their labels
    hold the same density, and every label row carries its own ``level_hash``. The file keeps
    the level of the first run.
    """
    path = Path(labels_dir) / LEVEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        existing = LevelOfTheory(**json.loads(path.read_text()))
        if existing.full() != level.full():
            raise ValueError(
                f"{labels_dir} holds labels at {existing.label}; asked for {level.label}. "
                "Use another folder for another level of theory."
            )
        return
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(level.model_dump(), indent=2) + "\n")
    tmp.replace(path)


@flow(name="label", flow_run_name=_run_name, persist_result=False, log_prints=False)
def label_flow(
    input_path: str,
    labels_dir: str,
    level: LevelOfTheory | None = None,
    n_conformers: int = 1,
    workers: int = 1,
    dask_address: str | None = None,
    batch_size: int = 4,
    max_memory_mb: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Label every conformer of ``input_path`` into the label dataset ``labels_dir``.

    Parameters
    ----------
    input_path
        ``.smi``/``.csv``/``.sdf`` file (conformers are generated first) or a conformers table.
    labels_dir
        Label dataset folder (created; reused and extended on later runs).
    level
        Level of theory (default B3LYP/def2-SVPD, DF, grid 3, fit in def2-universal-jkfit).
    n_conformers
        Conformers per molecule when generating them.
    workers
        Parallel labelling processes (the task runner is chosen by the caller, see
        :func:`flows.runners.task_runner`); PySCF threads are shared out accordingly.
    dask_address
        Scheduler of an existing Dask cluster the tasks run on (then PySCF uses each worker's
        own cores).
    batch_size
        Conformers per task.
    max_memory_mb
        PySCF memory per calculation, MB (None: the ``DENSNET_PYSCF_MAX_MEMORY_MB`` setting,
        4000 by default).
    threads
        OpenMP threads per PySCF calculation (None: ``DENSNET_PYSCF_THREADS`` if set, else the
        cores shared out over ``workers``; see :func:`flows.runners.threads_per_worker`).

    Returns
    -------
    dict
        ``labels_dir``, ``n_rows`` (conformer rows of the input), ``n_labelled`` (computed
        now), ``n_skipped`` (already there), ``status_counts`` (over the input's rows),
        ``seconds``.
    """
    start = time.perf_counter()
    logger = get_run_logger()
    level = level or LevelOfTheory()
    write_level(labels_dir, level)
    rows = conformer_rows(input_path, labels_dir, n_conformers)
    done = finished_label_keys(store.read_dataset(labels_dir, "labels"), level)
    todo = [r for r in rows if row_label_key(r, level) not in done]
    logger.info(
        "%d conformer rows, %d labelled already, %d to label at %s",
        len(rows),
        len(rows) - len(todo),
        len(todo),
        level.label,
    )
    threads = threads_per_worker(workers, dask_address, threads)
    max_memory_mb = max_memory_mb or get_settings().pyscf_max_memory_mb
    progress_id = create_progress_artifact(
        progress=0.0 if todo else 100.0, key="label-progress", description="labels computed (%)"
    )
    futures = [
        label_batch.submit(
            todo[i : i + batch_size],
            level.model_dump(),
            str(labels_dir),
            threads=threads,
            max_memory_mb=max_memory_mb,
            first_index=i,
        )
        for i in range(0, len(todo), batch_size)
    ]
    n_done = 0
    failed_batches = 0
    for fut in as_completed(futures):
        result = fut.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            failed_batches += 1
            logger.error("a label batch failed: %r", result)
            continue
        n_done += len(result)
        update_progress_artifact(progress_id, progress=100.0 * n_done / max(len(todo), 1))

    labels = store.read_dataset(labels_dir, "labels")
    wanted = {conformer_key_of(r) for r in rows}
    mine = labels[(labels[K.LEVEL_HASH] == level.hash) & labels[K.CONFORMER_KEY].isin(wanted)]
    mine = mine.drop_duplicates(K.CONFORMER_KEY, keep="last")
    counts = mine[K.STATUS].value_counts().to_dict() if len(mine) else {}
    missing = len(wanted) - len(mine)
    if missing:
        counts["not_labelled"] = missing
    summary = {
        "labels_dir": str(labels_dir),
        "n_rows": len(rows),
        "n_labelled": n_done,
        "n_skipped": len(rows) - len(todo),
        "status_counts": {str(k): int(v) for k, v in counts.items()},
        "failed_batches": failed_batches,
        "seconds": time.perf_counter() - start,
        "level": level.label,
    }
    ok = mine[mine[K.STATUS] == K.STATUS_OK]
    create_table_artifact(
        table=[{K.STATUS: s, "labels": n} for s, n in summary["status_counts"].items()],
        key="label-status-counts",
        description=f"Labels per status for {Path(input_path).name} at {level.label}",
    )
    create_markdown_artifact(
        markdown="\n".join(
            [
                f"# Labels: {Path(input_path).name}",
                "",
                f"- level of theory: `{level.label}` (hash `{level.hash}`)",
                f"- conformers: {len(rows)}; computed now: {n_done}; "
                f"already labelled: {summary['n_skipped']}",
                f"- median wall time per label: {ok[K.WALL_SECONDS].median():.1f} s"
                if len(ok)
                else "- no finished labels",
                f"- median fitting floor: {ok[K.FIT_ERROR_PERCENT].median():.2f} %"
                if len(ok)
                else "",
                f"- dataset: `{labels_dir}`",
                "",
                "| status | labels |",
                "|---|---|",
                *[f"| {s} | {n} |" for s, n in summary["status_counts"].items()],
            ]
        ),
        key="label-summary",
        description="Label stage summary",
    )
    if failed_batches:
        raise RuntimeError(f"{failed_batches} label batch(es) failed; rerun to resume")
    return summary
