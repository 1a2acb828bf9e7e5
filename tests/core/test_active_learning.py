"""Active-learning selection, round table, stopping rule and label views (no Prefect)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from densnet_core import keys as K
from densnet_core.active_learning import (
    ROUND_COLUMNS,
    RoundRecord,
    StoppingRule,
    append_round,
    copy_known_labels,
    label_view,
    molecule_scores,
    read_rounds,
    round_budget,
    select_random,
    select_uncertain_diverse,
    stop_reason,
    uncertainty_scores,
)

# name, SMILES, |mu| spread (D), alpha spread (bohr^3), alpha_iso (bohr^3)
POOL = [
    ("hexylbenzene", "CCCCCCc1ccccc1", 0.90, 9.0, 100.0),
    ("heptylbenzene", "CCCCCCCc1ccccc1", 0.85, 8.8, 100.0),  # near-duplicate, 2nd most uncertain
    ("acetamide", "CC(N)=O", 0.50, 2.0, 40.0),
    ("fluoroform", "FC(F)F", 0.40, 1.5, 20.0),
    ("pyridine", "c1ccncc1", 0.30, 2.0, 60.0),
    ("urea", "NC(N)=O", 0.10, 0.5, 30.0),
    ("dmso", "CS(C)=O", 0.05, 0.2, 50.0),
]


def pool_frame(pool=POOL) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                K.NAME: name,
                K.SMILES: smi,
                K.MOL_ID: f"KEY-{name}",
                K.CONFORMER_ID: 0,
                K.STATUS: K.STATUS_OK,
                K.DIPOLE_DEBYE_STD: sd,
                K.ALPHA_ISO_AU_STD: sa,
                K.ALPHA_ISO_AU: a,
            }
            for name, smi, sd, sa, a in pool
        ]
    )


def test_score_normalises_each_property_by_its_pool_median():
    s = uncertainty_scores([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [10.0, 10.0, 10.0])
    # dipole term 0.5, 1, 1.5 (median 2); alpha term 1 for all
    np.testing.assert_allclose(s, [0.75, 1.0, 1.25])
    only_mu = uncertainty_scores([1.0, 3.0], [math.nan, math.nan], [10.0, 10.0])
    np.testing.assert_allclose(only_mu, [0.5, 1.5])


def test_picks_the_most_uncertain_first():
    df = pool_frame()
    mol = molecule_scores(df)
    assert list(mol[K.NAME][:2]) == ["hexylbenzene", "heptylbenzene"]
    one = select_uncertain_diverse(df, 1)
    assert list(one[K.NAME]) == ["hexylbenzene"]
    three = select_uncertain_diverse(df, 3)
    assert three[K.NAME].iloc[0] == "hexylbenzene"
    # the shortlist is the 3n most uncertain: the two least uncertain are never candidates
    two = select_uncertain_diverse(df, 2, shortlist_factor=2.5)
    assert not set(two[K.NAME]) & {"urea", "dmso"}


def test_picks_are_diverse_not_near_duplicates():
    df = pool_frame()
    picks = select_uncertain_diverse(df, 2)
    # ranking alone would take both alkylbenzenes; MaxMin takes one and something unlike it
    assert list(molecule_scores(df)[K.NAME][:2]) == ["hexylbenzene", "heptylbenzene"]
    assert picks[K.NAME].iloc[0] == "hexylbenzene"
    assert "heptylbenzene" not in set(picks[K.NAME])
    assert len(picks) == 2 and picks[K.MOL_ID].is_unique


def test_already_labelled_molecules_are_never_picked():
    df = pool_frame()
    picks = select_uncertain_diverse(df, 3, exclude_mol_ids={"KEY-hexylbenzene"})
    assert "hexylbenzene" not in set(picks[K.NAME])
    assert picks[K.NAME].iloc[0] == "heptylbenzene"
    everything = {f"KEY-{p[0]}" for p in POOL}
    assert select_uncertain_diverse(df, 3, exclude_mol_ids=everything).empty
    rnd = select_random(df, 10, exclude_mol_ids={"KEY-urea", "KEY-dmso"}, seed=1)
    assert len(rnd) == len(POOL) - 2 and not {"urea", "dmso"} & set(rnd[K.NAME])


def test_failed_rows_are_not_candidates():
    df = pool_frame()
    df.loc[df[K.NAME] == "hexylbenzene", K.STATUS] = K.STATUS_UNSUPPORTED_ELEMENT
    assert select_uncertain_diverse(df, 1)[K.NAME].iloc[0] == "heptylbenzene"


def test_random_baseline_is_reproducible_and_seeded():
    df = pool_frame()
    a = select_random(df, 3, seed=7)
    b = select_random(df.sample(frac=1.0, random_state=3), 3, seed=7)  # row order irrelevant
    assert list(a[K.MOL_ID]) == list(b[K.MOL_ID])
    draws = {tuple(select_random(df, 3, seed=s)[K.MOL_ID]) for s in range(6)}
    assert len(draws) > 1


def _record(r: int, **kw) -> RoundRecord:
    base = dict(
        round=r,
        strategy="uncertainty_maxmin",
        seed=0,
        budget=2,
        n_picked=2,
        n_labels_ok=2,
        n_labelled_total=2 * r,
        label_budget=-1,
        picked_names=[f"a{r}", f"b{r}"],
        picked_mol_ids=[f"KA{r}", f"KB{r}"],
        picked_scores=[2.0, 1.5],
        init_dir="init",
        ensemble_dir=f"round-{r:02d}/ensemble",
        ensemble_id=f"e{r}",
        pool_mean_std_dipole_debye_before=1.0,
        pool_mean_std_dipole_debye_after=0.8,
        pool_mean_rel_std_alpha_before=0.05,
        pool_mean_rel_std_alpha_after=0.04,
        started="2026-11-25T00:00:00+00:00",
        finished="2026-11-25T00:01:00+00:00",
        wall_seconds=60.0,
    )
    base.update(kw)
    return RoundRecord(**base)


def test_round_table_appends_replaces_and_reads_back(tmp_path):
    path = tmp_path / "al" / "rounds.parquet"
    assert read_rounds(path).empty and tuple(read_rounds(path).columns) == ROUND_COLUMNS
    append_round(path, _record(1))
    append_round(path, _record(2, stop_reason="max_rounds"))
    df = read_rounds(path)
    assert list(df["round"]) == [1, 2]
    assert list(df["picked_names"].iloc[1]) == ["a2", "b2"]
    assert df["stop_reason"].tolist() == ["", "max_rounds"]
    meta = pq.read_schema(path).metadata
    assert meta[b"table"] == b"active_learning_rounds" and b"schema_version" in meta
    append_round(path, _record(1, ensemble_id="again"))  # a rerun of round 1 replaces it
    df = read_rounds(path)
    assert list(df["round"]) == [1, 2] and df["ensemble_id"].iloc[0] == "again"
    assert not list(tmp_path.joinpath("al").glob(".*tmp"))  # no stray temporary files
    with pytest.raises(ValueError, match="lacks"):
        append_round(path, {"round": 3})


def test_stopping_rule():
    none: list = []
    assert stop_reason(none, StoppingRule(max_rounds=2)) == ""
    assert stop_reason(none, StoppingRule(max_rounds=2), pool_remaining=0) == "pool_exhausted"
    one = [_record(1).row()]
    assert stop_reason(one, StoppingRule(max_rounds=1)) == "max_rounds"
    assert stop_reason(one, StoppingRule(max_rounds=5, label_budget=2)) == "label_budget"
    assert stop_reason(one, StoppingRule(max_rounds=5, label_budget=3)) == ""
    assert round_budget(pd.DataFrame(one), StoppingRule(label_budget=3), 2) == 1
    assert round_budget(pd.DataFrame(one), StoppingRule(), 2) == 2
    target = StoppingRule(max_rounds=5, target_std_dipole_debye=0.9)
    assert stop_reason(one, target) == "uncertainty_target"
    both = StoppingRule(max_rounds=5, target_std_dipole_debye=0.9, target_rel_std_alpha=0.01)
    assert stop_reason(one, both) == ""  # alpha not there yet
    # the last round lowered the dipole spread by 20 %, alpha by 20 %
    assert stop_reason(one, StoppingRule(max_rounds=5, min_improvement=0.1)) == ""
    assert stop_reason(one, StoppingRule(max_rounds=5, min_improvement=0.3)) == "no_improvement"


def test_known_labels_are_copied_and_views_join_stores(tmp_path):
    from densnet_core.dataset import load_label_rows
    from densnet_core.store import read_dataset
    from tests.core._tiny_labels import TINY_LEVEL, conformer_rows, make_tiny_labels

    src = make_tiny_labels(tmp_path / "bench", n_conformers=1)
    rows = conformer_rows(1)
    picked = [r for r in rows if r[K.NAME] in ("water", "methanol")]
    dest = tmp_path / "al-labels"
    assert copy_known_labels(picked, [src], dest, TINY_LEVEL) == 2
    assert copy_known_labels(picked, [src], dest, TINY_LEVEL) == 0  # there already
    got = read_dataset(dest, "labels")
    assert sorted(got[K.NAME]) == ["methanol", "water"]

    seed = tmp_path / "seed"
    other = [r for r in rows if r[K.NAME] == "ammonia"]
    copy_known_labels(other, [src], seed, TINY_LEVEL)
    view = label_view(tmp_path / "view", [seed, dest])
    assert all(p.is_symlink() for p in view.glob("part-*.parquet"))
    assert sorted(load_label_rows(view, level=TINY_LEVEL)[K.NAME]) == [
        "ammonia",
        "methanol",
        "water",
    ]
    # a view is a snapshot: reopening it returns it unchanged
    copy_known_labels([r for r in rows if r[K.NAME] == "formaldehyde"], [src], seed, TINY_LEVEL)
    assert len(load_label_rows(label_view(tmp_path / "view", [seed, dest]), level=TINY_LEVEL)) == 3


def test_label_view_leaves_out_excluded_molecules(tmp_path):
    from densnet_core.dataset import load_label_rows
    from densnet_core.store import append_part, read_dataset
    from tests.core._tiny_labels import TINY_LEVEL, make_tiny_labels

    src = make_tiny_labels(tmp_path / "src", n_conformers=1)  # one part, four molecules
    rows = read_dataset(src, "labels")
    water = rows[rows[K.NAME] == "water"]
    solo = tmp_path / "solo"
    append_part(water, solo, "labels")
    key = str(water[K.MOL_ID].iloc[0])
    view = label_view(tmp_path / "view", [src, solo], exclude_mol_ids={key})
    got = load_label_rows(view, level=TINY_LEVEL)
    assert sorted(got[K.NAME]) == ["ammonia", "formaldehyde", "methanol"]
    parts = list(view.glob("part-*.parquet"))
    assert len(parts) == 1 and not parts[0].is_symlink()  # the mixed part, filtered


def test_label_view_compares_levels_not_their_json(tmp_path):
    """A store whose level.json predates a field (``polarizability``, default True) joins a
    store that spells it out; a store at another functional is refused."""
    import json

    from tests.core._tiny_labels import TINY_LEVEL, make_tiny_labels

    old = make_tiny_labels(tmp_path / "old", n_conformers=1)
    fields = TINY_LEVEL.model_dump()
    fields.pop("polarizability")
    (old / "level.json").write_text(json.dumps(fields))
    new = tmp_path / "new"
    new.mkdir()
    (new / "level.json").write_text(json.dumps({**fields, "polarizability": True}))
    assert label_view(tmp_path / "view", [old, new]).is_dir()

    other = tmp_path / "other"
    other.mkdir()
    (other / "level.json").write_text(json.dumps({**fields, "xc": "pbe0"}))
    assert TINY_LEVEL.xc != "pbe0"
    with pytest.raises(ValueError, match="different levels of theory"):
        label_view(tmp_path / "view2", [old, other])
