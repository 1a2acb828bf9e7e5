"""The training flow: a single model (unchanged) and a K-member ensemble as parallel tasks."""

from __future__ import annotations

import pytest

from densnet_core.ensemble import load_ensemble, read_manifest
from densnet_core.level import LevelOfTheory
from flows.train import train_flow
from tests.core._tiny_labels import make_tiny_labels

TINY = LevelOfTheory(xc="hf", basis="sto-3g")


@pytest.mark.slow
def test_train_flow_single_model_and_ensemble(tmp_path):
    labels = make_tiny_labels(tmp_path / "labels", n_conformers=2)
    kw = dict(labels_dir=str(labels), epochs=1, preset="small", level=TINY, batch_size=4)
    single = train_flow(model_dir=str(tmp_path / "single"), **kw)
    assert single["epochs_run"] == 1 and "ensemble_id" not in single
    assert not (tmp_path / "single" / "ensemble.json").exists()

    out = tmp_path / "ens"
    res = train_flow(model_dir=str(out), ensemble=2, val_fraction=0.25, **kw)
    m = read_manifest(out)
    assert res["ensemble_id"] == m["ensemble_id"] and m["n_members"] == 2
    assert [s["skipped"] for s in res["members"]] == [False, False]
    assert m["calibration"]["validation"]["n"] == 2  # 1 validation molecule x 2 conformers
    assert load_ensemble(out).ensemble_id == m["ensemble_id"]
    again = train_flow(model_dir=str(out), ensemble=2, val_fraction=0.25, **kw)
    assert [s["skipped"] for s in again["members"]] == [True, True]
    assert again["ensemble_id"] == res["ensemble_id"]
