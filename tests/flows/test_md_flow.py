"""The MD flow on a tiny potential: files, artifacts, segments, resume, extend, no redo.

Every MD run here is compared with one uninterrupted :func:`densnet_core.md.run_md` run of the
same settings (``reference``): a flow run split into segments, extended later, or resumed
after an interruption must give the same time series step for step.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)

from densnet_core.md import read_checkpoint_state, read_timeseries, run_md
from flows.md import MDParams, md_flow, run_label, segment_ends
from tests.core._md_tiny import WATER_A, one_torch_thread, tiny_potential  # noqa: F401

#: equilibration, production and extended production steps; segments of 20 steps, so a segment
#: boundary (step 20) falls inside the Langevin phase
EQ, STEPS, LONGER = 25, 40, 70


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from densnet_core.energy_train import save_md_model

    path = tmp_path_factory.mktemp("md-model") / "tiny"
    save_md_model(tiny_potential((1, 8), seed=1), path)
    return path


@pytest.fixture(scope="module")
def water_xyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import ase.io

    path = tmp_path_factory.mktemp("md-input") / "water.xyz"
    ase.io.write(path, Atoms("OH2", positions=WATER_A))
    return path


def _params(water_xyz: Path, model_dir: Path, out: Path, steps: int) -> dict[str, Any]:
    return MDParams(
        input=str(water_xyz),
        output_dir=str(out),
        model_dir=str(model_dir),
        steps=steps,
        equilibration_steps=EQ,
        segment_steps=20,
        checkpoint_interval=10,
        optimize=False,
    ).model_dump()


@pytest.fixture(scope="module")
def reference(
    water_xyz: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> pd.DataFrame:
    """The time series of one uninterrupted run of LONGER production steps."""
    from densnet_core.calculator import DenSNetCalculator

    out = tmp_path_factory.mktemp("md-reference")
    p = MDParams(**_params(water_xyz, model_dir, out, LONGER))
    run_md(
        Atoms("OH2", positions=WATER_A),
        DenSNetCalculator(model=str(model_dir)),
        out,
        settings=p.md_settings(),
    )
    return read_timeseries(out)


def _run(params: dict[str, Any]) -> tuple[dict[str, Any], Any, dict[str, Any], list[str]]:
    """Run the flow; returns its summary, the flow run, its artifacts by key and the names of
    its MD segment task runs."""
    state = md_flow(params=params, return_state=True)
    assert state.is_completed(), state
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    segments = sorted(
        (t.name for t in tasks if t.name.startswith("md-segment-to-")),
        key=lambda n: int(n.rsplit("-", 1)[1]),
    )
    return state.result(), run, {a.key: a for a in arts if a.key}, segments


def _same_series(got: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert list(got["step"]) == list(ref["step"])  # continuous: no gap, no step twice
    assert list(got["phase"]) == list(ref["phase"])
    for col in ("total_energy_ev", "temperature_K"):
        np.testing.assert_allclose(got[col], ref[col], rtol=0, atol=1e-9, err_msg=col)


def _progress(arts: dict[str, Any]) -> float:
    return float(arts["md-progress"].data)


def test_segment_ends() -> None:
    assert segment_ends(0, 46, 20) == [20, 40, 46]
    assert segment_ends(46, 76, 20) == [60, 76]
    assert segment_ends(40, 40, 20) == []
    assert segment_ends(30, 40, 500) == [40]
    assert run_label({"input": "C(C)O"}) == "C-C-O"
    assert run_label({"input": "/x/ethanol.sdf"}) == "ethanol"
    assert run_label({"input": "CCO", "name": "my mol"}) == "my-mol"


@pytest.fixture
def flow_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "run"


def test_md_flow_segments_extend_and_no_redo(
    water_xyz: Path, model_dir: Path, flow_dir: Path, reference: pd.DataFrame
) -> None:
    # 1. a new run, in segments ending at steps 20 (Langevin), 40, 60 and 65
    summary, run, arts, segments = _run(_params(water_xyz, model_dir, flow_dir, STEPS))
    assert run.name.startswith("md-water-") and "md" in run.tags
    assert summary["status"] == "ran" and summary["steps_run_now"] == EQ + STEPS
    assert segments == [f"md-segment-to-{k}" for k in (20, 40, 60, 65)]
    for name in ("start.xyz", "trajectory.xyz", "timeseries.parquet", "checkpoint.json",
                 "checkpoint.npz", "summary.json"):  # fmt: skip
        assert (flow_dir / name).is_file(), name
    assert read_checkpoint_state(flow_dir)["step"] == EQ + STEPS
    _same_series(read_timeseries(flow_dir), reference[reference["step"] <= EQ + STEPS])
    assert _progress(arts) == 100.0
    text = arts["md-summary"].data
    assert f"steps run now: **{EQ + STEPS}** in 4 segment(s)" in text and "meV/atom/ps" in text
    assert "IR: not computed (too few production samples" in text
    assert "md-ir-peaks" not in arts and not (flow_dir / "ir_spectrum.parquet").exists()
    assert np.isfinite(summary["drift_mev_per_atom_per_ps"]) and summary["steps_per_second"] > 0
    assert summary["production_ps"] == pytest.approx(STEPS * 0.5 / 1000)

    # 2. more production steps: continues from the checkpoint at step 65, then the IR spectrum
    summary, run, arts, segments = _run(_params(water_xyz, model_dir, flow_dir, LONGER))
    assert summary["status"] == "extended" and summary["steps_run_now"] == LONGER - STEPS
    assert segments == ["md-segment-to-80", "md-segment-to-95"]
    _same_series(read_timeseries(flow_dir), reference)
    import ase.io

    frames = ase.io.read(flow_dir / "trajectory.xyz", index=":")
    assert [f.info["step"] for f in frames] == list(range(0, EQ + LONGER + 1, 10))
    assert _progress(arts) == 100.0
    peaks = arts["md-ir-peaks"].data
    peaks = peaks if isinstance(peaks, list) else json.loads(peaks)
    assert peaks and peaks[0]["rank"] == 1 and peaks[0]["intensity"] == 1.0
    assert all(400 <= p["wavenumber_cm1"] <= 4500 for p in peaks)
    for name in ("ir_spectrum.parquet", "ir_peaks.parquet", "ir_spectrum.png"):
        assert (flow_dir / name).is_file(), name
    assert "IR peaks (cm⁻¹)" in arts["md-summary"].data

    # 3. the same parameters again: the run is finished, no MD task runs, no file rewritten
    before = {p.name: p.stat().st_mtime_ns for p in flow_dir.glob("*") if "ir_" not in p.name}
    summary, run, arts, segments = _run(_params(water_xyz, model_dir, flow_dir, LONGER))
    assert summary["status"] == "already finished" and summary["steps_run_now"] == 0
    assert segments == [] and _progress(arts) == 100.0
    assert {p.name: p.stat().st_mtime_ns for p in flow_dir.glob("*") if "ir_" not in p.name} == (
        before
    )
    assert "steps run now: **0** in 0 segment(s)" in arts["md-summary"].data
    assert summary["step"] == EQ + LONGER and np.isfinite(summary["mean_temperature_K"])

    # other settings in the same folder are refused before any work
    other = {**_params(water_xyz, model_dir, flow_dir, LONGER), "temperature_K": 200.0}
    state = md_flow(params=other, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="other MD settings"):
        state.result()


class _Interrupted(Exception):
    pass


def test_md_flow_resumes_an_interrupted_run(
    water_xyz: Path, model_dir: Path, flow_dir: Path, reference: pd.DataFrame
) -> None:
    from densnet_core.calculator import DenSNetCalculator

    params = _params(water_xyz, model_dir, flow_dir, LONGER)

    def stop(done: int, total: int, phase: str) -> None:
        if done == 17:
            raise _Interrupted

    with pytest.raises(_Interrupted):  # killed in the Langevin phase, last checkpoint at 10
        run_md(
            Atoms("OH2", positions=WATER_A),
            DenSNetCalculator(model=str(model_dir)),
            flow_dir,
            settings=MDParams(**params).md_settings(),
            progress=stop,
        )
    assert read_checkpoint_state(flow_dir)["step"] == 10
    summary, _, arts, segments = _run(params)
    assert summary["status"] == "resumed" and summary["steps_run_now"] == EQ + LONGER - 10
    assert segments == [f"md-segment-to-{k}" for k in (20, 40, 60, 80, 95)]
    _same_series(read_timeseries(flow_dir), reference)
    assert "md-ir-peaks" in arts and _progress(arts) == 100.0
