"""The training flow (stage 3): a label dataset → a density model directory.

One task trains (or resumes, or fine-tunes); in a deployment it runs on the ``gpu`` work
pool with ``device="cuda"``. A finished model is not retrained: if ``model_dir`` already holds
a model whose checkpoint reached the requested epochs, the flow reports it and returns.

With ``ensemble=K > 1`` the flow trains K members (:mod:`densnet_core.ensemble`: different
seeds, bootstrap resamples of the training molecules, the same validation molecules) as K
tasks submitted together to the flow's task runner — at most ``parallel_members`` at a time,
default: all of them on a GPU, ``max(1, cores // 2)`` on CPU, with the cores shared out as
torch threads — and then calibrates them on the validation molecules and writes
``<model_dir>/ensemble.json`` and ``calibration.png``. Finished members are skipped on a
rerun; interrupted ones resume from their checkpoints.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from densnet_core.active_learning import member_init_dir
from densnet_core.level import LevelOfTheory
from tasks.train import calibrate_ensemble, train_ensemble_member, train_model


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
    ensemble: int = 1,
    bootstrap: bool = True,
    val_fraction: float = 0.1,
    parallel_members: int | None = None,
    calibration_labels: dict[str, str] | None = None,
    validation_mol_ids: list[str] | None = None,
) -> dict[str, Any]:
    """Train a density model on ``labels_dir`` into ``model_dir`` (resumes a checkpoint).

    Parameters
    ----------
    labels_dir
        Label dataset folder.
    model_dir
        Output model directory.
    init
        Model directory to fine-tune from (None = a new model); for an ensemble also an
        ensemble directory (member k from its member k,
        :func:`densnet_core.active_learning.member_init_dir`).
    epochs, preset, device, batch_size, lr, max_hours, seed
        See :func:`densnet_core.train.train`.
    level
        Level of theory of the labels (None = the dataset's ``level.json``).
    ensemble
        Number of ensemble members K; 1 trains a single model exactly as before.
    bootstrap
        Bootstrap the training molecules of each member (ensembles only).
    val_fraction
        Fraction of the molecules held out for validation (the same for every member).
    parallel_members
        Members trained at the same time (None: module docstring).
    calibration_labels
        ``{name: label store}`` of other held-out sets to report calibration figures on.
    validation_mol_ids
        Hold out exactly these molecules (InChIKeys) instead of the ``val_fraction`` split
        (fine-tuning on a grown label store keeps the validation set; None = the split).
    """
    extra = {"validation_mol_ids": validation_mol_ids} if validation_mol_ids is not None else {}
    if ensemble > 1:
        return _train_ensemble(
            labels_dir,
            model_dir,
            members=ensemble,
            bootstrap=bootstrap,
            seed=seed,
            level=level,
            parallel_members=parallel_members,
            calibration_labels=calibration_labels,
            options={
                "init": init,
                "epochs": epochs,
                "preset": preset,
                "device": device,
                "batch_size": batch_size,
                "lr": lr,
                "max_hours": max_hours,
                "val_fraction": val_fraction,
                **extra,
            },
        )
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
            "val_fraction": val_fraction,
            **extra,
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


def _train_ensemble(
    labels_dir: str,
    model_dir: str,
    *,
    members: int,
    bootstrap: bool,
    seed: int,
    level: LevelOfTheory | None,
    parallel_members: int | None,
    calibration_labels: dict[str, str] | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    import torch

    from densnet_core.ensemble import member_specs
    from densnet_core.settings import available_cores

    device = str(options.get("device", "cpu"))
    if parallel_members is None:
        parallel_members = members if device.startswith("cuda") else max(1, available_cores() // 2)
    parallel_members = max(1, min(parallel_members, members))
    if not device.startswith("cuda"):
        torch.set_num_threads(max(1, available_cores() // parallel_members))
    specs = [vars(s) for s in member_specs(members, seed=seed, bootstrap=bootstrap)]
    lvl = level.model_dump() if level else None
    summaries: list[dict[str, Any]] = []
    for start in range(0, len(specs), parallel_members):
        futures = [
            train_ensemble_member.submit(
                labels_dir,
                model_dir,
                spec,
                level=lvl,
                options={**options, "init": member_init_dir(options.get("init"), spec["name"])},
            )
            for spec in specs[start : start + parallel_members]
        ]
        summaries.extend(f.result() for f in futures)
    manifest = calibrate_ensemble(
        labels_dir, model_dir, members, extra_labels=calibration_labels, device=device
    )
    cal = manifest.get("calibration") or {}
    val = cal.get("validation") or {}

    def f(x: Any, pct: bool = False) -> str:
        if x is None or x != x:
            return "n/a"
        return f"{100 * x:.0f} %" if pct else f"{x:.3f}"

    lines = [
        f"# Ensemble training: `{manifest['ensemble_id']}` ({members} members)",
        "",
        "| member | model id | skipped | stopped | best epoch | val dipole MAE (D) | "
        "val α_iso MAPE (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        m = (s.get("validation") or {}).get("model") or {}
        lines.append(
            f"| {s['name']} | `{s['model_id']}` | {s['skipped']} | {s['stopped']} | "
            f"{s['best_epoch']} | {f(m.get('dipole_mae_debye'))} | "
            f"{f(m.get('alpha_iso_mape_pct'))} |"
        )
    lines += [
        "",
        f"Calibration on {int(val.get('n', 0))} validation conformers (no member trained on them):",
        "",
        "| property | Spearman ρ(σ, abs error) | ±2σ coverage (raw σ) | scale |",
        "|---|---|---|---|",
    ]
    for prop in ("dipole_debye", "alpha_iso_au"):
        lines.append(
            f"| {prop} | {f(val.get(f'spearman_{prop}'))} | "
            f"{f(val.get(f'coverage2_{prop}'), True)} | "
            f"{f((cal.get('scale') or {}).get(f'{prop}_std'))} |"
        )
    create_markdown_artifact(
        markdown="\n".join(lines), key="train-summary", description="Ensemble training summary"
    )
    return {
        "model_dir": model_dir,
        "model_id": manifest["ensemble_id"],
        "ensemble_id": manifest["ensemble_id"],
        "members": summaries,
        "calibration": cal,
    }
