"""The active-learning flow: screen → pick uncertain, diverse molecules → label → fine-tune.

Every round (``OUT/round-XX/``):

1. screen the pool with the current ensemble (``screen-before.parquet``; task);
2. pick ``budget_per_round`` molecules not labelled yet
   (:func:`densnet_core.active_learning.select_uncertain_diverse`, or at random) and write
   their conformers (``picks.parquet``, a conformers table);
3. label them with PySCF into ``OUT/labels`` (the label flow as a sub-flow; labels found in
   ``known_labels_dirs`` are copied instead of recomputed);
4. fine-tune the ensemble (the train flow as a sub-flow) on a link-only view of the seed
   labels + ``OUT/labels`` (``train-labels/``, :func:`densnet_core.active_learning.label_view`)
   into ``round-XX/ensemble``, each member from the previous round's member, keeping the
   previous ensemble's validation molecules;
5. screen the pool again (``screen-after.parquet``), optionally score a held-out test store;
6. append the round's metrics to ``OUT/rounds.parquet``.

Stopping (:class:`densnet_core.active_learning.StoppingRule`): ``max_rounds``, the total
``label_budget`` (molecules), a target mean pool uncertainty, or too small an improvement.
A rerun skips every finished round (they are in ``rounds.parquet``) and resumes an
interrupted one (its picks, labels and finished members are reused); once the rule says stop,
a rerun does nothing. Artifacts: ``active-learning-rounds`` (table, all rounds) and
``active-learning-summary`` (markdown).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from densnet_core import keys as K
from densnet_core import store
from densnet_core.active_learning import (
    RoundRecord,
    StoppingRule,
    append_round,
    copy_known_labels,
    label_view,
    pool_uncertainty,
    read_rounds,
    round_budget,
    stop_reason,
)
from densnet_core.level import LevelOfTheory
from flows.label import label_flow
from flows.train import train_flow
from tasks.active_learning import evaluate_task, pick_task, screen_pool_task

ROUNDS_FILE = "rounds.parquet"
POOL_FILE = "pool-conformers.parquet"


class ActiveLearningParams(BaseModel):
    """Parameters of an active-learning run.

    Attributes
    ----------
    pool_path
        Candidate pool: a conformers table, or ``.smi``/``.csv``/``.sdf`` (conformers are
        generated once into ``OUT/pool-conformers.parquet``).
    seed_labels_dir
        Label store the initial ensemble was trained on (read, never written).
    init_ensemble_dir
        Ensemble directory (``ensemble.json``) of round 0.
    output_dir
        ``OUT``: ``rounds.parquet``, ``labels/`` (the new labels), ``round-XX/``.
    budget_per_round
        Molecules picked and labelled per round.
    max_rounds
        Rounds in total.
    label_budget
        Molecules labelled in total (None = ``max_rounds * budget_per_round``).
    target_std_dipole_debye, target_rel_std_alpha, min_improvement
        Stop early (:class:`densnet_core.active_learning.StoppingRule`).
    strategy
        ``"uncertainty_maxmin"`` (default) or ``"random"`` (the baseline).
    shortlist_factor
        MaxMin runs over the ``shortlist_factor * budget`` most uncertain molecules.
    seed
        Seed of the pick (MaxMin ties / random draw) and of the member trainings.
    epochs, lr, batch_size, patience
        Fine-tuning (:func:`densnet_core.train.train`).
    device
        Torch device of the fine-tuning.
    parallel_members
        Members fine-tuned at the same time, as threads of the train flow. Default 1: with 2,
        two members fine-tuned from loaded models raced in torch.fx tracing (e3nn codegen,
        ``copy.deepcopy`` in the weight EMA): "CURRENT_PATCHER is None in finally block".
    level
        Level of theory of the new labels (None = the ensemble's; another one is refused).
    known_labels_dirs
        Label stores to look up before computing a label (e.g. a benchmark set).
    label_workers
        Parallel PySCF processes.
    n_conformers
        Conformers per molecule when the pool is a SMILES/CSV/SDF file.
    test_labels_dir
        Optional held-out label store: the ensemble's errors on it are recorded every round.
    """

    model_config = ConfigDict(extra="forbid")

    pool_path: str
    seed_labels_dir: str
    init_ensemble_dir: str
    output_dir: str
    budget_per_round: int = Field(4, ge=1)
    max_rounds: int = Field(3, ge=1)
    label_budget: int | None = Field(None, ge=1)
    target_std_dipole_debye: float | None = Field(None, gt=0)
    target_rel_std_alpha: float | None = Field(None, gt=0)
    min_improvement: float | None = None
    strategy: Literal["uncertainty_maxmin", "random"] = "uncertainty_maxmin"
    shortlist_factor: float = Field(3.0, ge=1.0)
    seed: int = 0
    epochs: int = Field(30, ge=1)
    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    patience: int = Field(30, ge=1)
    device: str = "cpu"
    parallel_members: int = Field(1, ge=1)
    level: LevelOfTheory | None = None
    known_labels_dirs: list[str] = Field(default_factory=list)
    label_workers: int = Field(1, ge=1)
    n_conformers: int = Field(1, ge=1)
    test_labels_dir: str | None = None

    def stopping_rule(self) -> StoppingRule:
        """The :class:`StoppingRule` of these parameters."""
        return StoppingRule(
            max_rounds=self.max_rounds,
            label_budget=self.label_budget,
            target_std_dipole_debye=self.target_std_dipole_debye,
            target_rel_std_alpha=self.target_rel_std_alpha,
            min_improvement=self.min_improvement,
        )


def _run_name() -> str:
    p = flow_run.parameters.get("params") or {}
    p = p if isinstance(p, dict) else p.model_dump()
    stem = Path(str(p.get("pool_path") or "pool")).stem or "pool"
    return f"active-learning-{stem}-{_dt.datetime.now():%Y-%m-%d-%H%M%S}"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _pool_table(p: ActiveLearningParams, out: Path) -> str:
    """The pool as a conformers table (generated once for a SMILES/CSV/SDF pool)."""
    if store.table_name(p.pool_path) == "conformers":
        return p.pool_path
    path = out / POOL_FILE
    if not path.is_file():
        from flows.conformers import conformers_flow

        conformers_flow(input_path=p.pool_path, output_path=str(path), n_conformers=p.n_conformers)
    return str(path)


def _label_mol_ids(labels_dir: str | Path) -> set[str]:
    df = store.read_dataset(labels_dir, "labels")
    return set(df[K.MOL_ID].astype(str)) if len(df) else set()


def _labelled_ids(p: ActiveLearningParams, out: Path, ensemble_dir: str) -> set[str]:
    """Molecules that must not be picked: the ensemble's training/validation molecules and
    everything in the seed and active-learning label stores (any status: failures too)."""
    from densnet_core.ensemble import read_manifest

    m = read_manifest(ensemble_dir)
    ids = set(m.get("training_inchikeys") or []) | set(m.get("validation_inchikeys") or [])
    return ids | _label_mol_ids(p.seed_labels_dir) | _label_mol_ids(out / "labels")


def _fmt(x: Any, spec: str) -> str:
    try:
        return "n/a" if x is None or not math.isfinite(float(x)) else format(float(x), spec)
    except (TypeError, ValueError):
        return str(x)


@flow(name="active-learning", flow_run_name=_run_name, persist_result=False, log_prints=False)
def active_learning_flow(params: ActiveLearningParams) -> dict[str, Any]:
    """Run active-learning rounds until the stopping rule says stop (module docstring).

    Returns
    -------
    dict
        ``rounds`` (rows of ``rounds.parquet``), ``rounds_path``, ``ran`` (round numbers run
        now), ``stop_reason``, ``final_ensemble_dir``.
    """
    from densnet_core.ensemble import load_ensemble, read_manifest
    from flows.runners import tag_current_run

    tag_current_run("active-learning")
    logger = get_run_logger()
    p = params
    out = Path(p.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rounds_path = out / ROUNDS_FILE
    al_labels = out / "labels"
    rule = p.stopping_rule()
    if p.label_budget is None:
        rule = StoppingRule(**{**vars(rule), "label_budget": p.max_rounds * p.budget_per_round})
    history = read_rounds(rounds_path)
    ran: list[int] = []
    reason = stop_reason(history, rule)
    if not reason and len(history) and str(history["stop_reason"].iloc[-1]):
        reason = str(history["stop_reason"].iloc[-1])
    pool_path = _pool_table(p, out) if not reason else p.pool_path

    while not reason:
        r = len(history) + 1
        t0 = time.perf_counter()
        started = _now()
        rdir = out / f"round-{r:02d}"
        rdir.mkdir(parents=True, exist_ok=True)
        init = p.init_ensemble_dir if r == 1 else str(history["ensemble_dir"].iloc[-1])
        init_manifest = read_manifest(init)
        level = LevelOfTheory(**init_manifest["level_of_theory_fields"])
        if p.level is not None and p.level != level:
            raise ValueError(
                f"the ensemble {init} is at {level.label}; labels at {p.level.label} cannot "
                "fine-tune it"
            )
        before = screen_pool_task(init, pool_path, str(rdir / "screen-before.parquet"))
        screened_before = store.read_table(before)
        exclude = _labelled_ids(p, out, init)
        pool_before = pool_uncertainty(screened_before, exclude_mol_ids=exclude)
        reason = stop_reason(history, rule, pool_remaining=pool_before["n"])
        if reason:
            break
        n = round_budget(history, rule, p.budget_per_round)

        picks_path = rdir / "picks.parquet"
        picks_json = rdir / "picks.json"
        if picks_json.is_file():  # an interrupted round: keep its picks
            picks = json.loads(picks_json.read_text())
        else:
            picks = pick_task(
                before,
                n,
                sorted(exclude),
                strategy=p.strategy,
                shortlist_factor=p.shortlist_factor,
                seed=p.seed + r,
            )
            with store.atomic_file(picks_json) as fh:
                fh.write(json.dumps(picks, indent=1, default=str).encode())
        picked_ids = [str(x[K.MOL_ID]) for x in picks]
        pool = store.read_table(pool_path, "conformers")
        pick_rows = pool[pool[K.MOL_ID].isin(set(picked_ids)) & (pool[K.STATUS] == K.STATUS_OK)]
        if not picks_path.is_file():
            store.write_table(pick_rows, picks_path, "conformers")
        copied = copy_known_labels(
            pick_rows.to_dict("records"), p.known_labels_dirs, al_labels, level
        )
        if copied:
            logger.info("%d label(s) of the picks found in known label stores (copied)", copied)
        labelled = label_flow(
            input_path=str(picks_path),
            labels_dir=str(al_labels),
            level=level,
            workers=p.label_workers,
        )
        view = label_view(rdir / "train-labels", [p.seed_labels_dir, str(al_labels)])
        ens_dir = rdir / "ensemble"
        trained = train_flow(
            labels_dir=str(view),
            model_dir=str(ens_dir),
            init=init,
            epochs=p.epochs,
            device=p.device,
            level=level,
            batch_size=p.batch_size,
            lr=p.lr,
            seed=p.seed,
            ensemble=int(init_manifest["n_members"]),
            parallel_members=p.parallel_members,
            validation_mol_ids=list(init_manifest.get("validation_inchikeys") or []),
        )
        after = screen_pool_task(str(ens_dir), pool_path, str(rdir / "screen-after.parquet"))
        exclude_after = _labelled_ids(p, out, str(ens_dir))
        pool_after = pool_uncertainty(store.read_table(after), exclude_mol_ids=exclude_after)
        pool_same = pool_uncertainty(screened_before, exclude_mol_ids=exclude_after)
        test = evaluate_task(str(ens_dir), p.test_labels_dir) if p.test_labels_dir else {}
        manifest = read_manifest(ens_dir)
        cal = (manifest.get("calibration") or {}).get("validation") or {}
        member_mape = [
            (m.get("validation") or {}).get("alpha_iso_mape_pct") for m in manifest["members"]
        ]
        member_mape = [float(x) for x in member_mape if x is not None]
        n_ok = int((labelled.get("status_counts") or {}).get(K.STATUS_OK, 0))
        record = RoundRecord(
            round=r,
            strategy=p.strategy,
            seed=p.seed + r,
            budget=n,
            n_picked=len(picks),
            n_labels_ok=n_ok,
            n_labelled_total=int(history["n_picked"].sum() if len(history) else 0) + len(picks),
            label_budget=-1 if rule.label_budget is None else int(rule.label_budget),
            picked_names=[str(x[K.NAME]) for x in picks],
            picked_mol_ids=picked_ids,
            picked_scores=[float(x.get("uncertainty_score", math.nan)) for x in picks],
            init_dir=str(init),
            ensemble_dir=str(ens_dir),
            ensemble_id=str(trained.get("ensemble_id", manifest["ensemble_id"])),
            val_dipole_mae_debye=float(cal.get("mae_dipole_debye", math.nan)),
            val_alpha_iso_mae_au=float(cal.get("mae_alpha_iso_au", math.nan)),
            val_alpha_iso_mape_pct=sum(member_mape) / len(member_mape) if member_mape else math.nan,
            pool_size=int(pool_after["n"]),
            pool_mean_std_dipole_debye_before=pool_same["mean_std_dipole_debye"],
            pool_mean_std_dipole_debye_after=pool_after["mean_std_dipole_debye"],
            pool_mean_rel_std_alpha_before=pool_same["mean_rel_std_alpha"],
            pool_mean_rel_std_alpha_after=pool_after["mean_rel_std_alpha"],
            test_dipole_mae_debye=float(test.get("dipole_mae_debye", math.nan)),
            test_alpha_iso_mape_pct=float(test.get("alpha_iso_mape_pct", math.nan)),
            started=started,
            finished=_now(),
            wall_seconds=time.perf_counter() - t0,
        )
        record.stop_reason = stop_reason(
            [*history.to_dict("records"), record.row()], rule, pool_remaining=pool_after["n"]
        )
        append_round(rounds_path, record)
        history = read_rounds(rounds_path)
        ran.append(r)
        reason = record.stop_reason
        logger.info(
            "round %d: picked %s; pool σ|μ| %.3f → %.3f D; stop: %s",
            r,
            ", ".join(record.picked_names),
            record.pool_mean_std_dipole_debye_before,
            record.pool_mean_std_dipole_debye_after,
            reason or "no",
        )

    rows = history.to_dict("records")
    _artifacts(rows, p, reason, ran)
    final = str(history["ensemble_dir"].iloc[-1]) if len(history) else p.init_ensemble_dir
    # (load once so a broken final ensemble fails the run, not the next user)
    load_ensemble(final)
    return {
        "rounds": rows,
        "rounds_path": str(rounds_path),
        "ran": ran,
        "stop_reason": reason,
        "final_ensemble_dir": final,
    }


def _artifacts(
    rows: list[dict[str, Any]], p: ActiveLearningParams, reason: str, ran: list[int]
) -> None:
    """The round table artifact and the markdown summary."""
    final = rows[-1]["ensemble_dir"] if rows else p.init_ensemble_dir
    table = [
        {
            "round": int(r["round"]),
            "strategy": r["strategy"],
            "picked": ", ".join(map(str, r["picked_names"])),
            "labels ok": int(r["n_labels_ok"]),
            "labelled total": int(r["n_labelled_total"]),
            "val dipole MAE (D)": _fmt(r["val_dipole_mae_debye"], ".3f"),
            "val α_iso MAPE (%)": _fmt(r["val_alpha_iso_mape_pct"], ".2f"),
            "pool σ|μ| before→after (D)": f"{_fmt(r['pool_mean_std_dipole_debye_before'], '.3f')}"
            f" → {_fmt(r['pool_mean_std_dipole_debye_after'], '.3f')}",
            "pool σα/α before→after": f"{_fmt(r['pool_mean_rel_std_alpha_before'], '.4f')}"
            f" → {_fmt(r['pool_mean_rel_std_alpha_after'], '.4f')}",
            "test dipole MAE (D)": _fmt(r["test_dipole_mae_debye"], ".3f"),
            "wall (s)": _fmt(r["wall_seconds"], ".0f"),
            "ensemble": r["ensemble_id"],
        }
        for r in rows
    ]
    create_table_artifact(
        table=table,
        key="active-learning-rounds",
        description=f"Active-learning rounds on {Path(p.pool_path).name}",
    )
    create_markdown_artifact(
        markdown="\n".join(
            [
                f"# Active learning: {Path(p.pool_path).name}",
                "",
                f"- strategy: `{p.strategy}`, {p.budget_per_round} molecule(s) per round, "
                f"at most {p.max_rounds} round(s)",
                f"- rounds finished: {len(rows)} (run now: {ran or 'none'})",
                f"- stopped: {reason or 'no'}",
                f"- round table: `{Path(p.output_dir) / ROUNDS_FILE}`",
                f"- new labels: `{Path(p.output_dir) / 'labels'}`",
                f"- current ensemble: `{final}`",
            ]
        ),
        key="active-learning-summary",
        description="Active-learning summary",
    )
