"""The whole pipeline: conformers → label the seed set → fine-tune → screen → Parquet.

:func:`pipeline_flow` chains the stage flows as sub-flows (each shows in the Prefect UI
with its own artifacts). Every stage is idempotent: labels already in the label dataset are
not recomputed, a finished fine-tuning run is not repeated, and the screen rewrites its
output atomically, so rerunning a pipeline (or resuming a killed one) redoes nothing finished.
"""

from __future__ import annotations

import time
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from densnet_core.inputs import RDKIT_PREFIX, rdkit_data_path
from densnet_core.level import LevelOfTheory
from densnet_core.predict import ModelNotFoundError, model_identity, resolve_model_dir
from flows.label import label_flow

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "densnet" / "demo" / "demo.toml"


class PipelineConfig(BaseModel):
    """Parameters of a pipeline run (a TOML file; see ``densnet/demo/demo.toml``).

    Attributes
    ----------
    name
        Run name (flow-run names and output folder).
    seed_input
        Molecules to label with PySCF (``.smi``/``.csv``/``.sdf`` or a conformers table).
    candidates_input
        Candidate library to screen.
    output_dir
        Where labels, the fine-tuned model and predictions go.
    model_dir
        Model to fine-tune and screen with (None = the default model).
    level
        Level of theory of the labels (default B3LYP/def2-SVPD).
    n_seed_conformers, n_candidate_conformers
        Conformers per molecule.
    fine_tune_epochs
        Epochs of fine-tuning on the seed labels (0 = screen with the model as it is).
    top_n, score
        The candidates artifact: the top ``top_n`` by the predictions column ``score``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "pipeline"
    seed_input: str
    candidates_input: str
    output_dir: str = "densnet-output"
    model_dir: str | None = None
    level: LevelOfTheory = Field(default_factory=LevelOfTheory)
    n_seed_conformers: int = Field(default=1, ge=1)
    n_candidate_conformers: int = Field(default=1, ge=1)
    fine_tune_epochs: int = Field(default=3, ge=0)
    top_n: int = Field(default=20, ge=1)
    score: str = "alpha_iso_au"


def _resolve(path: str, base: Path) -> str:
    if path.startswith(RDKIT_PREFIX):
        return str(rdkit_data_path(path))
    p = Path(path)
    return str(p if p.is_absolute() else base / p)


def load_config(path: str | Path = DEMO_CONFIG) -> PipelineConfig:
    """Read a pipeline TOML file; input paths are resolved relative to the file."""
    path = Path(path)
    raw = tomllib.loads(path.read_text())
    cfg = PipelineConfig(**raw)
    base = path.resolve().parent
    return cfg.model_copy(
        update={
            "seed_input": _resolve(cfg.seed_input, base),
            "candidates_input": _resolve(cfg.candidates_input, base),
        }
    )


def _run_name() -> str:
    cfg = flow_run.parameters.get("config") or {}
    name = cfg.get("name", "pipeline") if isinstance(cfg, dict) else getattr(cfg, "name", "")
    return f"pipeline-{name}-{datetime.now():%Y-%m-%d-%H%M%S}"


@flow(name="pipeline", flow_run_name=_run_name, persist_result=False, log_prints=False)
def pipeline_flow(config: PipelineConfig) -> dict[str, Any]:
    """Run every stage of ``config``; returns the output paths and stage timings."""
    from flows.screen import screen_flow
    from flows.train import train_flow

    logger = get_run_logger()
    out = Path(config.output_dir)
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"output_dir": str(out)}

    t = time.perf_counter()
    labels_dir = out / "labels"
    summary["label"] = label_flow(
        input_path=config.seed_input,
        labels_dir=str(labels_dir),
        level=config.level,
        n_conformers=config.n_seed_conformers,
    )
    timings["label"] = time.perf_counter() - t

    try:
        model_dir: str | None = str(resolve_model_dir(config.model_dir))
    except ModelNotFoundError as exc:
        if config.model_dir is not None:
            raise
        # no default model shipped yet: a new model is trained on the seed labels alone
        logger.warning("%s; training a new model on the seed labels only", exc)
        summary["note"] = (
            "no default model available: the model was trained on the seed labels alone, "
            "so its predictions are not yet meaningful"
        )
        model_dir = None
    if config.fine_tune_epochs > 0 or model_dir is None:
        t = time.perf_counter()
        tuned = out / "model"
        summary["train"] = train_flow(
            labels_dir=str(labels_dir),
            model_dir=str(tuned),
            init=model_dir,
            epochs=max(1, config.fine_tune_epochs),
            level=config.level,
        )
        model_dir = str(tuned)
        timings["fine_tune"] = time.perf_counter() - t

    t = time.perf_counter()
    predictions = out / "predictions.parquet"
    summary["screen"] = screen_flow(
        input_path=config.candidates_input,
        output_path=str(predictions),
        model_dir=model_dir,
        n_conformers=config.n_candidate_conformers,
        top_n=config.top_n,
        score=config.score,
    )
    timings["screen"] = time.perf_counter() - t
    summary["predictions"] = str(predictions)
    summary["model_dir"] = model_dir
    summary["timings_seconds"] = timings

    model_id = model_identity(model_dir)[0] if model_dir else "default"
    lines = [
        f"# Pipeline `{config.name}`",
        "",
        f"- seed labels: `{labels_dir}` — {summary['label']['status_counts']}",
        f"- model: `{model_id}`",
        f"- predictions: `{predictions}` — {summary['screen'].get('status_counts', {})}",
        *([f"- **note:** {summary['note']}"] if "note" in summary else []),
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()],
    ]
    create_markdown_artifact(
        markdown="\n".join(lines), key="pipeline-summary", description="Pipeline run summary"
    )
    logger.info("pipeline finished: %s", summary)
    return summary
