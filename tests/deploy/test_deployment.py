"""``deployments/prefect.yaml`` against a real Prefect server: deploy, schedule, run, artifacts.

The session fixtures (``conftest.py``) start ``prefect server start``, create the ``cpu`` and
``gpu`` process pools, run ``prefect --no-prompt deploy --all`` and one run of the nightly
screen through ``prefect worker start --pool cpu --run-once``; these tests check the result
through the Prefect API and on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from densnet_core import keys as K
from densnet_core import store
from tests.deploy.conftest import CANDIDATES, EXPECTED_STATUS, ROOT, NightlyRun, tail

pytestmark = pytest.mark.slow


def _artifacts(client: Any, flow_run_id: Any) -> dict[str, Any]:
    arts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
    return {a.key: a for a in arts}


def drain_prefect_workers() -> None:
    """Flush this process's Prefect log and event queues (as ``prefect_test_harness`` does)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for result in (APILogWorker.instance().drain(), EventsWorker.drain_all()):
            if inspect.isawaitable(result):
                await result

    run_coro_as_sync(drain())


def _table(artifact: Any) -> list[dict[str, Any]]:
    return artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)


def test_deployments_are_registered(nightly_run: NightlyRun) -> None:
    with temporary_settings({PREFECT_API_URL: nightly_run.server.api_url}):
        with get_client(sync_client=True) as client:
            deployments = {
                f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()
            }
            pools = {p.name: p.type for p in client.read_work_pools()}
    assert set(deployments) == {
        "screen-folder/nightly-screen",
        "label/label-on-demand",
        "md/md-on-demand",
        "train/train-gpu",
        "active-learning/active-learning",
    }, nightly_run.deploy_output[-3000:]
    assert pools == {"cpu": "process", "gpu": "process"}

    nightly = deployments["screen-folder/nightly-screen"]
    assert nightly.work_pool_name == "cpu"
    assert nightly.entrypoint == "flows/screen_folder.py:screen_folder_flow"
    [schedule] = nightly.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC"
    assert schedule.active
    assert nightly.parameters == {
        "candidates_dir": str(nightly_run.candidates_dir),
        "output_dir": str(nightly_run.output_dir),
    }
    assert nightly.global_concurrency_limit is not None
    assert nightly.global_concurrency_limit.limit == 1

    label = deployments["label/label-on-demand"]
    assert label.work_pool_name == "cpu" and not label.schedules
    assert label.parameters == {"labels_dir": str(nightly_run.output_dir.parent / "labels")}

    md = deployments["md/md-on-demand"]
    assert md.work_pool_name == "cpu" and not md.schedules and md.tags == ["md"]
    assert md.entrypoint == "flows/md.py:md_flow"
    assert md.parameters["params"]["output_dir"] == str(
        nightly_run.output_dir.parent / "md/ethanol"
    )
    assert md.parameter_openapi_schema["required"] == ["params"]

    al = deployments["active-learning/active-learning"]
    assert al.work_pool_name == "cpu" and not al.schedules and al.tags == ["active-learning"]
    assert al.entrypoint == "flows/active_learning.py:active_learning_flow"
    assert al.parameters["params"]["output_dir"] == str(
        nightly_run.output_dir.parent / "active-learning"
    )

    train = deployments["train/train-gpu"]
    assert train.work_pool_name == "gpu" and not train.schedules
    assert train.parameters["device"] == "cuda"
    assert train.parameters["model_dir"] == str(nightly_run.output_dir.parent / "model")
    assert train.job_variables == {"env": {"CUDA_VISIBLE_DEVICES": "0"}}

    for d in deployments.values():  # every run starts in this checkout
        assert d.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ]


def test_nightly_run_completes_with_artifacts(nightly_run: NightlyRun) -> None:
    print("set-up, seconds since start:", {k: round(v) for k, v in nightly_run.seconds.items()})
    log = tail(nightly_run.worker_output)
    assert nightly_run.worker_code == 0, log
    with temporary_settings({PREFECT_API_URL: nightly_run.server.api_url}):
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(nightly_run.flow_run_id)
            arts = _artifacts(client, run.id)
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
                )
            )
            child_arts = {c.name: _artifacts(client, c.id) for c in children}

    assert run.state_type == StateType.COMPLETED, f"{run.state}\n{log}"
    assert run.name.startswith("screen-folder-candidates-")
    assert {"screen", "nightly"} <= set(run.tags)

    # the folder run: libraries done, the top candidates over all libraries, a summary
    assert arts["screen-folder-progress"].type == "progress"
    assert float(arts["screen-folder-progress"].data) == 100.0
    top = _table(arts["screen-folder-top-candidates"])
    assert [r["rank"] for r in top] == [1, 2]
    assert {r[K.NAME] for r in top} == {"ethanol", "phenol"}
    assert all(r["library"] == "tiny.smi" for r in top)
    assert top[0][K.ALPHA_ISO_AU] >= top[1][K.ALPHA_ISO_AU]
    summary = arts["screen-folder-summary"].data
    assert "| tiny.smi | screened | 3 | 2 |" in summary

    # one screen sub-flow per library (README.txt is not a library), with its own artifacts
    [(child_name, screen_arts)] = child_arts.items()
    [child] = children
    assert child_name.startswith("screen-tiny-") and child.state_type == StateType.COMPLETED
    assert {"screen-top-candidates", "screen-summary", "screen-progress"} <= set(screen_arts)
    assert "| invalid_smiles | 1 |" in screen_arts["screen-summary"].data


def test_nightly_output_has_one_row_per_record(nightly_run: NightlyRun) -> None:
    out = nightly_run.output_dir / "tiny.parquet"
    assert out.is_file(), sorted(p.name for p in nightly_run.output_dir.glob("*"))
    df = store.read_table(out, "predictions")
    assert list(df[K.RECORD_INDEX]) == list(range(len(CANDIDATES)))
    assert list(df[K.NAME]) == [n for _, n in CANDIDATES]
    assert list(df[K.STATUS]) == EXPECTED_STATUS
    assert df.loc[1, K.ERROR] != ""
    assert (nightly_run.output_dir / "tiny.conformers.parquet").is_file()
    assert (nightly_run.output_dir / "screen-folder-state.json").is_file()


def test_rerun_skips_up_to_date_libraries(nightly_run: NightlyRun) -> None:
    """The nightly output is recognised: a second run (in this process) screens nothing."""
    from flows.screen_folder import screen_folder_flow

    out: Path = nightly_run.output_dir / "tiny.parquet"
    before = out.stat().st_mtime_ns
    with temporary_settings({PREFECT_API_URL: nightly_run.server.api_url}):
        summary = screen_folder_flow(
            candidates_dir=str(nightly_run.candidates_dir),
            output_dir=str(nightly_run.output_dir),
            model_dir=str(nightly_run.model_dir),
        )
        drain_prefect_workers()  # send this run's logs and events before the server stops
    assert summary["counts"] == {"screened": 0, "up_to_date": 1, "failed": 0}
    assert summary["libraries"][0]["n_records"] == 3 and summary["libraries"][0]["n_ok"] == 2
    assert out.stat().st_mtime_ns == before
    assert {r[K.NAME] for r in summary["top"]} == {"ethanol", "phenol"}
