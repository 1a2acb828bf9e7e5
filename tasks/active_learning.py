"""Prefect tasks of the active-learning flow: thin wrappers around
:mod:`densnet_core.active_learning`.

Inputs and outputs are paths and plain values: the screened pool is written next to the round
(``screen-before.parquet`` / ``screen-after.parquet``) and read back by the flow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from densnet_core import store


@task(name="al-screen-pool", cache_policy=NO_CACHE, persist_result=False)
def screen_pool_task(ensemble_dir: str, pool_path: str, out_path: str) -> str:
    """Predict every conformer of the pool (a conformers table) with every member.

    Returns
    -------
    str
        ``out_path``: one row per pool row (:func:`densnet_core.active_learning.screen_pool`).
    """
    from densnet_core.active_learning import screen_pool
    from densnet_core.ensemble import load_ensemble

    logger = get_run_logger()
    ens = load_ensemble(ensemble_dir)
    rows = store.read_table(pool_path, "conformers").to_dict("records")
    df = screen_pool(ens, rows)
    tbl = pa.Table.from_pandas(df, preserve_index=False)
    tbl = tbl.replace_schema_metadata(
        {b"schema_version": store.SCHEMA_VERSION.encode(), b"table": b"active_learning_screen"}
    )
    store.write_parquet_atomic(tbl, out_path)
    logger.info(
        "%s: %d pool rows screened with %s (%d ok)",
        Path(pool_path).name,
        len(df),
        ens.ensemble_id,
        int((df["status"] == "ok").sum()) if len(df) else 0,
    )
    return out_path


@task(name="al-pick", cache_policy=NO_CACHE, persist_result=False)
def pick_task(
    screened_path: str,
    n: int,
    exclude_mol_ids: Sequence[str],
    strategy: str = "uncertainty_maxmin",
    shortlist_factor: float = 3.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Pick ``n`` molecules of a screened pool (uncertain + diverse, or at random).

    Returns
    -------
    list[dict]
        The picks: ``mol_id``, ``name``, ``smiles``, ``uncertainty_score``, ``pick_order``, ...
    """
    from densnet_core.active_learning import select_random, select_uncertain_diverse

    df = store.read_table(screened_path)
    if strategy == "random":
        picks = select_random(df, n, exclude_mol_ids=exclude_mol_ids, seed=seed)
    elif strategy == "uncertainty_maxmin":
        picks = select_uncertain_diverse(
            df, n, exclude_mol_ids=exclude_mol_ids, shortlist_factor=shortlist_factor, seed=seed
        )
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    get_run_logger().info("picked %s", ", ".join(picks["name"].astype(str)))
    return picks.to_dict("records")


@task(name="al-evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate_task(ensemble_dir: str, labels_dir: str) -> dict[str, float]:
    """Errors of the ensemble mean on a held-out label store (training molecules left out)."""
    from densnet_core.active_learning import evaluate_ensemble
    from densnet_core.calibration import load_labelled_set
    from densnet_core.ensemble import load_ensemble

    ens = load_ensemble(ensemble_dir)
    held = load_labelled_set(
        labels_dir,
        level=ens.level,
        exclude_mol_ids=ens.manifest.get("training_inchikeys") or [],
        elements=ens.elements,
    )
    return evaluate_ensemble(ens, held)
