"""Prefect tasks of the label stage: thin wrappers around :mod:`densnet_core.labelling`.

A task labels a batch of conformers and appends every finished label to the label dataset
as soon as it exists, so a killed run loses at most the label in flight. Inputs are plain
values (row dicts, the level as a dict, paths), never PySCF objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from densnet_core import store
from densnet_core.labelling import finished_label_keys, label_into_dataset
from densnet_core.level import LevelOfTheory


@task(
    name="label-batch",
    task_run_name="label-batch-{first_index}",
    cache_policy=NO_CACHE,
    persist_result=False,
    # a worker killed under the task (memory, preemption) is worth one more try; per-molecule
    # failures are rows with a status, never task failures, so they are not retried
    retries=1,
    retry_delay_seconds=5,
)
def label_batch(
    rows: Sequence[Mapping[str, Any]],
    level: Mapping[str, Any],
    labels_dir: str,
    threads: int | None = None,
    max_memory_mb: int = 4000,
    first_index: int = 0,
) -> list[dict[str, Any]]:
    """Label a batch of conformer rows into ``labels_dir``; returns one summary per row.

    Keys finished by then (by another task, an earlier run, or this task's previous try) are
    skipped, so a retry never recomputes a label.
    """
    lot = LevelOfTheory(**level)
    logger = get_run_logger()
    done = finished_label_keys(store.read_dataset(labels_dir, "labels"), lot)

    def report(summary: dict[str, Any]) -> None:
        logger.info(
            "%s: %s in %.1f s %s",
            summary["name"],
            summary["status"],
            summary["wall_seconds"],
            summary["error"][:200],
        )

    return label_into_dataset(
        rows,
        labels_dir,
        lot,
        threads=threads,
        max_memory_mb=max_memory_mb,
        skip_keys=done,
        on_label=report,
    )
