"""The whole pipeline end to end on a tiny config (cheap level), and its idempotence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from densnet_core import keys as K
from densnet_core import store
from densnet_core.level import LevelOfTheory
from flows.pipeline import DEMO_CONFIG, PipelineConfig, load_config, pipeline_flow


def test_demo_config_resolves_to_existing_inputs():
    cfg = load_config(DEMO_CONFIG)
    assert Path(cfg.seed_input).exists()
    assert Path(cfg.candidates_input).exists()
    assert Path(cfg.candidates_input).name == "CHEMBL2321810.smi"


@pytest.mark.slow
def test_tiny_pipeline_runs_end_to_end_and_reruns_redo_nothing(tmp_path):
    seed = tmp_path / "seed.smi"
    seed.write_text("O water\nCO methanol\nN ammonia\n")
    candidates = tmp_path / "candidates.smi"
    candidates.write_text("CCO ethanol\nC1CC broken\nC[Si](C)(C)C tms\nOCCN ethanolamine\n")
    cfg = PipelineConfig(
        name="tiny",
        seed_input=str(seed),
        candidates_input=str(candidates),
        output_dir=str(tmp_path / "out"),
        level=LevelOfTheory(xc="hf", basis="sto-3g"),
        fine_tune_epochs=2,
        top_n=3,
    )
    summary = pipeline_flow(config=cfg)
    assert summary["label"]["status_counts"] == {"ok": 3}
    preds = store.read_table(summary["predictions"], "predictions")
    assert list(preds[K.NAME]) == ["ethanol", "broken", "tms", "ethanolamine"]
    assert list(preds[K.STATUS]) == ["ok", "invalid_smiles", "unsupported_element", "ok"]
    ok = preds[preds[K.STATUS] == "ok"]
    assert (ok[K.N_ELECTRONS].round(3) == [26.0, 34.0]).all()
    # plumbing only (2 epochs on 3 HF/STO-3G labels): finite, symmetric tensors
    for pol in ok[K.POLARIZABILITY_AU]:
        alpha = np.asarray(pol).reshape(3, 3)
        assert np.isfinite(alpha).all()
        np.testing.assert_allclose(alpha, alpha.T, atol=1e-5)
    assert set(summary["timings_seconds"]) == {"label", "fine_tune", "screen"}

    again = pipeline_flow(config=cfg)
    assert again["label"]["n_labelled"] == 0
    assert again["label"]["n_skipped"] == 3
