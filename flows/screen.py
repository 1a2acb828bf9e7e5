"""The screening flow: input file → conformers → predicted observables (predictions table).

Stages:

1. conformers: a conformers table is used as it is; any other input (``.smi``, ``.csv``,
   ``.sdf`` — 3D SDF coordinates are kept by the conformer stage) goes through
   :func:`flows.conformers.conformers_flow` as a subflow, which writes
   ``<output stem>.conformers.parquet`` next to the output (kept: it is the provenance of the
   geometries, and a rerun with other models can start from it);
2. prediction: one :func:`tasks.screen.predict_chunk` task per chunk of 256–1024 conformer
   rows (the model is loaded once per worker process), results gathered in input order;
3. the predictions table is written atomically, plus ``<output stem>.molecules.parquet``
   (Boltzmann-averaged per molecule) when ``n_conformers > 1``.

Artifacts on the flow run: a progress artifact (conformer rows predicted, %), a table of the
top-N candidates by ``score`` (with their ``ood`` verdict and, for an ensemble, the ``*_std``
spreads), and a markdown summary (rows per status, ok rows out of distribution, model id, the
model card's validation metrics, stage timings). ``model_dir`` may be a single model or an
ensemble directory (:class:`densnet_core.predict.Predictor` tells them apart).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
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
from densnet_core.inputs import InputFileError, detect_format
from densnet_core.predict import (
    ALPHA_ANISO_AU,
    model_identity,
    ood_count,
    read_conformer_rows,
    resolve_model_dir,
    sibling_path,
    status_counts,
    write_prediction_tables,
)
from flows.runners import tag_current_run
from tasks.screen import failed_prediction_rows, predict_chunk

SCORES = (K.ALPHA_ISO_AU, K.DIPOLE_DEBYE, ALPHA_ANISO_AU, K.N_ELECTRONS)

ProgressListener = Callable[[str, int, int], None]
_LISTENERS: list[ProgressListener] = []


@contextmanager
def progress_listener(listener: ProgressListener) -> Iterator[None]:
    """Call ``listener(stage, done, total)`` as work finishes, within this block.

    ``stage`` is ``"conformers"`` (records embedded) or ``"predict"`` (conformer rows
    predicted). Flow parameters must be serialisable, so the CLI's progress bar registers
    here instead of being passed to the flow.
    """
    _LISTENERS.append(listener)
    try:
        yield
    finally:
        _LISTENERS.remove(listener)


def _notify(stage: str, done: int, total: int) -> None:
    for listener in list(_LISTENERS):
        try:
            listener(stage, done, total)
        except Exception:  # a display problem must not fail the flow
            pass


def _run_name() -> str:
    stem = Path(str(flow_run.parameters.get("input_path", "input"))).stem or "input"
    return f"screen-{stem}-{datetime.now():%Y-%m-%d-%H%M%S}"


def chunk_ranges(n_rows: int, chunk_size: int | None = None) -> list[range]:
    """Contiguous chunks of about n/8 rows, between 256 and 1024 (or ``chunk_size``)."""
    if n_rows <= 0:
        return []
    size = chunk_size or min(1024, max(256, math.ceil(n_rows / 8)))
    return [range(i, min(i + size, n_rows)) for i in range(0, n_rows, size)]


def conformer_table_rows(path: str | Path) -> list[dict[str, Any]]:
    """The prediction-relevant columns of a conformers table as plain dicts, in order.

    Plain Python lists (not numpy arrays) for ``numbers`` and ``positions_angstrom``: the rows
    are Prefect task parameters.
    """
    return read_conformer_rows(path, arrays=False)


@task(name="write-predictions", cache_policy=NO_CACHE, persist_result=False)
def _top_candidates(
    rows: list[dict[str, Any]], score: str, top_n: int, molecules: Any | None
) -> list[dict[str, Any]]:
    """The top-N ok rows (or Boltzmann-averaged molecules) by ``score``, best first."""
    if molecules is not None:
        ok = molecules[molecules[K.STATUS] == K.STATUS_OK].to_dict("records")
    else:
        ok = [r for r in rows if r[K.STATUS] == K.STATUS_OK]
    ok = [r for r in ok if r.get(score) is not None and math.isfinite(float(r[score]))]
    ok.sort(key=lambda r: float(r[score]), reverse=True)
    out = []
    for rank, r in enumerate(ok[:top_n], start=1):
        item = {
            "rank": rank,
            K.RECORD_INDEX: int(r[K.RECORD_INDEX]),
            K.NAME: r[K.NAME],
            K.SMILES: r[K.SMILES],
        }
        if molecules is None:
            item[K.CONFORMER_ID] = int(r[K.CONFORMER_ID])
        for c in (K.ALPHA_ISO_AU, K.DIPOLE_DEBYE, ALPHA_ANISO_AU):
            item[c] = round(float(r.get(c, math.nan)), 4)
        for c in (K.ALPHA_ISO_AU_STD, K.DIPOLE_DEBYE_STD):
            value = r.get(c)
            if value is not None and math.isfinite(float(value)):  # ensembles only
                item[c] = round(float(value), 4)
        flag = r.get(K.OOD)
        item[K.OOD] = bool(flag) if flag is not None and flag == flag else False  # NaN: no
        item[K.OOD_REASON] = str(r.get(K.OOD_REASON) or "")
        out.append(item)
    return out


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, int | float) and not isinstance(x, bool) else str(x)


def _metrics_markdown(card: dict[str, Any]) -> list[str]:
    val = (card.get("metrics") or {}).get("validation") or {}
    model, prior = val.get("model") or {}, val.get("prior") or {}
    if not model:
        return ["- model card: no validation metrics"]
    lines = ["", "| validation metric | model | SAD prior |", "|---|---|---|"]
    for name, value in model.items():
        p = prior.get(name)
        lines.append(f"| {name} | {_fmt(value)} | {'' if p is None else _fmt(p)} |")
    return lines


def _summary_markdown(s: dict[str, Any]) -> str:
    lines = [
        f"# Screen: {Path(s['input']).name}",
        "",
        f"- model: `{s['model_id']}` (`{s['model_dir']}`)",
        f"- records: **{s['n_records']}**, conformer rows: {s['n_rows']}, "
        f"predicted ok: {s['status_counts'].get(K.STATUS_OK, 0)}, of which out of the "
        f"training distribution (`ood`): **{s.get('n_ood', 0)}**",
        f"- wall time: {s['seconds']:.1f} s ({s['rows_per_second']:.1f} conformers/s); "
        + ", ".join(f"{k} {v:.2f} s" for k, v in s["stage_seconds"].items()),
        f"- predictions: `{s['output']}`",
    ]
    if s.get("molecules_output"):
        lines.append(f"- per-molecule Boltzmann averages: `{s['molecules_output']}`")
    if s.get("conformers_output"):
        lines.append(f"- conformers: `{s['conformers_output']}`")
    lines += ["", "| status | rows |", "|---|---|"]
    lines += [f"| {st} | {n} |" for st, n in s["status_counts"].items()]
    lines += _metrics_markdown(s.get("model_card") or {})
    return "\n".join(lines)


@flow(
    name="screen",
    flow_run_name=_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=1),
    persist_result=False,
    log_prints=False,
)
def screen_flow(
    input_path: str,
    output_path: str,
    model_dir: str | None = None,
    n_conformers: int = 1,
    workers: int | None = None,
    batch_size: int = 64,
    dask_address: str | None = None,
    top_n: int = 20,
    score: str = K.ALPHA_ISO_AU,
    chunk_size: int | None = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Predict dipoles and polarizabilities for every record of ``input_path``.

    Parameters
    ----------
    input_path
        ``.smi``/``.csv``/``.sdf`` file, or a conformers table (used as it is).
    output_path
        Destination Parquet file (predictions table).
    model_dir
        Model directory; None = the default model (``DENSNET_MODEL_DIR`` or the one in the
        repository).
    n_conformers
        Conformers per molecule (SMILES/CSV input); > 1 also writes the Boltzmann-averaged
        ``<output stem>.molecules.parquet``.
    workers
        Conformer-stage processes (default: ``DENSNET_WORKERS`` or all cores). Prediction
        tasks run on this flow's task runner: one at a time in this process by default (the
        CLI swaps in a Dask runner for ``--workers > 1`` or ``--dask-address``).
    batch_size
        Molecules per forward pass.
    dask_address
        Recorded for the summary; the runner itself is chosen by the caller (see above).
    top_n, score
        The top-N artifact ranks ok predictions by ``score`` (one of :data:`SCORES`),
        highest first.
    chunk_size
        Conformer rows per prediction task (default n/8, clipped to 256–1024).
    threads
        Torch intra-op threads per prediction process (1: fastest measured on 2 cores).

    Returns
    -------
    dict
        ``output``, ``molecules_output``, ``conformers_output``, ``n_records``, ``n_rows``,
        ``status_counts`` (rows per status), ``n_ood`` (ok rows out of distribution),
        ``n_members`` (1 for a single model), ``seconds``, ``stage_seconds``,
        ``rows_per_second``, ``model_id``, ``model_dir``, ``model_card``, ``top``.
    """
    start = time.perf_counter()
    logger = get_run_logger()
    tag_current_run("screen")
    if score not in SCORES:
        raise ValueError(f"score {score!r} is not one of {list(SCORES)}")
    fmt = detect_format(input_path)  # InputFileError for a missing file / unknown format
    resolved = resolve_model_dir(model_dir)  # ModelNotFoundError before any work
    model_id, model_card = model_identity(resolved)
    model_arg = str(resolved)
    stage: dict[str, float] = {}

    # --- 1. conformers ---------------------------------------------------------------------
    t0 = time.perf_counter()
    conformers_output: str | None = None
    if fmt == "conformers":
        conf_path = Path(input_path)
    else:
        from flows.conformers import conformers_flow
        from flows.conformers import progress_listener as conformer_progress

        conf_path = sibling_path(output_path, "conformers")
        forward = conformer_progress(lambda d, t: _notify("conformers", d, t))
        with forward if _LISTENERS else nullcontext():
            conformers_flow(
                input_path=str(input_path),
                output_path=str(conf_path),
                n_conformers=n_conformers,
                workers=workers,
                sdf_energy=False,  # as densnet_core.predict.screen_file: never used here
            )
        conformers_output = str(conf_path)
    conf_rows = conformer_table_rows(conf_path)
    stage["conformers"] = time.perf_counter() - t0

    # --- 2. prediction, one task per chunk -------------------------------------------------
    t0 = time.perf_counter()
    total = len(conf_rows)
    chunks = chunk_ranges(total, chunk_size)
    logger.info("%d conformer rows in %d prediction tasks, model %s", total, len(chunks), model_id)
    progress_id = create_progress_artifact(
        progress=0.0, key="screen-progress", description="conformer rows predicted (%)"
    )
    _notify("predict", 0, total)
    futures = {
        predict_chunk.submit(
            [conf_rows[j] for j in c], model_arg, batch_size, threads, first_index=c.start
        ): i
        for i, c in enumerate(chunks)
    }
    results: dict[int, list[dict[str, Any]]] = {}
    done = 0
    for fut in as_completed(list(futures)):
        i = futures[fut]
        c = chunks[i]
        result = fut.result(raise_on_failure=False)
        if isinstance(result, BaseException):  # the task itself failed: keep every row
            logger.error("prediction chunk at row %d failed: %r", c.start, result)
            result = failed_prediction_rows(
                [conf_rows[j] for j in c],
                f"prediction task failed: {type(result).__name__}: {result}",
                model_id,
            )
        results[i] = result
        done += len(c)
        _notify("predict", done, total)
        if total:
            update_progress_artifact(progress_id, progress=100.0 * done / total)
    rows = [row for i in range(len(chunks)) for row in results[i]]
    stage["predict"] = time.perf_counter() - t0

    # --- 3. tables -------------------------------------------------------------------------
    t0 = time.perf_counter()
    out, molecules, molecules_output = write_prediction_tables(rows, output_path, n_conformers)
    stage["write"] = time.perf_counter() - t0

    seconds = time.perf_counter() - start
    counts = status_counts(rows)
    top = _top_candidates(rows, score, top_n, molecules)
    summary: dict[str, Any] = {
        "input": str(input_path),
        "output": out,
        "molecules_output": molecules_output,
        "conformers_output": conformers_output,
        "n_records": len({int(r[K.RECORD_INDEX]) for r in rows}),
        "n_rows": len(rows),
        "status_counts": counts,
        "n_ood": ood_count(rows),
        "n_members": int((model_card.get("ensemble") or {}).get("n_members", 1)),
        "seconds": seconds,
        "stage_seconds": stage,
        "rows_per_second": len(rows) / seconds if seconds > 0 else 0.0,
        "model_id": model_id,
        "model_dir": str(resolved),
        "model_card": model_card,
        "dask_address": dask_address,
        "top": top,
    }
    create_table_artifact(
        table=top,
        key="screen-top-candidates",
        description=f"Top {top_n} {'molecules' if molecules is not None else 'conformers'} "
        f"by {score}",
    )
    create_markdown_artifact(
        markdown=_summary_markdown(summary), key="screen-summary", description="Screen summary"
    )
    logger.info(
        "wrote %d prediction rows to %s: %s; %d ok rows out of distribution",
        len(rows), out, counts, summary["n_ood"],
    )  # fmt: skip
    return summary


__all__ = [
    "SCORES",
    "InputFileError",
    "chunk_ranges",
    "conformer_table_rows",
    "progress_listener",
    "screen_flow",
    "sibling_path",
]
