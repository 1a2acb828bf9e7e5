"""The conformer flow and the ``densnet conformers`` command, with real RDKit and Prefect."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from typer.testing import CliRunner

from densnet.cli import app
from densnet_core import keys as K
from densnet_core import store
from flows.conformers import conformers_flow, progress_listener

MIXED = [
    ("CCO", "ethanol"),
    ("C1CC", "unclosed"),
    ("CC(=O)[O-].[Na+]", "sodium-acetate"),
    ("[CH3]", "methyl"),
    ("C[Si](C)(C)C", "tms"),
    ("C" * 120, "too-big"),
    ("CC(O)CC", "butanol"),
    ("[Pt](Cl)(Cl)(N)N", "cisplatin"),
    ("c1ccccc1O", "phenol"),
    ("CCO", "ethanol"),  # duplicate name and molecule
]


@pytest.fixture
def mixed_smi(tmp_path: Path) -> Path:
    p = tmp_path / "mixed.smi"
    p.write_text("smiles name\n" + "\n".join(f"{s} {n}" for s, n in MIXED) + "\n")
    return p


def test_flow_on_mixed_input(mixed_smi: Path, tmp_path: Path) -> None:
    out = tmp_path / "conf.parquet"
    seen: list[tuple[int, int]] = []
    with progress_listener(lambda done, total: seen.append((done, total))):
        state = conformers_flow(
            input_path=str(mixed_smi),
            output_path=str(out),
            n_conformers=2,
            workers=2,
            batch_size=3,
            return_state=True,
        )
    summary = state.result()
    assert summary["n_records"] == 10
    df = store.read_table(out, "conformers")
    assert sorted(set(df[K.RECORD_INDEX])) == list(range(10))
    assert list(df[K.RECORD_INDEX]) == sorted(df[K.RECORD_INDEX])  # input order
    first = df.groupby(K.RECORD_INDEX).first()
    assert list(first[K.NAME]) == [n for _, n in MIXED]
    assert list(first[K.STATUS]) == [
        "ok",
        "invalid_smiles",
        "ok",
        "ok",
        "unsupported_element",
        "too_large",
        "ok",
        "unsupported_element",
        "ok",
        "ok",
    ]
    assert summary["status_counts"] == {
        "ok": 6,
        "unsupported_element": 2,
        "invalid_smiles": 1,
        "too_large": 1,
    }
    assert (df[df[K.STATUS] != "ok"][K.ERROR] != "").all()
    assert first.loc[2, K.CHARGE] == -1 and first.loc[3, K.MULTIPLICITY] == 2
    assert seen[0] == (0, 10) and seen[-1] == (10, 10)
    # both ethanol records: identical conformers (same seed), so identical keys
    eth = df[df[K.NAME] == "ethanol"]
    assert set(eth[eth[K.RECORD_INDEX] == 0][K.CONFORMER_KEY]) == set(
        eth[eth[K.RECORD_INDEX] == 9][K.CONFORMER_KEY]
    )

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    assert run.name.startswith("conformers-mixed-")
    by_key = {a.key: a for a in artifacts}
    table = by_key["conformers-status-counts"]
    assert table.type == "table"
    data = table.data if isinstance(table.data, list) else json.loads(table.data)
    assert {row["status"]: row["records"] for row in data} == summary["status_counts"]
    assert "conformers-summary" in by_key and "| ok | 6 |" in by_key["conformers-summary"].data
    assert "conformers-progress" in by_key


def test_cli_errors_and_empty_input(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["conformers", str(tmp_path / "nope.smi"), "-o", "x.parquet"])
    assert missing.exit_code == 2
    assert "input file not found" in missing.output and "Traceback" not in missing.output
    (tmp_path / "in.xyz").write_text("1\n\nC 0 0 0\n")
    unknown = runner.invoke(app, ["conformers", str(tmp_path / "in.xyz"), "-o", "x.parquet"])
    assert unknown.exit_code == 2 and "unknown input format" in unknown.output

    empty = tmp_path / "empty.smi"
    empty.write_text("")
    out = tmp_path / "empty.parquet"
    res = runner.invoke(app, ["conformers", str(empty), "-o", str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "no records" in res.output
    df = store.read_table(out, "conformers")
    assert len(df) == 0 and K.CONFORMER_KEY in df.columns


def test_cli_default_runs_the_library_without_prefect(mixed_smi: Path, tmp_path: Path) -> None:
    out = tmp_path / "local.parquet"
    res = CliRunner().invoke(
        app, ["conformers", str(mixed_smi), "-o", str(out), "--workers", "2", "--batch-size", "3"]
    )
    assert res.exit_code == 0, res.output
    assert "10 records → 10 conformers" in res.output and "no Prefect" in res.output
    assert "status: ok 6, unsupported_element 2, invalid_smiles 1, too_large 1" in res.output
    df = store.read_table(out, "conformers")
    assert list(df[K.RECORD_INDEX]) == list(range(10))
    assert list(df[K.NAME]) == [n for _, n in MIXED]
    assert df.loc[2, K.CHARGE] == -1 and df.loc[3, K.MULTIPLICITY] == 2


def test_cli_default_does_not_import_prefect(mixed_smi: Path, tmp_path: Path) -> None:
    """Prefect's import and temporary server cost more than the conformers of 1,000 molecules."""
    out = tmp_path / "plain.parquet"
    script = (
        "import sys\n"
        "from densnet.cli import app\n"
        f"app(['conformers', {str(mixed_smi)!r}, '-o', {str(out)!r}, '--workers', '1'],"
        " standalone_mode=False)\n"
        "print('prefect imported:', 'prefect' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "prefect imported: False" in proc.stdout
    assert store.read_table(out, "conformers")[K.RECORD_INDEX].nunique() == 10


@pytest.mark.slow
def test_densnet_console_script_end_to_end(mixed_smi: Path, tmp_path: Path) -> None:
    """The installed `densnet` command with --prefect: its own temporary Prefect server."""
    exe = shutil.which("densnet") or f"{sys.executable} -m densnet"
    out = tmp_path / "cli.parquet"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no shared database, no server running
    proc = subprocess.run(
        [*exe.split(), "conformers", str(mixed_smi), "-o", str(out), "--workers", "2", "--prefect"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "10 records" in proc.stdout and "ok 6" in proc.stdout
    assert "Prefect flow" in proc.stdout
    assert f"output: {out}" in proc.stdout
    assert "Traceback" not in proc.stderr
    df = store.read_table(out, "conformers")
    assert df[K.RECORD_INDEX].nunique() == 10
