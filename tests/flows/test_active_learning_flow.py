"""One active-learning round end to end at HF/STO-3G with a 2-member small ensemble."""

from __future__ import annotations

import json

import pytest

from densnet_core import keys as K
from densnet_core.active_learning import read_rounds
from densnet_core.conformers import conformers_table
from densnet_core.ensemble import read_manifest, train_ensemble
from densnet_core.store import part_files, read_dataset, read_table
from flows.active_learning import ActiveLearningParams, active_learning_flow
from tests.core._tiny_labels import MOLECULES, TINY_LEVEL, make_tiny_labels

# water is in the seed labels too: it must never be picked
POOL = ["O water", "CN methylamine", "CC ethane", "NC=O formamide", "CC#N acetonitrile"]


@pytest.mark.slow
def test_one_round_labels_the_picks_fine_tunes_and_a_rerun_does_nothing(tmp_path):
    seed_labels = make_tiny_labels(tmp_path / "seed-labels", n_conformers=1)
    (seed_labels / "level.json").write_text(json.dumps(TINY_LEVEL.model_dump()))
    init = tmp_path / "init-ensemble"
    train_ensemble(
        seed_labels,
        init,
        members=2,
        epochs=1,
        preset="small",
        level=TINY_LEVEL,
        val_fraction=0.25,
        batch_size=4,
        grid_samples=0,
    )
    smi = tmp_path / "pool.smi"
    smi.write_text("\n".join(POOL) + "\n")
    pool = tmp_path / "pool.parquet"
    conformers_table(smi, pool, n_conformers=1)

    out = tmp_path / "al"
    params = ActiveLearningParams(
        pool_path=str(pool),
        seed_labels_dir=str(seed_labels),
        init_ensemble_dir=str(init),
        output_dir=str(out),
        budget_per_round=2,
        max_rounds=1,
        epochs=1,
        batch_size=4,
    )
    res = active_learning_flow(params)
    assert res["ran"] == [1] and res["stop_reason"] == "max_rounds"

    rounds = read_rounds(out / "rounds.parquet")
    assert len(rounds) == 1
    row = rounds.iloc[0]
    picked = set(row["picked_mol_ids"])
    assert len(picked) == 2 and row["n_picked"] == 2 and row["n_labels_ok"] == 2
    seed_ids = {m[2] for m in MOLECULES}
    assert not picked & seed_ids  # water (labelled already) is not picked
    pool_ids = set(read_table(pool, "conformers")[K.MOL_ID])
    assert picked <= pool_ids
    for col in ("pool_mean_std_dipole_debye_before", "pool_mean_std_dipole_debye_after"):
        assert row[col] >= 0
    assert row["pool_size"] == len(pool_ids - seed_ids - picked)

    labels = read_dataset(out / "labels", "labels")
    assert set(labels[K.MOL_ID]) == picked  # labels for exactly the picked molecules
    assert (labels[K.STATUS] == K.STATUS_OK).all()

    new = read_manifest(row["ensemble_dir"])
    assert picked <= set(new["training_inchikeys"])  # the picks trained ...
    assert new["validation_inchikeys"] == read_manifest(init)["validation_inchikeys"]  # ... only
    assert new["ensemble_id"] == row["ensemble_id"]

    parts = [p.name for p in part_files(out / "labels")]
    again = active_learning_flow(params)
    assert again["ran"] == [] and again["stop_reason"] == "max_rounds"
    assert [p.name for p in part_files(out / "labels")] == parts
    assert len(read_rounds(out / "rounds.parquet")) == 1
