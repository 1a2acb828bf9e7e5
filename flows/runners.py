"""Where a flow's tasks run: in this process, on a local Dask cluster, or on an existing one.

PySCF and torch parallelise with OpenMP threads, whose count is process-global; two labelling
tasks must therefore never share a process. ``workers == 1`` runs tasks one at a time in this
process (all cores to each calculation); ``workers > 1`` starts a ``distributed.LocalCluster``
of single-threaded worker processes; ``dask_address`` uses a running Dask cluster (scale-out
to other machines) through prefect-dask's ``DaskTaskRunner``.
"""

from __future__ import annotations

from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from densnet_core.settings import available_cores, get_settings


def task_runner(*, workers: int = 1, dask_address: str | None = None) -> Any:
    """The task runner for ``workers`` local processes or the Dask cluster at ``dask_address``."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    if workers > 1:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            },
        )
    return ThreadPoolTaskRunner(max_workers=1)


def threads_per_worker(
    workers: int, dask_address: str | None = None, threads: int | None = None
) -> int | None:
    """OpenMP threads for each PySCF task.

    ``threads`` if given, else the ``DENSNET_PYSCF_THREADS`` setting if set (> 0), else the
    local cores shared out over ``workers`` (None on Dask: each worker uses its own cores).
    """
    if threads:
        return int(threads)
    configured = get_settings().pyscf_threads
    if configured:
        return configured
    if dask_address:
        return None  # each Dask worker machine uses its own cores
    return max(1, available_cores() // max(1, workers))


def tag_current_run(tag: str) -> None:
    """Add ``tag`` to the current flow run (``@flow`` takes no tags in Prefect 3).

    Does nothing outside a flow run, and never fails the run: a tag is a convenience.
    """
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if not run_id:
        return
    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(run_id).tags or []
            if tag not in current:
                client.update_flow_run(run_id, tags=[*current, tag])
    except Exception:
        pass
