"""Prefect task of the training stage: a thin wrapper around :func:`densnet_core.train.train`.

Training is one task (one process, one device); it reports each epoch to the run's logger and
to a progress artifact. Inputs are paths and plain options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from densnet_core.level import LevelOfTheory
from densnet_core.train import train


@task(name="train-density-model", cache_policy=NO_CACHE, persist_result=False)
def train_model(
    labels_dir: str,
    model_dir: str,
    level: Mapping[str, Any] | None = None,
    init: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (resume, or fine-tune from ``init``) a density model; returns a summary dict.

    ``options`` are keyword arguments of :func:`densnet_core.train.train` (epochs, preset,
    device, lr, batch_size, max_hours, ...).
    """
    logger = get_run_logger()
    opts = dict(options or {})
    epochs = int(opts.get("epochs", 200))
    progress_id = create_progress_artifact(
        progress=0.0, key="train-progress", description="training epochs (%)"
    )

    def on_epoch(report: Any) -> None:
        logger.info("%s", report)
        update_progress_artifact(progress_id, progress=min(100.0, 100.0 * report.epoch / epochs))

    result = train(
        labels_dir,
        model_dir,
        level=LevelOfTheory(**level) if level else None,
        init=init,
        progress=on_epoch,
        status=logger.info,
        **opts,
    )
    return {
        "model_dir": str(result.model_dir),
        "model_id": result.info.model_id,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped": result.stopped,
        "validation": result.metrics.get("validation", {}),
    }
