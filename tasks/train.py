"""Prefect tasks of the training stage: thin wrappers around :mod:`densnet_core.train` and
:mod:`densnet_core.ensemble`.

A single model is one task (one process, one device); an ensemble is one task per member (they
can run in parallel) plus a calibration task that writes ``ensemble.json``. Each training task
reports its epochs to the run's logger and to a progress artifact. Inputs are paths and plain
options.
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


@task(name="train-ensemble-member", cache_policy=NO_CACHE, persist_result=False)
def train_ensemble_member(
    labels_dir: str,
    ensemble_dir: str,
    member: Mapping[str, Any],
    level: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (resume, or skip if finished) one ensemble member; returns its summary dict.

    ``member`` holds the fields of :class:`densnet_core.ensemble.MemberSpec`; ``options`` are
    keyword arguments of :func:`densnet_core.train.train` (epochs, preset, device, ...).
    """
    from densnet_core.ensemble import MemberSpec, train_member

    logger = get_run_logger()
    spec = MemberSpec(**member)
    opts = dict(options or {})
    epochs = int(opts.get("epochs", 200))
    progress_id = create_progress_artifact(
        progress=0.0, key=f"train-progress-{spec.name}", description=f"{spec.name} epochs (%)"
    )

    def on_epoch(report: Any) -> None:
        logger.info("%s: %s", spec.name, report)
        update_progress_artifact(progress_id, progress=min(100.0, 100.0 * report.epoch / epochs))

    summary = train_member(
        labels_dir,
        ensemble_dir,
        spec,
        level=LevelOfTheory(**level) if level else None,
        progress=on_epoch,
        status=lambda msg: logger.info("%s: %s", spec.name, msg),
        **opts,
    )
    if summary["skipped"]:
        logger.info("%s is finished already (%s); skipped", spec.name, summary["model_id"])
        update_progress_artifact(progress_id, progress=100.0)
    return summary


@task(name="calibrate-ensemble", cache_policy=NO_CACHE, persist_result=False)
def calibrate_ensemble(
    labels_dir: str,
    ensemble_dir: str,
    members: int,
    extra_labels: Mapping[str, str] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Calibrate the finished members on the validation molecules; write ``ensemble.json``."""
    from densnet_core.ensemble import write_manifest

    return write_manifest(
        labels_dir, ensemble_dir, members=members, extra_labels=extra_labels, device=device
    )
