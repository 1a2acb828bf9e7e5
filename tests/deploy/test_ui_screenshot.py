"""The Prefect UI of the nightly run, rendered by headless Chromium (screenshot and DOM).

Uses the session's server and nightly run (``conftest.py``). Screenshots go to the test's
temporary folder; with ``DENSNET_SAVE_SCREENSHOTS=1`` they are also copied to ``docs/ui/``.
Skipped only when Chromium is not installed (CI installs it: ``.ci/run``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.deploy.conftest import ROOT, NightlyRun, run_logged, tail

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    # the UI is a single-page app: let its scripts fetch and render before the capture
    "--virtual-time-budget=20000",
]
DOCS_UI = ROOT / "docs" / "ui"


def chromium() -> str | None:
    """The Chromium binary (``/usr/bin/chromium`` first), or None."""
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def capture(url: str, png: Path, env: dict[str, str]) -> str:
    """Screenshot ``url`` into ``png`` and return the rendered DOM (one Chromium run)."""
    binary = chromium()
    assert binary is not None
    profile = png.with_suffix(".profile")
    code, output = run_logged(
        [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--dump-dom",
            f"--screenshot={png}",
            url,
        ],
        env=env,
        log=png.with_suffix(".log"),
        timeout=180,
        cwd=png.parent,
    )
    assert code == 0 and png.is_file(), f"chromium failed ({code}) on {url}:\n{tail(output)}"
    return output


def assert_not_blank(png: Path) -> None:
    """A real page: a few kB at least, many colours, and visible contrast."""
    from PIL import Image, ImageStat

    assert png.stat().st_size > 20_000, png.stat().st_size
    with Image.open(png) as img:
        assert img.size == (1400, 1000)
        gray = img.convert("L")
        assert ImageStat.Stat(gray).stddev[0] > 10.0
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 100


def save_copy(png: Path, name: str) -> None:
    """Copy a screenshot to ``docs/ui/<name>`` when ``DENSNET_SAVE_SCREENSHOTS=1``."""
    if os.environ.get("DENSNET_SAVE_SCREENSHOTS") == "1":
        DOCS_UI.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, DOCS_UI / name)


@pytest.fixture(scope="module")
def browser_env(nightly_run: NightlyRun) -> dict[str, str]:
    if chromium() is None:
        pytest.skip("Chromium is not installed (/usr/bin/chromium); CI installs it in .ci/run")
    return dict(nightly_run.server.env, HOME=str(nightly_run.server.home))


def _artifacts(nightly_run: NightlyRun) -> tuple[Any, dict[str, Any]]:
    with temporary_settings({PREFECT_API_URL: nightly_run.server.api_url}):
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(nightly_run.flow_run_id)
            arts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
    return run, {a.key: a for a in arts}


def test_flow_run_page(nightly_run: NightlyRun, browser_env: dict[str, str], tmp_path: Path):
    run, _ = _artifacts(nightly_run)
    png = tmp_path / "flow-run.png"
    dom = capture(f"{nightly_run.server.url}/runs/flow-run/{run.id}", png, browser_env)
    save_copy(png, "flow-run.png")
    assert run.name in dom and "nightly-screen" in dom and "Completed" in dom, tail(dom)
    assert_not_blank(png)


def test_top_candidates_artifact_page(
    nightly_run: NightlyRun, browser_env: dict[str, str], tmp_path: Path
):
    _, arts = _artifacts(nightly_run)
    top = arts["screen-folder-top-candidates"]
    png = tmp_path / "top-candidates.png"
    dom = capture(f"{nightly_run.server.url}/artifacts/artifact/{top.id}", png, browser_env)
    save_copy(png, "top-candidates.png")
    assert "screen-folder-top-candidates" in dom, tail(dom)
    assert "phenol" in dom and "ethanol" in dom and "unclosed-ring" not in dom
    assert_not_blank(png)
