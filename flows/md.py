"""The MD flow (stage 5): a molecule → DenSNet molecular dynamics → IR spectrum.

:func:`md_flow` does what ``densnet md`` does, as Prefect tasks (:mod:`tasks.md`):

1. ``md-prepare-structure``: read the input (SMILES, ``.smi``/``.sdf``/``.mol``/``.xyz``),
   check the model's elements, relax on the model (new runs only), write ``start.xyz``;
2. ``md-segment-to-<step>``: Langevin equilibration then NVE production in segments of
   ``segment_steps`` steps (boundaries at multiples of ``segment_steps``, counted from the
   start of equilibration), each a task that resumes from the checkpoint and writes one at its
   end, so a crash loses at most one segment and the UI's progress artifact moves per segment;
3. ``md-ir-spectrum`` (``ir=True``): the IR spectrum of the production run, with the PySCF
   harmonic reference if asked.

Rerunning the flow on the same ``output_dir`` continues an interrupted run from its
checkpoint; with more production ``steps`` it extends a finished one; a finished run is not
redone (no MD task runs). Other settings in the same folder are refused before any work.

Artifacts: ``md-progress`` (steps done, %), ``md-summary`` (markdown: steps, simulated ps,
steps/s, production mean temperature, NVE total-energy drift in meV/atom/ps, output files) and,
when the spectrum is computed, ``md-ir-peaks`` (table of the IR peaks).
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from densnet_core.md import (
    CHECKPOINT_JSON,
    SUMMARY_FILE,
    TIMESERIES_FILE,
    TRAJECTORY_FILE,
    MDSettings,
    read_checkpoint_state,
    resume_step,
)
from flows.runners import tag_current_run
from tasks.md import compute_ir, prepare_structure, run_md_segment, settings_dict


class MDParams(BaseModel):
    """Parameters of an MD run.

    Attributes
    ----------
    input
        A SMILES string, or a ``.smi`` (first record), ``.sdf``/``.mol`` (3D coordinates kept)
        or ``.xyz`` file.
    output_dir
        Output folder; a rerun on the same folder continues (or extends) the run there.
    name
        Molecule name for the flow-run name (default: the file's stem or the SMILES).
    model_dir
        MD model directory (None: ``models/densnet-md-ethanol``).
    temperature_K
        Langevin target and initial temperature, K.
    timestep_fs
        Time step, fs.
    steps
        NVE production steps (raise it on a rerun to extend a run).
    equilibration_steps
        Langevin steps before production.
    friction_per_fs
        Langevin friction, 1/fs.
    nve_energy
        ``"canonical"``: production starts at the canonical mean total energy of
        ``temperature_K`` (momenta scaled once at the switch); ``"as_is"``: at the last
        Langevin state. See :attr:`densnet_core.md.MDSettings.nve_energy`.
    seed
        Seed of the initial velocities and the Langevin noise.
    optimize
        Relax the start geometry on the model first (BFGS; new runs only).
    ir
        Compute the IR spectrum of the production run (needs >= 64 production steps).
    reference
        Also compute the PySCF harmonic IR spectrum (expensive: minutes to hours).
    segment_steps
        MD steps per task (each ends with a checkpoint and a progress update).
    sample_interval, trajectory_interval, checkpoint_interval
        Steps between time-series rows, trajectory frames and (within a segment) checkpoints.
    device
        torch device (``cpu`` or ``cuda``).
    threads
        torch intra-op threads (1 is fastest for one small molecule on a shared machine).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    input: str = Field(min_length=1)
    output_dir: str = Field(min_length=1)
    name: str | None = None
    model_dir: str | None = None
    temperature_K: float = Field(default=300.0, gt=0)
    timestep_fs: float = Field(default=0.5, gt=0)
    steps: int = Field(default=4000, ge=1)
    equilibration_steps: int = Field(default=1000, ge=0)
    friction_per_fs: float = Field(default=0.01, ge=0)
    nve_energy: Literal["canonical", "as_is"] = "canonical"
    seed: int = 0
    optimize: bool = True
    ir: bool = True
    reference: bool = False
    segment_steps: int = Field(default=500, ge=1)
    sample_interval: int = Field(default=1, ge=1)
    trajectory_interval: int = Field(default=10, ge=1)
    checkpoint_interval: int = Field(default=200, ge=1)
    device: str = "cpu"
    threads: int | None = Field(default=1, ge=1)

    def md_settings(self) -> MDSettings:
        """The :class:`densnet_core.md.MDSettings` of these parameters."""
        return MDSettings(
            temperature_K=self.temperature_K,
            timestep_fs=self.timestep_fs,
            steps=self.steps,
            equilibration_steps=self.equilibration_steps,
            friction_per_fs=self.friction_per_fs,
            sample_interval=self.sample_interval,
            trajectory_interval=self.trajectory_interval,
            checkpoint_interval=self.checkpoint_interval,
            seed=self.seed,
            nve_energy=self.nve_energy,
        )


def run_label(params: MDParams | dict[str, Any]) -> str:
    """The molecule part of the flow-run name: ``name``, a file's stem, or a SMILES slug."""
    p = params if isinstance(params, dict) else params.model_dump()
    if p.get("name"):
        label = str(p["name"])
    else:
        text = str(p.get("input") or "md")
        path = Path(text)
        label = path.stem if path.suffix.lower() in {".smi", ".sdf", ".mol", ".xyz"} else text
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")[:40].strip("-")
    return slug or "molecule"


def _run_name() -> str:
    return (
        f"md-{run_label(flow_run.parameters.get('params') or {})}-{datetime.now():%Y-%m-%d-%H%M%S}"
    )


def segment_ends(done: int, total: int, segment_steps: int) -> list[int]:
    """Where the segments from step ``done`` to ``total`` end: the multiples of
    ``segment_steps`` after ``done``, then ``total``."""
    first = (done // segment_steps + 1) * segment_steps
    return [*range(first, total, segment_steps), total] if done < total else []


def _f(x: Any, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt % x


def _summary_markdown(s: dict[str, Any]) -> str:
    st = s["settings"]
    lines = [
        f"# MD: {s['name']} ({s['formula']}, {s['n_atoms']} atoms)",
        "",
        f"- model: `{s['model_id']}`",
        f"- run: {s['status']}; step {s['step']} of {s['total_steps']} "
        f"({st['equilibration_steps']} Langevin + {st['steps']} NVE at "
        f"{st['timestep_fs']:g} fs, {st['temperature_K']:g} K)",
        f"- steps run now: **{s['steps_run_now']}** in {s['segments_run']} segment(s), "
        f"{_f(s['md_seconds'], '%.1f')} s of MD ({_f(s['steps_per_second'], '%.2f')} steps/s); "
        f"flow wall time {s['seconds']:.1f} s",
        f"- simulated: {_f(s['simulated_ps'], '%.4f')} ps in all, "
        f"{_f(s['production_ps'], '%.4f')} ps of NVE production",
        f"- production mean temperature: {_f(s['mean_temperature_K'], '%.1f')} K",
        f"- NVE total-energy drift: {_f(s['drift_mev_per_atom_per_ps'], '%.3f')} meV/atom/ps "
        f"(std of the total energy {_f(s['nve_total_energy_std_ev'], '%.2e')} eV)",
    ]
    if s.get("ir"):
        ir = s["ir"]
        if ir.get("computed"):
            peaks = ", ".join(f"{p['wavenumber_cm1']:.0f}" for p in ir["peaks"])
            lines.append(f"- IR peaks (cm⁻¹): {peaks}")
        else:
            lines.append(f"- IR: not computed ({ir.get('reason')})")
    lines += ["", "| output | path |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in s["files"].items()]
    return "\n".join(lines)


@flow(name="md", flow_run_name=_run_name, persist_result=False, log_prints=False)
def md_flow(params: MDParams) -> dict[str, Any]:
    """Molecular dynamics on the DenSNet potential, resumable, then the IR spectrum.

    Parameters
    ----------
    params
        :class:`MDParams` (a dict with its fields is validated into one).

    Returns
    -------
    dict
        ``output_dir``, ``name``, ``formula``, ``n_atoms``, ``model_id``, ``status``
        ("ran", "extended", "resumed" or "already finished"), ``step``, ``total_steps``,
        ``steps_run_now``, ``segments_run``, ``md_seconds``, ``steps_per_second`` (MD only),
        ``simulated_ps``, ``production_ps``, ``mean_temperature_K`` (production),
        ``drift_mev_per_atom_per_ps`` (NVE total energy, linear fit),
        ``nve_total_energy_std_ev``, ``ir`` (see :func:`tasks.md.compute_ir`; None without
        ``ir``), ``files`` (name → path), ``settings``, ``seconds`` (flow wall time).

    Raises
    ------
    ValueError
        Unreadable input, elements the model lacks, or a checkpoint of other settings in
        ``output_dir``.
    densnet_core.md.MDUnstableError
        The trajectory blew up (the last checkpoint is kept).
    """
    start = time.perf_counter()
    logger = get_run_logger()
    tag_current_run("md")
    out = Path(params.output_dir)
    settings = params.md_settings()
    sdict = settings_dict(settings)
    total = settings.equilibration_steps + settings.steps
    done = resume_step(out, settings)  # other settings: refused before any work
    state = read_checkpoint_state(out)
    if state is None:
        status = "ran"
    elif done >= total:
        status = "already finished"
    elif done >= state["settings"]["equilibration_steps"] + state["settings"]["steps"]:
        status = "extended"  # the previous run had finished; more production steps now
    else:
        status = "resumed"

    prep = prepare_structure(
        params.input,
        str(out),
        model_dir=params.model_dir,
        optimize=params.optimize,
        device=params.device,
        threads=params.threads,
    )
    ends = segment_ends(done, total, params.segment_steps)
    logger.info(
        "%s: step %d of %d, %d segment(s) to run (%s)",
        prep["name"],
        done,
        total,
        len(ends),
        status,
    )
    progress_id = create_progress_artifact(
        progress=100.0 * done / total, key="md-progress", description="MD steps done (%)"
    )
    seg_summaries: list[dict[str, Any]] = []
    for end in ends:
        seg = run_md_segment(
            prep["start_path"],
            str(out),
            sdict,
            end,
            model_dir=prep["model_dir"],
            device=params.device,
            threads=params.threads,
        )
        seg_summaries.append(seg)
        update_progress_artifact(progress_id, progress=100.0 * seg["step"] / total)
    if seg_summaries:
        md = seg_summaries[-1]
    else:  # nothing to run: the summary the finished run wrote
        summary_path = out / SUMMARY_FILE
        md = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    steps_now = sum(int(s["steps_run_now"]) for s in seg_summaries)
    md_seconds = sum(float(s["seconds"]) for s in seg_summaries)

    ir = None
    if params.ir:
        ir = compute_ir(str(out), sdict, prep["start_path"], reference=params.reference)
        if ir.get("computed"):
            rows = [
                {
                    "rank": k,
                    **{c: (round(v, 3) if isinstance(v, float) else v) for c, v in p.items()},
                }
                for k, p in enumerate(
                    sorted(ir["peaks"], key=lambda p: p["intensity"], reverse=True), start=1
                )
            ]
            create_table_artifact(
                table=rows,
                key="md-ir-peaks",
                description=f"IR peaks of {prep['name']} from DenSNet MD (cm⁻¹, intensity "
                "normalised to 1), most intense first",
            )

    step = int(md.get("step", done))
    files = {
        "start structure": prep["start_path"],
        "trajectory": str(out / TRAJECTORY_FILE),
        "time series": str(out / TIMESERIES_FILE),
        "checkpoint": str(out / CHECKPOINT_JSON),
        "summary": str(out / SUMMARY_FILE),
    }
    if ir and ir.get("computed"):
        files.update({"IR spectrum": ir["spectrum"], "IR peaks": ir["peaks_file"]})
        files["IR plot"] = ir["png"]
        if ir.get("reference_file"):
            files["harmonic reference"] = ir["reference_file"]
    drift = md.get("nve_drift_ev_per_atom_per_ps", math.nan)
    summary: dict[str, Any] = {
        "output_dir": str(out),
        "name": prep["name"],
        "formula": prep["formula"],
        "n_atoms": prep["n_atoms"],
        "model_id": prep["model_id"],
        "status": status,
        "step": step,
        "total_steps": total,
        "steps_run_now": steps_now,
        "segments_run": len(seg_summaries),
        "md_seconds": md_seconds,
        "steps_per_second": steps_now / md_seconds if md_seconds > 0 else math.nan,
        "simulated_ps": step * settings.timestep_fs / 1000.0,
        "production_ps": max(0, step - settings.equilibration_steps)
        * settings.timestep_fs
        / 1000.0,
        "mean_temperature_K": md.get("mean_temperature_K", math.nan),
        "drift_mev_per_atom_per_ps": 1000.0 * drift if drift is not None else math.nan,
        "nve_total_energy_std_ev": md.get("nve_total_energy_std_ev", math.nan),
        "relax_steps": prep.get("relax_steps"),
        "ir": ir,
        "files": files,
        "settings": sdict,
    }
    summary["seconds"] = time.perf_counter() - start
    create_markdown_artifact(
        markdown=_summary_markdown(summary), key="md-summary", description="MD run summary"
    )
    logger.info(
        "MD %s: %d steps now (%.2f steps/s), step %d of %d, drift %.3f meV/atom/ps",
        status,
        steps_now,
        summary["steps_per_second"],
        step,
        total,
        summary["drift_mev_per_atom_per_ps"],
    )
    return summary


__all__ = ["MDParams", "md_flow", "run_label", "segment_ends"]
