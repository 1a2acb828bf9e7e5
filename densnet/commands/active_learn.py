"""``densnet active-learn POOL --labels SEED_LABELS --init ENSEMBLE -o OUT``: active learning.

Runs :func:`flows.active_learning.active_learning_flow` on the embedded Prefect server: rounds
of screen → pick the most uncertain, diverse molecules → PySCF labels → fine-tune → rescreen,
one row per round in ``OUT/rounds.parquet``. A rerun resumes (finished rounds are skipped).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated

import typer

from densnet.console import fail, say


def active_learn(
    pool: Annotated[
        Path, typer.Argument(help="Candidate pool: a conformers table, .smi, .csv or .sdf.")
    ],
    labels: Annotated[
        Path, typer.Option("--labels", help="Seed label store the ensemble trained on.")
    ],
    init: Annotated[Path, typer.Option("--init", help="Ensemble directory to start from.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output folder (rounds, labels, ensembles).")
    ],
    budget: Annotated[int, typer.Option(min=1, help="Molecules labelled per round.")] = 4,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds at most.")] = 3,
    label_budget: Annotated[
        int | None,
        typer.Option(min=1, help="Molecules labelled in total (default: rounds x budget)."),
    ] = None,
    strategy: Annotated[
        str, typer.Option(help="uncertainty_maxmin (default) or random (the baseline).")
    ] = "uncertainty_maxmin",
    epochs: Annotated[int, typer.Option(min=1, help="Fine-tuning epochs per round.")] = 30,
    known_labels: Annotated[
        list[Path] | None,
        typer.Option(help="Label store to look labels up in before computing them (repeat)."),
    ] = None,
    test_labels: Annotated[
        Path | None, typer.Option(help="Held-out label store scored after every round.")
    ] = None,
    min_improvement: Annotated[
        float | None,
        typer.Option(help="Stop when a round lowers the mean pool spread by less (fraction)."),
    ] = None,
) -> None:
    """Active learning: label the molecules the ensemble is least sure about, fine-tune, repeat."""
    t0 = time.perf_counter()
    if not pool.exists():
        raise fail(f"pool {pool} does not exist")
    from pydantic import ValidationError

    from densnet.prefect_env import configure_for_cli, start_server_early

    configure_for_cli()
    boot = start_server_early()
    from flows.active_learning import ActiveLearningParams, active_learning_flow

    try:
        params = ActiveLearningParams(
            pool_path=str(pool),
            seed_labels_dir=str(labels),
            init_ensemble_dir=str(init),
            output_dir=str(output),
            budget_per_round=budget,
            max_rounds=rounds,
            label_budget=label_budget,
            strategy=strategy,
            epochs=epochs,
            known_labels_dirs=[str(p) for p in known_labels or []],
            test_labels_dir=str(test_labels) if test_labels else None,
            min_improvement=min_improvement,
        )
    except ValidationError as exc:
        raise fail(f"invalid options: {exc}") from None
    if boot is not None:
        boot.join()
    try:
        res = active_learning_flow(params)
    except Exception as exc:
        raise fail(f"the active-learning run failed: {type(exc).__name__}: {exc}", code=1) from None
    for r in res["rounds"]:
        sd_b, sd_a = r["pool_mean_std_dipole_debye_before"], r["pool_mean_std_dipole_debye_after"]
        say(
            f"round {r['round']}: {', '.join(r['picked_names'])}; pool σ|μ| "
            f"{sd_b:.3f} → {sd_a:.3f} D"
            + (
                f"; test dipole MAE {r['test_dipole_mae_debye']:.3f} D"
                if math.isfinite(r["test_dipole_mae_debye"])
                else ""
            )
        )
    say(
        f"{len(res['ran'])} round(s) run now, {len(res['rounds'])} in total; stopped: "
        f"{res['stop_reason'] or 'no'}; {time.perf_counter() - t0:.0f} s"
    )
    say(f"rounds: {res['rounds_path']}; ensemble: {res['final_ensemble_dir']}")
