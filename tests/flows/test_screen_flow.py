"""The screen flow and ``densnet predict``: one row per record, SDF coordinates kept, artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from typer.testing import CliRunner

from densnet.cli import app
from densnet_core import keys as K
from densnet_core import store
from densnet_core.predict import Predictor
from flows.screen import progress_listener, screen_flow
from tests._torch_threads import one_torch_thread  # noqa: F401 - autouse fixture
from tests.core.test_predict import make_model_dir

MIXED = [
    ("CCO", "ethanol"),
    ("C1CC", "unclosed"),
    ("C[Si](C)(C)C", "tms"),
    ("CCN.Cl", "ethylamine-hcl"),  # salt: the neutral amine is kept
    ("CC(=O)[O-].[Na+]", "sodium-acetate"),  # salt: acetate (-1) is left, not trained for
    ("c1ccccc1O", "phenol"),
]
EXPECTED = ["ok", "invalid_smiles", "unsupported_element", "ok", "unsupported_charge", "ok"]


# the training domain the model card states: phenol (a new ring, 7 heavy atoms) is outside it
DOMAIN = {"training_elements": [1, 6, 7, 8], "training_ring_systems": [],
          "max_heavy_atoms_in_data": 3}  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("models") / "screen-model", card=DOMAIN)


@pytest.fixture
def mixed_smi(tmp_path: Path) -> Path:
    p = tmp_path / "mixed.smi"
    p.write_text("\n".join(f"{s} {n}" for s, n in MIXED) + "\n")
    return p


def _artifacts(flow_run_id):
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return run, {a.key: a for a in arts}


def test_screen_flow_on_mixed_smiles(mixed_smi: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "screen.parquet"
    seen: list[tuple[str, int, int]] = []
    with progress_listener(lambda stage, d, t: seen.append((stage, d, t))):
        state = screen_flow(
            input_path=str(mixed_smi),
            output_path=str(out),
            model_dir=str(model_dir),
            workers=1,
            top_n=2,
            return_state=True,
        )
    summary = state.result()
    df = store.read_table(out, "predictions")
    assert list(df[K.RECORD_INDEX]) == list(range(len(MIXED)))
    assert list(df[K.NAME]) == [n for _, n in MIXED]
    assert list(df[K.STATUS]) == EXPECTED
    assert (df[df[K.STATUS] != "ok"][K.ERROR] != "").all()
    assert "Si" in df.loc[2, K.ERROR]
    ok = df[df[K.STATUS] == "ok"]
    assert (ok[K.MODEL_ID] == summary["model_id"]).all()
    assert np.isfinite(ok[K.ALPHA_ISO_AU]).all() and np.isfinite(ok[K.DIPOLE_DEBYE]).all()
    assert (tmp_path / "screen.conformers.parquet").exists()
    assert summary["status_counts"]["ok"] == 3 and summary["n_records"] == 6
    # out-of-distribution verdicts: only phenol; no spreads from a single model
    assert list(df[K.OOD]) == [False] * 5 + [True]
    assert df.loc[5, K.OOD_REASON] == (
        "ring system absent from training: c1ccccc1; 7 heavy atoms > 3 seen in training"
    )
    assert (df.loc[:4, K.OOD_REASON] == "").all() and df[K.DIPOLE_DEBYE_STD].isna().all()
    assert summary["n_ood"] == 1 and summary["n_members"] == 1
    assert ("predict", 6, 6) in seen and any(s == "conformers" for s, _, _ in seen)

    run, arts = _artifacts(state.state_details.flow_run_id)
    assert run.name.startswith("screen-mixed-") and "screen" in run.tags
    top = arts["screen-top-candidates"]
    data = top.data if isinstance(top.data, list) else json.loads(top.data)
    assert len(data) == 2 and data[0][K.ALPHA_ISO_AU] >= data[1][K.ALPHA_ISO_AU]
    assert {d[K.NAME]: d[K.OOD] for d in data} == {
        d[K.NAME]: d[K.NAME] == "phenol" for d in summary["top"]
    }
    assert all(K.OOD in d and K.OOD_REASON in d for d in data)
    assert "screen-progress" in arts
    md = arts["screen-summary"].data
    assert summary["model_id"] in md and "| unsupported_charge | 1 |" in md
    assert "out of the training distribution (`ood`): **1**" in md


def test_sdf_coordinates_are_used_as_given(model_dir: Path, tmp_path: Path) -> None:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("OCC(=O)N"))
    AllChem.EmbedMolecule(mol, randomSeed=11)  # not MMFF-optimised: the flow must not move it
    mol.SetProp("_Name", "glycolamide")
    sdf = tmp_path / "in.sdf"
    with Chem.SDWriter(str(sdf)) as w:
        w.write(mol)
    out = tmp_path / "sdf.parquet"
    screen_flow(input_path=str(sdf), output_path=str(out), model_dir=str(model_dir), workers=1)
    row = store.read_table(out, "predictions").iloc[0]
    mol = next(Chem.SDMolSupplier(str(sdf), removeHs=False))  # the file's 4-decimal coordinates
    assert row[K.STATUS] == "ok" and row[K.NAME] == "glycolamide"
    direct = Predictor(model_dir).predict_rows(
        [
            {
                K.RECORD_INDEX: 0,
                K.NUMBERS: [a.GetAtomicNum() for a in mol.GetAtoms()],
                K.POSITIONS_ANGSTROM: mol.GetConformer().GetPositions().tolist(),
                K.CHARGE: 0,
                K.STATUS: "ok",
            }
        ]
    )[0]
    np.testing.assert_allclose(row[K.DIPOLE_AU], direct[K.DIPOLE_AU], atol=1e-5)
    np.testing.assert_allclose(row[K.POLARIZABILITY_AU], direct[K.POLARIZABILITY_AU], atol=1e-5)


def test_conformers_table_input_and_boltzmann_table(model_dir: Path, tmp_path: Path) -> None:
    from tests.core._tiny_labels import conformer_rows, write_conformers_table

    rows = conformer_rows(3, seed=1)
    conf = write_conformers_table(rows, tmp_path / "conf.parquet")
    out = tmp_path / "pred.parquet"
    summary = screen_flow(
        input_path=str(conf),
        output_path=str(out),
        model_dir=str(model_dir),
        n_conformers=3,
        chunk_size=5,
    )
    df = store.read_table(out, "predictions")
    assert len(df) == len(rows) and (df[K.STATUS] == "ok").all()
    assert list(df[K.CONFORMER_ID]) == [r[K.CONFORMER_ID] for r in rows]
    assert summary["conformers_output"] is None
    mol = store.read_table(summary["molecules_output"], "molecules")
    assert list(mol[K.RECORD_INDEX]) == [0, 1, 2, 3] and (mol["n_conformers"] == 3).all()


def test_cli_errors(tmp_path: Path, model_dir: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["predict", str(tmp_path / "nope.smi"), "-o", "x.parquet"])
    assert missing.exit_code == 2 and "input file not found" in missing.output
    (tmp_path / "in.xyz").write_text("1\n\nC 0 0 0\n")
    unknown = runner.invoke(app, ["predict", str(tmp_path / "in.xyz"), "-o", "x.parquet"])
    assert unknown.exit_code == 2 and "unknown input format" in unknown.output
    (tmp_path / "a.smi").write_text("CCO\n")
    no_model = runner.invoke(
        app, ["predict", str(tmp_path / "a.smi"), "-o", "x.parquet", "--model", str(tmp_path)]
    )
    assert no_model.exit_code == 2 and "no model.safetensors" in no_model.output


@pytest.mark.slow
def test_densnet_predict_cli_end_to_end(mixed_smi: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.parquet"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"))
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "densnet", "predict", str(mixed_smi), "-o", str(out)]
    proc = subprocess.run(
        [*cmd, "--model", str(model_dir), "--workers", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "6 records" in proc.stdout and "ok 3" in proc.stdout
    assert "out of the training distribution: 1 of 3 ok rows" in proc.stdout
    assert f"output: {out}" in proc.stdout and "read_parquet" in proc.stdout
    assert "Traceback" not in proc.stderr
    df = store.read_table(out, "predictions")
    assert list(df[K.STATUS]) == EXPECTED


@pytest.mark.slow
def test_screen_on_an_existing_dask_cluster_matches_in_process(
    mixed_smi: Path, model_dir: Path, tmp_path: Path
) -> None:
    """Scale-out: the screen flow given the address of a running 2-worker LocalCluster (what
    ``densnet predict --dask-address`` does) gives the same rows as the in-process screen."""
    from distributed import Client, LocalCluster

    from flows.runners import task_runner

    local_out, dask_out = tmp_path / "local.parquet", tmp_path / "dask.parquet"
    screen_flow(input_path=str(mixed_smi), output_path=str(local_out), model_dir=str(model_dir))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        address = cluster.scheduler_address
        flow = screen_flow.with_options(task_runner=task_runner(dask_address=address))
        summary = flow(
            input_path=str(mixed_smi),
            output_path=str(dask_out),
            model_dir=str(model_dir),
            dask_address=address,
            chunk_size=2,
        )
        with Client(address) as client:
            assert len(client.scheduler_info()["workers"]) == 2
    a = store.read_table(local_out, "predictions")
    b = store.read_table(dask_out, "predictions")
    assert list(b[K.STATUS]) == EXPECTED and summary["status_counts"]["ok"] == 3
    assert list(a[K.NAME]) == list(b[K.NAME])
    ok = a[K.STATUS] == "ok"
    np.testing.assert_allclose(
        np.stack(a.loc[ok, K.DIPOLE_AU]), np.stack(b.loc[ok, K.DIPOLE_AU]), atol=1e-5
    )
    np.testing.assert_allclose(a.loc[ok, K.ALPHA_ISO_AU], b.loc[ok, K.ALPHA_ISO_AU], rtol=1e-5)


def test_screen_flow_with_an_ensemble(tmp_path: Path) -> None:
    """An ensemble directory as the model: spreads in the rows and in the top-N artifact."""
    from tests.core._tiny_labels import conformer_rows, write_conformers_table
    from tests.core.test_predict_ensemble import make_ensemble_dir

    ens = make_ensemble_dir(tmp_path / "ens", members=2)
    conf = write_conformers_table(conformer_rows(1), tmp_path / "conf.parquet", energy_cycle=1)
    out = tmp_path / "pred.parquet"
    summary = screen_flow(input_path=str(conf), output_path=str(out), model_dir=str(ens), top_n=4)
    df = store.read_table(out, "predictions")
    assert (df[K.STATUS] == "ok").all() and (df[K.DIPOLE_DEBYE_STD] > 0).all()
    assert (df[K.ALPHA_ISO_AU_STD] > 0).all()
    assert (df[K.MODEL_ID] == summary["model_id"]).all()
    assert summary["model_id"].startswith("ens-") and summary["n_members"] == 2
    assert list(df[K.OOD]) == [False, True, False, False]  # ammonia: N not in training
    assert summary["n_ood"] == 1
    assert all(d[K.DIPOLE_DEBYE_STD] > 0 and K.ALPHA_ISO_AU_STD in d for d in summary["top"])
