"""The training flow (stage 3): a label dataset → a density model directory.

One task trains (or resumes, or fine-tunes); in a deployment it runs on the ``gpu`` work
pool with ``device="cuda"``. A finished model is not retrained: if ``model_dir`` already holds
a model whose checkpoint reached the requested epochs, the flow reports it and returns.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from densnet_core.level import LevelOfTheory
from tasks.train import train_model


def _run_name() -> str:
    name = Path(str(flow_run.parameters.get("model_dir", "model"))).name
    return f"train-{name}-{datetime.now():%Y-%m-%d-%H%M%S}"


@flow(name="train", flow_run_name=_run_name, persist_result=False, log_prints=False)
def train_flow(
    labels_dir: str,
    model_dir: str,
    init: str | None = None,
    epochs: int = 200,
    preset: str = "default",
    device: str = "cpu",
    level: LevelOfTheory | None = None,
    batch_size: int = 8,
    lr: float = 2e-3,
    max_hours: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a density model on ``labels_dir`` into ``model_dir`` (resumes a checkpoint).

    Parameters
    ----------
    labels_dir
        Label dataset folder.
    model_dir
        Output model directory.
    init
        Model directory to fine-tune from (None = a new model).
    epochs, preset, device, batch_size, lr, max_hours, seed
        See :func:`densnet_core.train.train`.
    level
        Level of theory of the labels (None = the dataset's ``level.json``).
    """
    result = train_model(
        labels_dir,
        model_dir,
        level=level.model_dump() if level else None,
        init=init,
        options={
            "epochs": epochs,
            "preset": preset,
            "device": device,
            "batch_size": batch_size,
            "lr": lr,
            "max_hours": max_hours,
            "seed": seed,
        },
    )
    val = result.get("validation") or {}
    rows = []
    for who in ("model", "prior"):
        metrics = val.get(who) or {}
        rows.append(
            f"| {who} | {metrics.get('dipole_mae_debye', float('nan')):.3f} | "
            f"{metrics.get('alpha_iso_mape_pct', float('nan')):.2f} | "
            f"{metrics.get('density_nmae_pct', float('nan')):.2f} |"
        )
    create_markdown_artifact(
        markdown="\n".join(
            [
                f"# Training: `{result['model_id']}`",
                "",
                f"- epochs run: {result['epochs_run']} (best {result['best_epoch']}), "
                f"stopped: {result['stopped']}",
                f"- model: `{result['model_dir']}`",
                "",
                "| validation | dipole MAE (D) | α_iso MAPE (%) | density NMAE (%) |",
                "|---|---|---|---|",
                *rows,
            ]
        ),
        key="train-summary",
        description="Training summary",
    )
    return result
