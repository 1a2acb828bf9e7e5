"""benchmarks.learning_curve: nested subsets, the power-law fit, and a run on tiny labels."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.learning_curve import (
    main,
    molecules_for,
    nested_subsets,
    power_law_fit,
    subset_store,
)
from densnet_core import keys as K
from densnet_core.store import read_dataset
from tests.core._tiny_labels import TINY_LEVEL, make_tiny_labels


def test_subsets_are_nested_sized_and_stable():
    ids = [f"MOL{i:03d}" for i in range(40)]
    subsets = nested_subsets(list(reversed(ids)), [0.5, 0.125, 0.25, 1.0])
    assert [len(subsets[f]) for f in (0.125, 0.25, 0.5, 1.0)] == [5, 10, 20, 40]
    assert set(subsets[0.125]) < set(subsets[0.25]) < set(subsets[0.5]) < set(ids)
    assert subsets == nested_subsets(ids, [0.125, 0.25, 0.5, 1.0])  # input order is irrelevant
    assert nested_subsets(ids, [0.01])[0.01] and len(nested_subsets(ids, [0.01])[0.01]) == 1
    with pytest.raises(ValueError):
        nested_subsets(ids, [0.0])


def test_power_law_fit_recovers_exponent_and_extrapolates():
    n = [50, 100, 200, 400]
    a, b = power_law_fit(n, [3.0 * x**-0.5 for x in n])
    assert a == pytest.approx(3.0) and b == pytest.approx(0.5)
    assert molecules_for(0.1, a, b) == pytest.approx(900.0)
    assert molecules_for(0.1, 1.0, -0.1) == math.inf  # error not falling: no amount of data
    with pytest.raises(ValueError):
        power_law_fit([100, 100], [0.3, 0.2])


def test_learning_curve_on_tiny_labels(tmp_path):
    from densnet_core.train import train

    labels = make_tiny_labels(tmp_path / "labels")
    (labels / "level.json").write_text(json.dumps(TINY_LEVEL.model_dump()))
    ref = tmp_path / "ref"
    kw = dict(preset="small", epochs=2, batch_size=4, lr=3e-3, seed=0)
    train(labels, ref, val_fraction=0.25, patience=2, grid_samples=0, **kw)
    card = json.loads((ref / "model_card.json").read_text())

    # the subset store holds the chosen molecules' rows only, and is built once
    keep = set(card["validation_inchikeys"]) | set(card["training_inchikeys"][:1])
    sub = subset_store(labels, tmp_path / "sub", keep)
    assert set(read_dataset(sub, "labels")[K.MOL_ID]) == keep
    assert subset_store(labels, tmp_path / "sub", set()) == sub

    out = tmp_path / "lc.json"
    args = [
        "--model", str(ref), "--labels", str(labels), "--work", str(tmp_path / "work"),
        "--fractions", "0.5", "--preset", "small", "--epochs", "2", "--batch-size", "4",
        "--lr", "3e-3",
    ]  # fmt: skip
    main([*args, "--json", str(out)])
    result = json.loads(out.read_text())
    card_file = tmp_path / "work" / "model-0.5" / "model_card.json"
    stamp = card_file.stat().st_mtime_ns
    main([*args, "--json", str(tmp_path / "again.json")])  # a finished run is reused as it is
    assert card_file.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "again.json").read_text())["points"] == result["points"]
    points = result["points"]
    assert [p["fraction"] for p in points] == [0.5, 1.0]
    assert [p["n_train_molecules"] for p in points] == [2, 3]
    assert len({p["n_val_molecules"] for p in points}) == 1  # the same validation molecules
    sub_card = json.loads((tmp_path / "work" / "model-0.5" / "model_card.json").read_text())
    assert sub_card["validation_inchikeys"] == card["validation_inchikeys"]
    assert set(sub_card["training_inchikeys"]) < set(card["training_inchikeys"])
    assert all(math.isfinite(p["dipole_mae_debye"]) for p in points)
    assert math.isfinite(result["dipole_fit"]["b"])
