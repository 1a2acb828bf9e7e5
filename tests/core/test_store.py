"""Parquet store: declared schemas, metadata, atomic writes, dtype round trips, datasets."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from densnet_core import keys as K
from densnet_core import store


def _prediction_row(i: int, status: str = "ok") -> dict:
    ok = status == "ok"
    return {
        K.RECORD_INDEX: i,
        K.NAME: f"mol-{i}",
        K.SMILES: "CCO",
        K.MOL_ID: "LFQSCWFLJHTTHZ-UHFFFAOYSA-N",
        K.CONFORMER_ID: 0,
        K.MODEL_ID: "test",
        K.DIPOLE_DEBYE: 1.5 if ok else None,
        K.DIPOLE_AU: np.array([0.1, 0.2, 0.3]) if ok else None,
        K.POLARIZABILITY_AU: list(np.eye(3).ravel() * 30.0) if ok else None,
        K.ALPHA_ISO_AU: 30.0 if ok else None,
        K.N_ELECTRONS: 26.0 if ok else None,
        K.STATUS: status,
        K.ERROR: "" if ok else "unsupported element(s): Si",
    }


def test_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    rows = [_prediction_row(0), _prediction_row(1, "unsupported_element")]
    path = store.write_table(rows, tmp_path / "out" / "predictions.parquet", "predictions")
    back = store.read_table(path, "predictions")
    expected = store.frame(rows, "predictions")
    pd.testing.assert_frame_equal(back, expected)
    assert list(back.columns[: len(store.SCHEMAS["predictions"].names)]) == list(
        store.SCHEMAS["predictions"].names
    )
    assert back[K.RECORD_INDEX].dtype == np.int64
    assert back[K.DIPOLE_DEBYE].dtype == np.float64
    assert math.isnan(back[K.DIPOLE_DEBYE].iloc[1])
    np.testing.assert_allclose(back[K.DIPOLE_AU].iloc[0], [0.1, 0.2, 0.3])
    assert back[K.DIPOLE_AU].iloc[1] is None
    meta = pq.read_schema(path).metadata
    assert meta[b"schema_version"] == store.SCHEMA_VERSION.encode()
    assert meta[b"table"] == b"predictions"
    assert store.table_name(path) == "predictions"
    # plain pandas reads it too
    assert len(pd.read_parquet(path)) == 2


def test_extra_columns_are_kept_and_missing_columns_refused(tmp_path):
    rows = [dict(_prediction_row(0), energy_hartree=-154.1)]
    back = store.read_table(store.write_table(rows, tmp_path / "p.parquet", "predictions"))
    assert back["energy_hartree"].iloc[0] == -154.1
    bad = _prediction_row(0)
    del bad[K.STATUS]
    with pytest.raises(store.SchemaError, match="status"):
        store.write_table([bad], tmp_path / "bad.parquet", "predictions")
    assert not (tmp_path / "bad.parquet").exists()


def test_wrong_type_is_refused_and_leaves_no_file(tmp_path):
    bad = dict(_prediction_row(0), dipole_debye="not a number")
    with pytest.raises(store.SchemaError, match="dipole_debye"):
        store.write_table([bad], tmp_path / "bad.parquet", "predictions")
    assert os.listdir(tmp_path) == []


def test_table_name_mismatch_and_version_are_checked(tmp_path):
    path = store.write_table([_prediction_row(0)], tmp_path / "p.parquet", "predictions")
    with pytest.raises(store.SchemaError, match="not 'labels'"):
        store.read_table(path, "labels")
    plain = tmp_path / "plain.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(plain)
    with pytest.raises(store.SchemaError, match="schema_version"):
        store.read_table(plain)
    assert store.table_name(plain) is None


def test_atomic_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "p.parquet"
    store.write_table([_prediction_row(i) for i in range(3)], path, "predictions")
    store.write_table([_prediction_row(9)], path, "predictions")
    back = store.read_table(path)
    assert back[K.RECORD_INDEX].tolist() == [9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.parquet"]


def test_empty_table_has_declared_columns(tmp_path):
    path = store.write_table([], tmp_path / "empty.parquet", "conformers")
    back = store.read_table(path, "conformers")
    assert len(back) == 0
    assert list(back.columns) == store.SCHEMAS["conformers"].names


def test_dataset_parts_concatenate_in_order_and_ignore_temporaries(tmp_path):
    ds = tmp_path / "labels"
    assert store.read_dataset(ds, "predictions").empty
    store.append_part([_prediction_row(0)], ds, "predictions")
    store.append_part([_prediction_row(1), _prediction_row(2)], ds, "predictions")
    (ds / ".part-x.parquet.abc.tmp").write_bytes(b"half a file")
    back = store.read_table(ds, "predictions")
    assert back[K.RECORD_INDEX].tolist() == [0, 1, 2]
    assert len(store.part_files(ds)) == 2
