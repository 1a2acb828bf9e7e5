"""``densnet train LABELS_DIR -o MODEL_DIR``: train (or resume, or fine-tune) a density model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from densnet_core.ensemble import MemberSpec
    from densnet_core.train import EpochReport


def _fail(message: str, code: int = 2) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _parse_level(text: str | None):
    """--level: a JSON object of LevelOfTheory fields, or a path to a JSON file."""
    if text is None:
        return None
    from pydantic import ValidationError

    from densnet_core.level import LevelOfTheory

    path = Path(text)
    try:
        raw = path.read_text() if path.is_file() else text
        return LevelOfTheory(**json.loads(raw))
    except (ValueError, TypeError, ValidationError) as exc:
        raise _fail(f"--level: not a level of theory ({exc})") from None


def _parse_loss_weights(text: str | None) -> dict[str, float] | None:
    """--loss-weights: a JSON object of term weights, e.g. '{"dipole": 1.0}'."""
    if text is None:
        return None
    from densnet_core.losses import DEFAULT_LOSS_WEIGHTS

    try:
        raw = json.loads(text)
        weights = {str(k): float(v) for k, v in dict(raw).items()}
    except (ValueError, TypeError) as exc:
        raise _fail(f"--loss-weights: not a JSON object of numbers ({exc})") from None
    unknown = sorted(set(weights) - set(DEFAULT_LOSS_WEIGHTS))
    if unknown:
        raise _fail(f"--loss-weights: unknown terms {unknown}; known: {list(DEFAULT_LOSS_WEIGHTS)}")
    return weights


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def train(
    labels_dir: Annotated[Path, typer.Argument(help="Label store folder (densnet label -o ...).")],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Model directory (resumed if it has a checkpoint)."),
    ],
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:K.")] = "cpu",
    init: Annotated[Path | None, typer.Option(help="Fine-tune from this model directory.")] = None,
    preset: Annotated[
        str, typer.Option(help="Architecture preset: small, default or wide (twice as wide).")
    ] = "default",
    epochs: Annotated[int, typer.Option(min=0, help="Planned epochs (cosine horizon).")] = 200,
    batch_size: Annotated[int, typer.Option(min=1, help="Conformers per step.")] = 8,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW).")] = 2e-3,
    weight_decay: Annotated[
        float, typer.Option(min=0.0, help="AdamW decoupled weight decay (regularisation).")
    ] = 1e-5,
    seed: Annotated[int, typer.Option(help="Seed (initialisation, split, batch order).")] = 0,
    max_hours: Annotated[
        float | None, typer.Option(min=0.0, help="Stop cleanly after this wall time.")
    ] = None,
    patience: Annotated[int, typer.Option(min=1, help="Early-stopping patience, epochs.")] = 30,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Fraction of molecules for validation.")
    ] = 0.1,
    loss_weights: Annotated[
        str | None,
        typer.Option(
            help='Loss term weights as JSON, e.g. \'{"dipole": 1.0, "polarizability": 1.0}\' '
            "(terms: density, response, dipole, polarizability; missing terms keep their "
            "defaults)."
        ),
    ] = None,
    level: Annotated[
        str | None,
        typer.Option(
            help="Level of theory of the labels: JSON of LevelOfTheory fields or a JSON file "
            "[default: LABELS_DIR/level.json, else the default level]."
        ),
    ] = None,
    ensemble: Annotated[
        int,
        typer.Option(
            min=1,
            help="Train an ensemble of K models (MODEL_DIR/member-XX, different seeds and "
            "bootstrap resamples of the training molecules, the same validation molecules), "
            "calibrate its uncertainty and write MODEL_DIR/ensemble.json. 1 = a single model.",
        ),
    ] = 1,
    bootstrap: Annotated[
        bool, typer.Option(help="Ensembles: bootstrap the training molecules per member.")
    ] = True,
    parallel_members: Annotated[
        int,
        typer.Option(
            min=1,
            help="Ensembles: train this many members at once, each in its own process with "
            "cores / P torch threads (on CPU, 1 thread per member is the fastest use of the "
            "cores: the network's kernels are small).",
        ),
    ] = 1,
) -> None:
    """Train the equivariant density model on a label store.

    Writes MODEL_DIR/model.safetensors (best EMA weights), config.json and model_card.json, and
    a checkpoint after every epoch; running the same command again resumes. Exits non-zero only
    when the run fails (no usable labels, bad options, incompatible --init model).
    """
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    lvl = _parse_level(level)
    weights = _parse_loss_weights(loss_weights)
    from densnet_core.model import PRESETS

    if preset not in PRESETS:
        raise _fail(f"--preset must be one of {', '.join(sorted(PRESETS))}, not {preset!r}")

    from densnet_core.dataset import NoUsableLabelsError
    from densnet_core.modelio import ModelFileError
    from densnet_core.train import load_checkpoint
    from densnet_core.train import train as run_training

    if output.exists() and not output.is_dir():
        raise _fail(f"output {output} exists and is not a folder")
    if ensemble > 1:
        _train_ensemble(
            labels_dir,
            output,
            members=ensemble,
            bootstrap=bootstrap,
            seed=seed,
            parallel=parallel_members,
            console=console,
            train_kwargs={
                "level": lvl,
                "preset": preset,
                "device": device,
                "init": init,
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "weight_decay": weight_decay,
                "max_hours": max_hours,
                "patience": patience,
                "val_fraction": val_fraction,
                "loss_weights": weights,
            },
        )
        return
    if load_checkpoint(output) is not None:
        console.print(f"[bold]resuming[/] the run in {output}")

    def progress(r: EpochReport) -> None:
        console.print(_epoch_line(r), highlight=False)

    try:
        result = run_training(
            labels_dir,
            output,
            level=lvl,
            preset=preset,
            device=device,
            init=init,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            max_hours=max_hours,
            patience=patience,
            val_fraction=val_fraction,
            loss_weights=weights,
            progress=progress,
            status=lambda msg: console.print(f"[dim]{msg}[/]", highlight=False),
        )
    except NoUsableLabelsError as exc:
        raise _fail(str(exc)) from None
    except (ModelFileError, ValueError, RuntimeError, KeyError) as exc:
        raise _fail(f"{type(exc).__name__}: {exc}", code=1) from None

    table = Table(title="validation (best epoch): model vs SAD prior")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("prior", justify="right")
    val = result.metrics.get("validation") or result.metrics["train"]
    for key, label in (
        ("density_coulomb", "density (dρ|dρ)/N_e, Eh/e"),
        ("density_nmae_pct", "density NMAE, %"),
        ("dipole_mae_debye", "dipole MAE, D"),
        ("alpha_iso_mae_au", "α_iso MAE, a0³"),
        ("alpha_iso_mape_pct", "α_iso MAPE, %"),
        ("alpha_aniso_mae_au", "Δα MAE, a0³"),
    ):
        table.add_row(label, _fmt(val["model"][key]), _fmt(val["prior"][key]))
    Console().print(table)
    card = result.info.card
    Console().print(
        f"{result.stopped}: best epoch {result.best_epoch} of {result.epochs_run}; "
        f"{card['n_train_molecules']} training / {card['n_val_molecules']} validation molecules "
        f"({card['n_train_conformers']} / {card['n_val_conformers']} conformers)"
        + ("" if result.metrics.get("validation") else " — no validation molecules: train metrics")
        + f"\nmodel {result.info.model_id} in {result.model_dir}",
        highlight=False,
    )


def _epoch_line(r: EpochReport, *, lr: bool = True) -> str:
    """One progress line: epoch, losses, validation dipole MAE (D) and α MAPE (%), seconds."""
    rate = f"lr {r.lr:.2e}  " if lr else ""
    star = " [green]*best[/]" if r.improved else ""
    return (
        f"epoch {r.epoch:>4}/{r.epochs}  train {_fmt(r.train_loss, 4)}  "
        f"val {_fmt(r.val_loss, 4)}  val dipole MAE {_fmt(r.val_dipole_mae_debye)} D  "
        f"val α MAPE {_fmt(r.val_alpha_mape_pct)} %  {rate}{r.seconds:.1f} s{star}"
    )


def _train_one_member(
    labels_dir: Path,
    output: Path,
    spec: MemberSpec,
    train_kwargs: dict,
    threads: int | None = None,
) -> dict:
    """Train (resume, or skip) one ensemble member, printing its epochs to stderr."""
    from rich.console import Console

    from densnet_core.ensemble import train_member

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    console = Console(stderr=True)
    name = spec.name

    def progress(r: EpochReport) -> None:
        console.print(f"{name} {_epoch_line(r, lr=False)}", highlight=False)

    return train_member(
        labels_dir,
        output,
        spec,
        progress=progress,
        status=lambda msg: console.print(f"[dim]{name}: {msg}[/]"),
        **train_kwargs,
    )


def _train_members_in_processes(
    labels_dir: Path,
    output: Path,
    specs: list[MemberSpec],
    *,
    parallel: int,
    train_kwargs: dict,
) -> list[dict]:
    """``--parallel-members P``: P members at a time, each in a spawned worker process.

    Every worker gets ``available_cores() // P`` torch threads (at least 1). Members are
    independent (own seed, own checkpoint directory), so an interrupted run resumes each one
    from its checkpoint. Summaries come back in member order; the first failure is raised.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from densnet_core.settings import available_cores

    workers = min(parallel, len(specs))
    threads = max(1, available_cores() // workers)
    ctx = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [
            pool.submit(_train_one_member, labels_dir, output, spec, train_kwargs, threads)
            for spec in specs
        ]
        return [f.result() for f in futures]


def _train_ensemble(
    labels_dir: Path,
    output: Path,
    *,
    members: int,
    bootstrap: bool,
    seed: int,
    console: object,
    train_kwargs: dict,
    parallel: int = 1,
) -> None:
    """``--ensemble K``: the members (one after the other in this process, or ``parallel`` at a
    time in worker processes), then calibration."""
    from rich.console import Console
    from rich.table import Table

    from densnet_core.dataset import NoUsableLabelsError
    from densnet_core.ensemble import member_specs, write_manifest
    from densnet_core.modelio import ModelFileError

    assert isinstance(console, Console)
    specs = member_specs(members, seed=seed, bootstrap=bootstrap)
    try:
        if parallel > 1 and len(specs) > 1:
            summaries = _train_members_in_processes(
                labels_dir, output, specs, parallel=parallel, train_kwargs=train_kwargs
            )
        else:
            summaries = [_train_one_member(labels_dir, output, s, train_kwargs) for s in specs]
        for summary in summaries:
            if summary["skipped"]:
                console.print(
                    f"{summary['name']}: finished already ({summary['model_id']}), skipped"
                )
        console.print("[dim]calibrating on the validation molecules[/]")
        manifest = write_manifest(
            labels_dir, output, members=members, device=str(train_kwargs.get("device", "cpu"))
        )
    except NoUsableLabelsError as exc:
        raise _fail(str(exc)) from None
    except (ModelFileError, ValueError, RuntimeError, KeyError, FileNotFoundError) as exc:
        raise _fail(f"{type(exc).__name__}: {exc}", code=1) from None

    table = Table(title=f"ensemble {manifest['ensemble_id']}: validation per member")
    for col in ("member", "model id", "stopped", "best epoch", "dipole MAE, D", "α_iso MAPE, %"):
        table.add_column(col)
    for s in summaries:
        m = (s.get("validation") or {}).get("model") or {}
        table.add_row(
            s["name"],
            s["model_id"],
            str(s["stopped"]),
            str(s["best_epoch"]),
            _fmt(m.get("dipole_mae_debye", math.nan)),
            _fmt(m.get("alpha_iso_mape_pct", math.nan)),
        )
    Console().print(table)
    from densnet_core.calibration import format_report

    cal = manifest.get("calibration") or {}
    if cal.get("validation"):
        Console().print(
            format_report("calibration on the validation molecules (raw σ)", cal["validation"]),
            highlight=False,
        )
        Console().print(f"σ scale factors: {cal.get('scale')}", highlight=False)
    else:
        Console().print("not calibrated (no validation molecules)")
    Console().print(
        f"ensemble {manifest['ensemble_id']} ({members} members) in {output}", highlight=False
    )
