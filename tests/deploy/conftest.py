"""A real Prefect server for the deployment tests (not the flow tests' ``prefect_test_harness``).

One server for the tests of this package (package-scoped fixtures, stopped after the last of
them): ``prefect server start`` on a free port with its own ``PREFECT_HOME`` (its own SQLite
database), the ``cpu`` and ``gpu`` process work pools, ``prefect --no-prompt deploy --all
--prefect-file deployments/prefect.yaml`` run from the repository root, and one run of the
nightly screening deployment on a three-record candidate folder, executed by
``prefect worker start --pool cpu --run-once``. Every process started here runs in its own
process group and is stopped (the whole group) at the end, also on failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PREFECT_FILE = "deployments/prefect.yaml"
NIGHTLY = "screen-folder/nightly-screen"

#: the candidate library of the nightly run: two valid SMILES and one that does not parse
CANDIDATES = [("CCO", "ethanol"), ("C1CC", "unclosed-ring"), ("c1ccccc1O", "phenol")]
EXPECTED_STATUS = ["ok", "invalid_smiles", "ok"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(proc: subprocess.Popen[Any], grace_seconds: float = 20.0) -> None:
    """Stop ``proc`` and everything in its process group (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            pass
    try:  # children left behind in the group (a worker's flow-run process, chromium helpers)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=10)


def run_logged(
    cmd: Sequence[str], *, env: dict[str, str], log: Path, timeout: float, cwd: Path = ROOT
) -> tuple[int, str]:
    """Run ``cmd`` in its own process group with output to ``log``; (returncode, output).

    On timeout the whole group is killed and the return code is -9.
    """
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = -9
        finally:
            stop_group(proc, grace_seconds=5)
    return code, log.read_text(errors="replace")


def tail(text: str, n: int = 4000) -> str:
    """The end of a (log) text, for assertion messages."""
    return text[-n:]


@dataclass
class PrefectServer:
    """A ``prefect server start`` subprocess and the environment that points at it."""

    port: int
    home: Path
    log: Path
    proc: subprocess.Popen[Any]
    env: dict[str, str] = field(repr=False)

    @property
    def url(self) -> str:
        """The UI's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """``PREFECT_API_URL``."""
        return f"{self.url}/api"

    def wait_until_healthy(self, timeout: float = 300.0) -> None:
        """Block until ``/api/health`` answers (fails early if the server exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"prefect server exited with {self.proc.returncode}:\n"
                    + tail(self.log.read_text(errors="replace"))
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        pytest.fail(
            f"prefect server not healthy after {timeout:.0f} s:\n"
            + tail(self.log.read_text(errors="replace"))
        )


def prefect_env(home: Path, api_url: str) -> dict[str, str]:
    """This environment without any PREFECT_* setting, pointed at ``api_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # no runs from the nightly cron schedule while the test runs (the schedule itself is
        # still stored on the deployment and checked)
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def _prefect(*args: str) -> list[str]:
    """The ``prefect`` command of this interpreter."""
    return [sys.executable, "-m", "prefect", *args]


@pytest.fixture(scope="package")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """Start ``prefect server start`` (not yet waited for: see ``wait_until_healthy``)."""
    base = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    home = base / "prefect-home"
    home.mkdir()
    env = prefect_env(home, f"http://127.0.0.1:{port}/api")
    log = base / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            _prefect("server", "start", "--host", "127.0.0.1", "--port", str(port)),
            cwd=base,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = PrefectServer(port=port, home=home, log=log, proc=proc, env=env)
    try:
        yield server
    finally:
        stop_group(proc)


@dataclass
class NightlyRun:
    """What the deployment and the nightly run left behind, for the tests to check."""

    server: PrefectServer
    deploy_output: str
    flow_run_id: Any
    worker_code: int
    worker_output: str
    candidates_dir: Path
    output_dir: Path
    model_dir: Path
    seconds: dict[str, float]


@pytest.fixture(scope="package")
def nightly_run(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> NightlyRun:
    """Deploy ``deployments/prefect.yaml`` and run the nightly screen once through a worker."""
    import torch
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.core.test_predict import make_model_dir

    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    base = tmp_path_factory.mktemp("nightly")
    candidates = base / "candidates"
    candidates.mkdir()
    (candidates / "tiny.smi").write_text("".join(f"{s} {n}\n" for s, n in CANDIDATES))
    (candidates / "README.txt").write_text("notes are not a library\n")
    output = base / "densnet-output"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # an untrained small model (cheap), built while the server boots
        model_dir = make_model_dir(base / "model")
    finally:
        torch.set_num_threads(threads)
    seconds["model"] = time.monotonic() - t0

    server = prefect_server
    server.wait_until_healthy()
    seconds["server_ready"] = time.monotonic() - t0
    env = dict(server.env)

    pools = [
        subprocess.Popen(
            _prefect("work-pool", "create", pool, "--type", "process"),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for pool in ("cpu", "gpu")
    ]
    for proc in pools:
        try:
            out, _ = proc.communicate(timeout=180)
        finally:
            stop_group(proc, grace_seconds=5)
        assert proc.returncode == 0, out
    seconds["pools"] = time.monotonic() - t0

    deploy_env = dict(
        env,
        DENSNET_HOME=str(ROOT),
        DENSNET_CANDIDATES=str(candidates),
        DENSNET_OUTPUT=str(output),
    )
    code, deploy_output = run_logged(
        _prefect("--no-prompt", "deploy", "--all", "--prefect-file", PREFECT_FILE),
        env=deploy_env,
        log=base / "deploy.log",
        timeout=300,
    )
    assert code == 0, f"prefect deploy failed ({code}):\n{tail(deploy_output)}"
    seconds["deploy"] = time.monotonic() - t0

    with temporary_settings({PREFECT_API_URL: server.api_url}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(NIGHTLY)
            flow_run = client.create_flow_run_from_deployment(deployment.id)

    # the worker's environment is the flow run's: the model and one conformer process
    worker_env = dict(env, DENSNET_MODEL_DIR=str(model_dir), DENSNET_WORKERS="1")
    worker_code, worker_output = run_logged(
        _prefect("worker", "start", "--pool", "cpu", "--run-once"),
        env=worker_env,
        log=base / "worker.log",
        timeout=420,
        cwd=base,
    )
    seconds["worker"] = time.monotonic() - t0
    return NightlyRun(
        server=server,
        deploy_output=deploy_output,
        flow_run_id=flow_run.id,
        worker_code=worker_code,
        worker_output=worker_output,
        candidates_dir=candidates,
        output_dir=output / "screen",
        model_dir=model_dir,
        seconds=seconds,
    )
