"""Prefect tasks of the conformer stage: thin wrappers around :mod:`densnet_core.conformers`.

A task handles a whole *batch* of records (plain dicts in, plain row dicts out), so the
orchestration cost is paid per batch, not per molecule. RDKit holds the GIL while embedding,
so the batch itself runs in a worker process of a shared process pool
(:func:`densnet_core.conformers.process_batch_in_pool`); the tasks only wait for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from densnet_core.conformers import process_batch_in_pool
from densnet_core.inputs import read_records


@task(name="read-input", cache_policy=NO_CACHE, persist_result=False)
def read_input(input_path: str) -> list[dict[str, Any]]:
    """Input file → records as plain dicts (:func:`densnet_core.inputs.read_records`)."""
    return [r.to_dict() for r in read_records(input_path)]


@task(
    name="conformers-batch",
    task_run_name="conformers-batch-{first_index}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def conformers_batch(
    records: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any],
    workers: int,
    first_index: int = 0,
) -> list[dict[str, Any]]:
    """Conformers-table rows for one batch of records, in input order.

    Parameters
    ----------
    records
        Records in the dict form of :class:`densnet_core.inputs.InputRecord`.
    options
        Keyword arguments of :func:`densnet_core.conformers.generate_conformers`.
    workers
        Size of the process pool the batch runs in (1 = in this process).
    first_index
        ``record_index`` of the first record (names the task run).

    Returns
    -------
    list[dict]
        One or more rows per record (every column of the "conformers" table).
    """
    return process_batch_in_pool(list(records), dict(options), workers)
