"""The label flow and ``densnet label``: every record gets a row, reruns and kills resume,
and a 2-worker ``distributed.LocalCluster`` gives the same labels as in-process labelling.

A cheap level (HF/STO-3G) keeps these fast; the science of the default level is checked in
``tests/core/test_labelling.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from densnet_core import keys as K
from densnet_core import store
from densnet_core.level import LevelOfTheory
from flows.label import label_flow
from flows.runners import task_runner
from tests._pyscf_reference import independent_pyscf

CHEAP = LevelOfTheory(xc="hf", basis="sto-3g", conv_tol=1e-10)

INPUT = [
    ("O", "water"),
    ("CO", "methanol"),
    ("C1CC", "unclosed-ring"),
    ("C[Si](C)(C)C", "tetramethylsilane"),
    ("N", "ammonia"),
]


@pytest.fixture
def small_smi(tmp_path: Path) -> Path:
    path = tmp_path / "small.smi"
    path.write_text("\n".join(f"{s} {n}" for s, n in INPUT) + "\n")
    return path


def _labels(labels_dir: Path) -> pd.DataFrame:
    return store.read_dataset(labels_dir, "labels")


def test_every_record_gets_a_label_row_and_a_rerun_computes_nothing(small_smi, tmp_path):
    labels_dir = tmp_path / "labels"
    summary = label_flow(input_path=str(small_smi), labels_dir=str(labels_dir), level=CHEAP)
    assert summary["n_rows"] == 5
    assert summary["status_counts"] == {"ok": 3, "invalid_smiles": 1, "unsupported_element": 1}
    df = _labels(labels_dir)
    assert len(df) == 5
    by_name = df.set_index(K.NAME)
    assert "Si" in by_name.loc["tetramethylsilane", K.ERROR]
    assert by_name.loc["unclosed-ring", K.STATUS] == "invalid_smiles"
    water = by_name.loc["water"]
    assert water[K.STATUS] == "ok" and water[K.SCF_CONVERGED]
    assert len(water[K.DENSITY_COEFFS]) > 0
    assert np.asarray(water[K.POLARIZABILITY_AU]).shape == (9,)
    assert json.loads((labels_dir / "level.json").read_text()) == CHEAP.model_dump()
    # the conformers the flow generated are kept beside the labels
    assert (labels_dir / "conformers" / "small.parquet").exists()

    parts_before = store.part_files(labels_dir)
    again = label_flow(input_path=str(small_smi), labels_dir=str(labels_dir), level=CHEAP)
    assert again["n_labelled"] == 0 and again["n_skipped"] == 5
    assert store.part_files(labels_dir) == parts_before

    with pytest.raises(ValueError, match="holds labels at"):
        label_flow(
            input_path=str(small_smi),
            labels_dir=str(labels_dir),
            level=LevelOfTheory(xc="hf", basis="def2-svp"),
        )


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_labels_as_in_process(small_smi, tmp_path):
    local_dir, dask_dir = tmp_path / "local", tmp_path / "dask"
    label_flow(input_path=str(small_smi), labels_dir=str(local_dir), level=CHEAP)
    dask_flow = label_flow.with_options(task_runner=task_runner(workers=2))
    summary = dask_flow(
        input_path=str(small_smi),
        labels_dir=str(dask_dir),
        level=CHEAP,
        workers=2,
        batch_size=1,
    )
    assert summary["status_counts"]["ok"] == 3
    a = _labels(local_dir).set_index(K.CONFORMER_KEY).sort_index()
    b = _labels(dask_dir).set_index(K.CONFORMER_KEY).sort_index()
    assert list(a.index) == list(b.index)
    for key in a.index[a[K.STATUS] == "ok"]:
        assert a.loc[key, K.ENERGY_HARTREE] == pytest.approx(b.loc[key, K.ENERGY_HARTREE], abs=1e-9)
        np.testing.assert_allclose(
            a.loc[key, K.DENSITY_COEFFS], b.loc[key, K.DENSITY_COEFFS], atol=1e-6
        )
        np.testing.assert_allclose(a.loc[key, K.DIPOLE_AU], b.loc[key, K.DIPOLE_AU], atol=1e-7)


@pytest.mark.slow
def test_killed_label_run_resumes_without_recomputing(tmp_path):
    smi = tmp_path / "series.smi"
    series = ["CO", "CCO", "CCCO", "CC(C)O", "CCCCO", "OCCO", "CC(=O)O", "COC", "CCN", "NCCO"]
    smi.write_text("\n".join(f"{s} mol-{i}" for i, s in enumerate(series)) + "\n")
    labels_dir = tmp_path / "labels"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"))
    env.pop("PREFECT_API_URL", None)
    cmd = [
        sys.executable,
        "-m",
        "densnet",
        "label",
        str(smi),
        "-o",
        str(labels_dir),
        "--level",
        json.dumps({"xc": "hf", "basis": "def2-svp"}),
        "--batch-size",
        "2",
    ]
    # its own process group, so the kill takes the run's ephemeral Prefect server with it (a
    # SIGKILLed parent cannot stop it; it would outlive the test as an orphan)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while len(store.part_files(labels_dir)) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = _labels(labels_dir)
    assert 3 <= len(first) < len(series), "the run should have been killed half-way"
    first_keys = set(first[K.CONFORMER_KEY])

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(first)} already done" in done.stdout
    final = _labels(labels_dir)
    assert len(final) == len(series)
    assert final[K.CONFORMER_KEY].is_unique  # nothing labelled twice
    assert (final[K.STATUS] == "ok").all()
    # the labels written before the kill are untouched
    before = first.set_index(K.CONFORMER_KEY)
    after = final.set_index(K.CONFORMER_KEY)
    for key in first_keys:
        assert after.loc[key, K.ENERGY_HARTREE] == before.loc[key, K.ENERGY_HARTREE]


HOCL_SDF = """hypochlorous-acid
  handmade 3D

  3  2  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 O   0  0  0  0  0  0  0  0  0  0  0  0
    1.6900    0.0000    0.0000 Cl  0  0  0  0  0  0  0  0  0  0  0  0
   -0.2400    0.9400    0.0500 H   0  0  0  0  0  0  0  0  0  0  0  0
  1  2  1  0
  1  3  1  0
M  END
$$$$
"""


def _pyscf_dipole_au(numbers, positions_angstrom, field_au=None) -> np.ndarray:
    """(3,) dipole of an independent PySCF calculation, e·bohr."""
    return independent_pyscf(numbers, positions_angstrom, field_au)[1].dip_moment(
        unit="AU", verbose=0
    )


@pytest.mark.slow
def test_densnet_label_on_an_sdf_matches_independent_pyscf(tmp_path):
    """The issue's acceptance check: |mu| within 0.005 D, alpha_iso within 0.5 % of PySCF FF."""
    from densnet_core.units import DEBYE_PER_AU

    sdf = tmp_path / "hocl.sdf"
    sdf.write_text(HOCL_SDF)
    labels_dir = tmp_path / "labels"
    summary = label_flow(input_path=str(sdf), labels_dir=str(labels_dir))
    assert summary["status_counts"] == {"ok": 1}
    lab = _labels(labels_dir).iloc[0]
    numbers = list(lab[K.NUMBERS])
    positions = np.stack(lab[K.POSITIONS_ANGSTROM])
    # the SDF coordinates are used as they are
    np.testing.assert_allclose(positions[:2], [[0, 0, 0], [1.69, 0, 0]], atol=1e-6)
    mu = _pyscf_dipole_au(numbers, positions)
    mu_label = np.asarray(lab[K.DIPOLE_AU])
    assert abs(np.linalg.norm(mu_label) - np.linalg.norm(mu)) * DEBYE_PER_AU < 0.005
    f = 1e-3
    alpha = np.zeros((3, 3))
    for j in range(3):
        e = np.zeros(3)
        e[j] = f
        alpha[:, j] = (
            _pyscf_dipole_au(numbers, positions, e) - _pyscf_dipole_au(numbers, positions, -e)
        ) / (2 * f)
    iso_label = np.trace(np.asarray(lab[K.POLARIZABILITY_AU]).reshape(3, 3)) / 3
    assert iso_label == pytest.approx(np.trace(alpha) / 3, rel=0.005)


@pytest.mark.slow
def test_cli_density_only_labels_share_the_store_with_full_ones(tmp_path):
    """``densnet label --density-only``: no forces or polarizability; a later full run labels
    those conformers again, and a density-only rerun skips what a full label already holds."""
    smi = tmp_path / "two.smi"
    smi.write_text("O water\nN ammonia\n")
    labels_dir = tmp_path / "labels"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"))
    env.pop("PREFECT_API_URL", None)
    level = json.dumps({"xc": "hf", "basis": "sto-3g"})

    def run(*extra: str) -> str:
        cmd = [sys.executable, "-m", "densnet", "label", str(smi), "-o", str(labels_dir)]
        done = subprocess.run(
            [*cmd, "--level", level, *extra], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "2 labelled now" in run("--density-only", "--threads", "1", "--max-memory-mb", "500")
    first = _labels(labels_dir)
    d_only = LevelOfTheory(xc="hf", basis="sto-3g", polarizability=False, forces=False)
    assert set(first[K.LEVEL_HASH]) == {d_only.hash}
    assert first[K.FORCES_HARTREE_PER_BOHR].isna().all()
    assert first[K.POLARIZABILITY_AU].isna().all() and first[K.RESPONSE_COEFFS].isna().all()
    assert first[K.DIPOLE_AU].map(len).eq(3).all()

    assert "2 labelled now" in run()  # the full level needs forces and polarizabilities
    assert "2 already done" in run("--density-only")
    full = LevelOfTheory(xc="hf", basis="sto-3g")
    every = store.read_dataset(labels_dir, "labels")
    assert sorted(every[K.LEVEL_HASH]) == sorted([d_only.hash] * 2 + [full.hash] * 2)
    level_file = json.loads((labels_dir / "level.json").read_text())
    assert LevelOfTheory(**level_file).full() == full


def test_pyscf_threads_come_from_the_option_then_the_setting_then_the_cores(monkeypatch):
    """``--threads`` wins over ``DENSNET_PYSCF_THREADS``, which wins over cores / workers."""
    from densnet_core.settings import available_cores, get_settings
    from flows.runners import threads_per_worker

    monkeypatch.delenv("DENSNET_PYSCF_THREADS", raising=False)
    get_settings.cache_clear()
    try:
        assert threads_per_worker(1) == available_cores()
        assert threads_per_worker(2 * available_cores()) == 1
        assert threads_per_worker(1, "tcp://somewhere:8786") is None
        assert threads_per_worker(1, threads=3) == 3
        monkeypatch.setenv("DENSNET_PYSCF_THREADS", "5")
        get_settings.cache_clear()
        assert threads_per_worker(1) == 5
        assert threads_per_worker(1, "tcp://somewhere:8786") == 5
        assert threads_per_worker(1, threads=2) == 2
    finally:
        monkeypatch.delenv("DENSNET_PYSCF_THREADS", raising=False)
        get_settings.cache_clear()
