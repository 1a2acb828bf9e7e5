"""Worker processes for the conformer stage, and conformer batches that stream as they finish.

This module does not import RDKit (the workers do): a process that only *hands out* conformer
work — ``densnet predict`` starting the SDF parse before it imports torch — stays light. The
RDKit work itself is :func:`densnet_core.conformers.process_batch_dicts`.

- :func:`shared_pool` — the process-wide pool (``spawn`` start: safe with threads running);
- :class:`ConformerBatches` — a batch split of records submitted to that pool at once, iterated
  in completion order (so a consumer can use the first batches while the rest are computed);
- :func:`process_records` — all rows in input order (the library path's conformer stage);
- :func:`start_conformer_stage` — read an input file and submit its records.

A worker process that crashes inside RDKit costs only the record it crashed on: unfinished
batches are redone in a fresh pool, one record at a time for a batch that crashes again.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from densnet_core.inputs import InputRecord, split_batches

Rows = list[dict[str, Any]]


def _run_batch(records: Sequence[Mapping[str, Any]], options: Mapping[str, Any]) -> Rows:
    """The pool's work item: :func:`densnet_core.conformers.process_batch_dicts`."""
    from densnet_core.conformers import process_batch_dicts

    return process_batch_dicts(records, options)


def _init_worker() -> None:
    # one molecule per process at a time: keep BLAS/OpenMP from oversubscribing the cores
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from rdkit import RDLogger  # the worker's RDKit import happens here, at start-up

    import densnet_core.conformers  # noqa: F401 - warm the worker

    RDLogger.DisableLog("rdApp.*")


def _ping() -> int:
    return os.getpid()


def make_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool for conformer batches.

    The workers are *forked* when that is safe: on Linux, when this process runs no other
    thread and has not imported torch (whose OpenMP pool does not survive a fork), as on the
    command line before its torch import. A forked worker skips a fresh interpreter's
    start-up; it imports RDKit in its initializer, in parallel with this process. Otherwise
    (a Prefect flow's threads, a notebook that imported torch, macOS) they are spawned.
    """
    ctx = multiprocessing.get_context("fork" if _fork_is_safe() else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)


def _fork_is_safe() -> bool:
    """Whether worker processes can be forked from this one (see :func:`make_pool`)."""
    return (
        sys.platform.startswith("linux")  # macOS frameworks are not fork-safe (spawn there)
        and threading.active_count() == 1
        and "torch" not in sys.modules
    )


_SHARED_POOLS: dict[int, ProcessPoolExecutor] = {}


def shared_pool(workers: int, *, warm: bool = False) -> ProcessPoolExecutor:
    """The process-wide pool with ``workers`` processes (created on first use).

    Parameters
    ----------
    workers
        Number of worker processes.
    warm
        Start all workers now (in the background) so their RDKit import overlaps with
        other start-up work.
    """
    pool = _SHARED_POOLS.get(workers)
    if pool is None:
        pool = make_pool(workers)
        _SHARED_POOLS[workers] = pool
        if warm:
            for _ in range(workers):
                pool.submit(_ping)
    return pool


def shutdown_shared_pools() -> None:
    """Shut down the pools made by :func:`shared_pool`."""
    while _SHARED_POOLS:
        _, pool = _SHARED_POOLS.popitem()
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown_shared_pools)


def _discard_pool(workers: int) -> None:
    pool = _SHARED_POOLS.pop(workers, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def _crash_row(record: Mapping[str, Any]) -> dict[str, Any]:
    from densnet_core import keys as K
    from densnet_core.conformers import _base_row, _fail

    return _fail(
        _base_row(InputRecord.from_dict(record)),
        K.STATUS_EMBEDDING_FAILED,
        "the worker process crashed while processing this record",
    )[0]


def process_batch_in_pool(
    records: Sequence[Mapping[str, Any]], options: Mapping[str, Any], workers: int
) -> Rows:
    """Run one batch in the shared pool of ``workers`` processes (in-process for 1 worker).

    If a worker process dies (a crash inside RDKit), the pool is replaced and the batch is
    redone one record at a time, so only the record that crashes gets an error row.
    """
    if workers <= 1:
        return _run_batch(records, options)
    try:
        return shared_pool(workers).submit(_run_batch, list(records), dict(options)).result()
    except BrokenProcessPool:
        _discard_pool(workers)
    rows: Rows = []
    for rec in records:
        try:
            rows.extend(shared_pool(workers).submit(_run_batch, [rec], dict(options)).result())
        except BrokenProcessPool:
            _discard_pool(workers)
            rows.append(_crash_row(rec))
    return rows


def pool_batch_size(n_records: int, workers: int) -> int:
    """Records per batch on the library path: small batches, so that the workers finish together.

    A batch costs ~1 ms of inter-process traffic and ~0.1 s per record of work, so 16 records
    per batch keep the overhead near 0.1 % while the last batch leaves a core idle for ~1.5 s
    at most; fewer when there are few records (at least 8 batches per worker).
    """
    return max(1, min(16, math.ceil(n_records / (8 * max(1, workers)))))


class ConformerBatches:
    """Records cut into batches and submitted to the shared pool at once; iterate for results.

    Iterating yields ``(batch_number, rows)`` as batches finish (completion order; batch
    numbers follow the input order), so a consumer can predict the first batches while the
    pool works on the rest. Without a pool the batches are computed in this process, in
    order, as the iteration asks for them. Iterate once.

    Parameters
    ----------
    records
        Input records.
    workers
        Worker processes; 1 runs in this process.
    batch_size
        Records per batch (default :func:`pool_batch_size`).
    use_pool
        Run in the worker pool even with ``workers=1`` (so that this process stays free,
        e.g. to load a model meanwhile); default: a pool when ``workers > 1``.
    **options
        Keyword arguments of :func:`densnet_core.conformers.generate_conformers`.
    """

    def __init__(
        self,
        records: Sequence[InputRecord],
        *,
        workers: int = 1,
        batch_size: int | None = None,
        use_pool: bool | None = None,
        **options: Any,
    ) -> None:
        self.started = time.perf_counter()  # when the batches were submitted
        self.n_records = len(records)
        self.workers = max(1, workers)
        self.use_pool = self.workers > 1 if use_pool is None else use_pool
        self.options = dict(options)
        if batch_size is None:
            batch_size = pool_batch_size(len(records), self.workers)
        batches = split_batches(len(records), self.workers, batch_size)
        self.payloads = [[records[i].to_dict() for i in b] for b in batches]
        self._futures: dict[Future[Rows], int] = {}
        if self.use_pool and self.payloads:
            try:
                pool = shared_pool(self.workers)
                self._futures = {
                    pool.submit(_run_batch, payload, self.options): i
                    for i, payload in enumerate(self.payloads)
                }
            except BrokenProcessPool:  # the pool broke before this call (e.g. an earlier crash)
                _discard_pool(self.workers)
                self._futures = {}

    def __len__(self) -> int:
        """Number of batches."""
        return len(self.payloads)

    def working(self) -> bool:
        """Whether the pool is still computing some batch (False without a pool)."""
        return any(not f.done() for f in self._futures)

    def batch_records(self, number: int) -> int:
        """Records in batch ``number``."""
        return len(self.payloads[number])

    def __iter__(self) -> Iterator[tuple[int, Rows]]:
        if not self.use_pool:
            for i, payload in enumerate(self.payloads):
                yield i, _run_batch(payload, self.options)
            return
        done: set[int] = set()
        for fut in as_completed(self._futures):
            i = self._futures[fut]
            try:
                rows = fut.result()
            except BrokenProcessPool:
                continue  # redone below
            done.add(i)
            yield i, rows
        # A crashed worker breaks the whole pool: every unfinished batch is redone in a fresh
        # one, a record at a time only for a batch that crashes again.
        for i, payload in enumerate(self.payloads):
            if i not in done:
                yield i, process_batch_in_pool(payload, self.options, self.workers)


def process_records(
    records: Sequence[InputRecord],
    *,
    workers: int = 1,
    batch_size: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    use_pool: bool | None = None,
    **options: Any,
) -> Rows:
    """Process many records in parallel worker processes (the library path, no Prefect).

    The batches go to the process-wide pool of :func:`shared_pool` (started once, reused by
    later calls; start it early with ``shared_pool(workers, warm=True)``). A worker that
    crashes costs only the record it crashed on.

    Parameters
    ----------
    records, workers, batch_size, use_pool, **options
        As for :class:`ConformerBatches`.
    on_progress
        Called with the number of records finished after each batch (in completion order).

    Returns
    -------
    list[dict]
        Rows in input order.
    """
    batches = ConformerBatches(
        records, workers=workers, batch_size=batch_size, use_pool=use_pool, **options
    )
    results: list[Rows | None] = [None] * len(batches)
    for i, rows in batches:
        results[i] = rows
        if on_progress:
            on_progress(batches.batch_records(i))
    return [row for batch in results if batch is not None for row in batch]


def start_conformer_stage(
    input_path: str | os.PathLike[str],
    *,
    workers: int,
    n_conformers: int = 1,
    sdf_energy: bool = False,
) -> ConformerBatches | None:
    """Read an input file and submit its records to the conformer pool; None for a table.

    The pool's size follows what the records need. Records that must be embedded (SMILES,
    2D SDF) get ``workers`` processes when there are at least 8 per worker, else they run in
    this process when iterated. 3D SDF records only need parsing (~4 CPU-ms each): one worker
    process fewer, at least one, so that the caller's own start-up (imports, model load) has a
    core meanwhile.

    Parameters
    ----------
    input_path
        ``.smi``/``.csv``/``.sdf`` file (a conformers table gives None: nothing to compute).
    workers
        Cores to use.
    n_conformers
        Conformers per molecule.
    sdf_energy
        MMFF94 single points of 3D SDF records (off: the prediction path never uses them;
        see :func:`densnet_core.conformers.generate_conformers`).

    Returns
    -------
    ConformerBatches or None
        The submitted batches.

    Raises
    ------
    densnet_core.inputs.InputFileError
        Missing or unreadable input.
    """
    from densnet_core.inputs import detect_format, read_records

    if detect_format(input_path) == "conformers":
        return None
    records = read_records(input_path)
    workers = max(1, workers)
    embed_workers = workers if len(records) >= 8 * workers else 1
    use_pool = embed_workers > 1
    if use_pool and not any(r.needs_embedding for r in records):
        embed_workers = workers - 1
    if use_pool:
        shared_pool(embed_workers, warm=True)
    return ConformerBatches(
        records,
        workers=embed_workers,
        use_pool=use_pool,
        n_conformers=n_conformers,
        sdf_energy=sdf_energy,
    )
