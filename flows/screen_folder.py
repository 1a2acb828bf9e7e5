"""Screen a folder of candidate libraries: one predictions table per library, idempotent.

The nightly deployment (``deployments/prefect.yaml``) runs :func:`screen_folder_flow` on a
candidates folder. Every library file directly in the folder (``.smi``/``.smiles``/``.ism``/
``.can``, ``.csv``, ``.sdf``/``.sd``; hidden files and ``.txt`` notes are ignored) is screened
by :func:`flows.screen.screen_flow` as a sub-flow (its own flow run in the UI, with its own
artifacts) into ``<output_dir>/<library stem>.parquet`` (plus the screen's
``<stem>.conformers.parquet``).

A library is *up to date*, and skipped, when its output exists and the state file
``<output_dir>/screen-folder-state.json`` records the same input bytes (sha256), model id,
conformers per molecule and table schema version. So a nightly run redoes only the new or
changed libraries, or all of them after the model changed. A library that cannot be screened
(an unreadable file) does not stop the others; the run fails at the end, naming it.

Artifacts on the folder's flow run: a progress artifact (libraries done, %), a table of the
top candidates over all libraries by ``score``, and a markdown summary (one line per library).
"""

from __future__ import annotations

import hashlib
import json
import math
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
from prefect.runtime import flow_run

from densnet_core import keys as K
from densnet_core import store
from densnet_core.predict import ALPHA_ANISO_AU
from flows.screen import SCORES, screen_flow, sibling_path

#: library files screened (``.txt`` is left out: a folder's notes are not SMILES)
LIBRARY_SUFFIXES = (".smi", ".smiles", ".ism", ".can", ".csv", ".sdf", ".sd")
STATE_FILE = "screen-folder-state.json"

SCREENED, UP_TO_DATE, FAILED = "screened", "up_to_date", "failed"


def _run_name() -> str:
    folder = Path(str(flow_run.parameters.get("candidates_dir", "candidates"))).name
    return f"screen-folder-{folder or 'candidates'}-{datetime.now():%Y-%m-%d-%H%M%S}"


def library_files(candidates_dir: str | Path) -> list[Path]:
    """The library files directly in ``candidates_dir``, sorted by name.

    Raises
    ------
    FileNotFoundError
        If ``candidates_dir`` is not a folder.
    """
    folder = Path(candidates_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"candidates folder not found: {folder}")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in LIBRARY_SUFFIXES
    )


def output_paths(libraries: list[Path], output_dir: str | Path) -> dict[Path, Path]:
    """``<output_dir>/<stem>.parquet`` per library (``<stem>-<suffix>`` where stems collide)."""
    out = Path(output_dir)
    stems: dict[str, int] = {}
    for p in libraries:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    return {
        p: out / (f"{p.stem}.parquet" if stems[p.stem] == 1 else f"{p.stem}-{p.suffix[1:]}.parquet")
        for p in libraries
    }


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state(output_dir: str | Path) -> dict[str, Any]:
    """The state file of ``output_dir`` (library name → fingerprint); {} if absent/unreadable."""
    path = Path(output_dir) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(output_dir: str | Path, state: dict[str, Any]) -> None:
    """Write the state file atomically."""
    with store.atomic_file(Path(output_dir) / STATE_FILE) as fh:
        fh.write((json.dumps(state, indent=2, sort_keys=True) + "\n").encode())


def is_up_to_date(entry: dict[str, Any] | None, fingerprint: dict[str, Any], output: Path) -> bool:
    """Whether a library's recorded fingerprint matches and its predictions table is there."""
    if not entry or any(entry.get(k) != v for k, v in fingerprint.items()):
        return False
    return output.is_file() and store.table_name(output) == "predictions"


def top_candidates(outputs: dict[str, Path], score: str, top_n: int) -> list[dict[str, Any]]:
    """The top-N ok molecules over all libraries by ``score`` (highest first).

    Reads each library's Boltzmann-averaged ``<stem>.molecules.parquet`` when there is one,
    else its predictions table.
    """
    import pandas as pd

    frames = []
    for library, path in outputs.items():
        molecules = sibling_path(path, "molecules")
        source = molecules if molecules.is_file() else path
        if not source.is_file():
            continue
        df = store.read_table(source)
        df = df[df[K.STATUS] == K.STATUS_OK]
        cols = [K.RECORD_INDEX, K.NAME, K.SMILES, K.ALPHA_ISO_AU, K.DIPOLE_DEBYE, ALPHA_ANISO_AU]
        df = df[[c for c in cols if c in df.columns]].copy()
        df.insert(0, "library", library)
        frames.append(df)
    if not frames:
        return []
    df = pd.concat(frames, ignore_index=True)
    df = df[df[score].map(lambda x: x is not None and math.isfinite(float(x)))]
    df = df.sort_values(score, ascending=False, kind="stable").head(top_n)
    rows = []
    for rank, r in enumerate(df.to_dict("records"), start=1):
        item: dict[str, Any] = {"rank": rank, "library": r["library"]}
        item.update({K.RECORD_INDEX: int(r[K.RECORD_INDEX]), K.NAME: r[K.NAME]})
        item[K.SMILES] = r[K.SMILES]
        for c in (K.ALPHA_ISO_AU, K.DIPOLE_DEBYE, ALPHA_ANISO_AU):
            if c in r:
                item[c] = round(float(r[c]), 4)
        rows.append(item)
    return rows


def _summary_markdown(s: dict[str, Any]) -> str:
    lines = [
        f"# Screen folder: `{s['candidates_dir']}`",
        "",
        f"- model: `{s['model_id']}` (`{s['model_dir']}`)",
        f"- libraries: **{len(s['libraries'])}** — screened {s['counts'][SCREENED]}, "
        f"up to date {s['counts'][UP_TO_DATE]}, failed {s['counts'][FAILED]}",
        f"- outputs: `{s['output_dir']}`; wall time {s['seconds']:.1f} s",
        "",
        "| library | result | records | ok | output | note |",
        "|---|---|---|---|---|---|",
    ]
    for lib in s["libraries"]:
        note = (lib.get("error") or "").replace("|", "/").replace("\n", " ")[:200]
        lines.append(
            f"| {lib['library']} | {lib['result']} | {lib.get('n_records', '')} | "
            f"{lib.get('n_ok', '')} | `{Path(lib['output']).name}` | {note} |"
        )
    return "\n".join(lines)


@flow(name="screen-folder", flow_run_name=_run_name, persist_result=False, log_prints=False)
def screen_folder_flow(
    candidates_dir: str,
    output_dir: str,
    model_dir: str | None = None,
    n_conformers: int = 1,
    workers: int | None = None,
    batch_size: int = 64,
    top_n: int = 20,
    score: str = K.ALPHA_ISO_AU,
    threads: int | None = 1,
    force: bool = False,
) -> dict[str, Any]:
    """Screen every library file of ``candidates_dir`` into one predictions table each.

    Parameters
    ----------
    candidates_dir
        Folder of candidate libraries (``.smi``/``.csv``/``.sdf``; see :data:`LIBRARY_SUFFIXES`).
    output_dir
        Folder of the outputs: ``<stem>.parquet`` (predictions, one row per input record and
        conformer), ``<stem>.conformers.parquet`` and the state file.
    model_dir
        Model directory; None = the default model (``DENSNET_MODEL_DIR`` or the repository's).
    n_conformers, workers, batch_size, threads
        Passed to :func:`flows.screen.screen_flow` for each library.
    top_n, score
        The folder's top-candidates artifact: the ``top_n`` best ok molecules over all
        libraries by ``score`` (one of :data:`flows.screen.SCORES`), highest first.
    force
        Screen every library, even those that are up to date.

    Returns
    -------
    dict
        ``candidates_dir``, ``output_dir``, ``model_id``, ``model_dir``, ``libraries`` (per
        library: ``library``, ``result`` (screened / up_to_date / failed), ``output``,
        ``n_records``, ``n_ok``, ``error``), ``counts`` (libraries per result), ``top``,
        ``seconds``.
    """
    from densnet_core.predict import model_identity, resolve_model_dir

    start = time.perf_counter()
    logger = get_run_logger()
    if score not in SCORES:
        raise ValueError(f"score {score!r} is not one of {list(SCORES)}")
    libraries = library_files(candidates_dir)
    resolved = resolve_model_dir(model_dir)  # ModelNotFoundError before any work
    model_id, _card = model_identity(resolved)  # a single model or an ensemble directory
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = output_paths(libraries, out_dir)
    state = read_state(out_dir)
    logger.info("%d libraries in %s, model %s", len(libraries), candidates_dir, model_id)
    progress_id = create_progress_artifact(
        progress=0.0 if libraries else 100.0,
        key="screen-folder-progress",
        description="candidate libraries done (%)",
    )

    results: list[dict[str, Any]] = []
    for i, library in enumerate(libraries):
        output = outputs[library]
        fingerprint = {
            "input_sha256": file_sha256(library),
            "model_id": model_id,
            "n_conformers": n_conformers,
            "schema_version": store.SCHEMA_VERSION,
        }
        item: dict[str, Any] = {"library": library.name, "output": str(output), "error": ""}
        if not force and is_up_to_date(state.get(library.name), fingerprint, output):
            item.update(result=UP_TO_DATE, **state[library.name].get("counts", {}))
            logger.info("%s: up to date (%s)", library.name, output)
        else:
            run_state = screen_flow(
                input_path=str(library),
                output_path=str(output),
                model_dir=str(resolved),
                n_conformers=n_conformers,
                workers=workers,
                batch_size=batch_size,
                top_n=top_n,
                score=score,
                threads=threads,
                return_state=True,
            )
            summary = run_state.result(raise_on_failure=False)
            if run_state.is_completed() and isinstance(summary, dict):
                counts = {
                    "n_records": summary["n_records"],
                    "n_ok": summary["status_counts"].get(K.STATUS_OK, 0),
                }
                item.update(result=SCREENED, **counts)
                state[library.name] = {**fingerprint, "output": str(output), "counts": counts}
                write_state(out_dir, state)  # after each library: a killed run keeps these
            else:
                error = summary if isinstance(summary, BaseException) else run_state.message
                item.update(result=FAILED, error=f"{error}")
                logger.error("%s: screening failed: %s", library.name, error)
        results.append(item)
        update_progress_artifact(progress_id, progress=100.0 * (i + 1) / len(libraries))

    top = top_candidates(
        {r["library"]: Path(r["output"]) for r in results if r["result"] != FAILED},
        score,
        top_n,
    )
    counts = {k: sum(r["result"] == k for r in results) for k in (SCREENED, UP_TO_DATE, FAILED)}
    summary = {
        "candidates_dir": str(candidates_dir),
        "output_dir": str(out_dir),
        "model_id": model_id,
        "model_dir": str(resolved),
        "libraries": results,
        "counts": counts,
        "top": top,
        "seconds": time.perf_counter() - start,
    }
    create_table_artifact(
        table=top,
        key="screen-folder-top-candidates",
        description=f"Top {top_n} molecules over all libraries by {score}",
    )
    create_markdown_artifact(
        markdown=_summary_markdown(summary),
        key="screen-folder-summary",
        description="Screen-folder summary",
    )
    logger.info("libraries: %s", counts)
    if counts[FAILED]:
        failed = ", ".join(r["library"] for r in results if r["result"] == FAILED)
        raise RuntimeError(f"{counts[FAILED]} library(ies) could not be screened: {failed}")
    return summary


__all__ = [
    "LIBRARY_SUFFIXES",
    "STATE_FILE",
    "library_files",
    "output_paths",
    "screen_folder_flow",
    "top_candidates",
]
