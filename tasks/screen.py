"""Prefect tasks of the screening stage: thin wrappers around :mod:`densnet_core.predict`.

A task predicts a whole *chunk* of conformer rows (hundreds of molecules; plain dicts in,
plain row dicts out), so the orchestration cost is paid per chunk. The model is loaded once
per worker process (:func:`get_predictor` is a process-wide cache keyed by the model
directory and the settings), not once per task call.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from densnet_core import keys as K
from densnet_core.predict import Predictor

_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _cached_predictor(
    model_dir: str | None, batch_size: int, threads: int | None, device: str
) -> Predictor:
    return Predictor(model_dir, device=device, batch_size=batch_size, threads=threads)


def get_predictor(
    model_dir: str | None, *, batch_size: int = 64, threads: int | None = 1, device: str = "cpu"
) -> Predictor:
    """The :class:`Predictor` of this process for these settings (loaded on first use)."""
    with _LOCK:
        return _cached_predictor(model_dir, int(batch_size), threads, device)


@task(
    name="predict-chunk",
    task_run_name="predict-chunk-{first_index}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def predict_chunk(
    rows: Sequence[Mapping[str, Any]],
    model_dir: str | None,
    batch_size: int = 64,
    threads: int | None = 1,
    first_index: int = 0,
) -> list[dict[str, Any]]:
    """Predictions-table rows for one chunk of conformers-table rows, in order.

    Parameters
    ----------
    rows
        Conformers-table rows as plain dicts (``numbers``, ``positions_angstrom`` in Å, ...).
    model_dir
        Model or ensemble directory (None = the default model).
    batch_size
        Molecules per forward pass.
    threads
        Torch intra-op threads of the worker process (None: leave as is).
    first_index
        Position of the chunk's first row in the table (names the task run).

    Returns
    -------
    list[dict]
        One row per input row (:meth:`densnet_core.predict.Predictor.predict_rows`). If even
        the model cannot be loaded, every row gets ``status="prediction_failed"``.
    """
    try:
        predictor = get_predictor(model_dir, batch_size=batch_size, threads=threads)
    except Exception as exc:  # keep every row, say why
        return failed_prediction_rows(rows, f"could not load the model: {exc}")
    return predictor.predict_rows(rows)


def failed_prediction_rows(
    rows: Sequence[Mapping[str, Any]], error: str, model_id: str = ""
) -> list[dict[str, Any]]:
    """One ``prediction_failed`` row per conformer row (rows already failed keep their status).

    Spreads are NaN, ``ood`` False and ``ood_reason`` "" (as for every non-ok row).
    """
    out = []
    for r in rows:
        status = str(r.get(K.STATUS) or K.STATUS_OK)
        out.append(
            {
                K.RECORD_INDEX: int(r[K.RECORD_INDEX]),
                K.NAME: str(r.get(K.NAME) or ""),
                K.SMILES: str(r.get(K.SMILES) or ""),
                K.MOL_ID: str(r.get(K.MOL_ID) or ""),
                K.CONFORMER_ID: int(r.get(K.CONFORMER_ID) or 0),
                K.MODEL_ID: model_id,
                K.DIPOLE_DEBYE: float("nan"),
                K.DIPOLE_AU: None,
                K.POLARIZABILITY_AU: None,
                K.ALPHA_ISO_AU: float("nan"),
                K.N_ELECTRONS: float("nan"),
                K.DIPOLE_DEBYE_STD: float("nan"),
                K.ALPHA_ISO_AU_STD: float("nan"),
                K.OOD: False,  # no prediction, no verdict: the status says why
                K.OOD_REASON: "",
                K.STATUS: status if status != K.STATUS_OK else K.STATUS_PREDICTION_FAILED,
                K.ERROR: str(r.get(K.ERROR) or "") if status != K.STATUS_OK else error,
            }
        )
    return out
