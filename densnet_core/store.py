"""Parquet tables: schemas, atomic writes, sharded datasets and reading back into pandas.

Every table written here

* has a declared Arrow schema (:data:`SCHEMAS`); the declared columns must all be present,
  extra columns are kept with their inferred types ("plus anything else useful");
* carries ``schema_version`` and ``table`` in the Arrow schema metadata;
* is written to a temporary file in the destination folder, flushed to disk, and renamed
  into place, so a reader never sees a half-written file and a killed writer leaves at most
  a stray ``.tmp`` file (ignored by the readers);
* reads back into pandas with the dtypes it was written with (both directions go through
  the same Arrow schema).

A *dataset* is a folder of such files (``part-*.parquet``). Long jobs (labelling) append one
part per finished batch, so a killed run loses at most the batch in flight.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from densnet_core import keys as K

if TYPE_CHECKING:  # imported where used: the command line resolves models without it
    import pandas as pd

SCHEMA_VERSION = "1"

_f64 = pa.float64()
_vec = pa.list_(_f64)
_mat = pa.list_(pa.list_(_f64))
_str = pa.string()

_IDENTITY: list[tuple[str, pa.DataType]] = [
    (K.RECORD_INDEX, pa.int64()),
    (K.NAME, _str),
    (K.SMILES, _str),
    (K.MOL_ID, _str),
    (K.CONFORMER_ID, pa.int64()),
    (K.CONFORMER_KEY, _str),
    (K.CHARGE, pa.int64()),
    (K.MULTIPLICITY, pa.int64()),
    (K.NUMBERS, pa.list_(pa.int64())),
    (K.POSITIONS_ANGSTROM, _mat),
]

_OUTCOME: list[tuple[str, pa.DataType]] = [(K.STATUS, _str), (K.ERROR, _str)]

SCHEMAS: dict[str, pa.Schema] = {
    "conformers": pa.schema(
        [
            *_IDENTITY,
            (K.INPUT_SMILES, _str),
            (K.N_HEAVY_ATOMS, pa.int64()),
            (K.MMFF_ENERGY_KCAL, _f64),
            (K.FORCE_FIELD, _str),
            (K.FRAGMENT_NOTE, _str),
            (K.STEREO_NOTE, _str),
            *_OUTCOME,
        ]
    ),
    "labels": pa.schema(
        [
            *_IDENTITY,
            (K.LEVEL_OF_THEORY, _str),
            (K.LEVEL_HASH, _str),
            (K.AUX_BASIS, _str),
            (K.ENERGY_HARTREE, _f64),
            (K.FORCES_HARTREE_PER_BOHR, _mat),
            (K.DIPOLE_AU, _vec),
            (K.POLARIZABILITY_AU, _vec),
            (K.DENSITY_COEFFS, _vec),
            (K.RESPONSE_COEFFS, _vec),
            (K.FIT_ERROR_PERCENT, _f64),
            (K.SCF_CONVERGED, pa.bool_()),
            (K.SCF_CYCLES, pa.int64()),
            (K.SCF_STRATEGY, _str),
            (K.WALL_SECONDS, _f64),
            *_OUTCOME,
        ]
    ),
    "predictions": pa.schema(
        [
            (K.RECORD_INDEX, pa.int64()),
            (K.NAME, _str),
            (K.SMILES, _str),
            (K.MOL_ID, _str),
            (K.CONFORMER_ID, pa.int64()),
            (K.MODEL_ID, _str),
            (K.DIPOLE_DEBYE, _f64),
            (K.DIPOLE_AU, _vec),
            (K.POLARIZABILITY_AU, _vec),
            (K.ALPHA_ISO_AU, _f64),
            (K.N_ELECTRONS, _f64),
            (K.DIPOLE_DEBYE_STD, _f64),
            (K.ALPHA_ISO_AU_STD, _f64),
            (K.OOD, pa.bool_()),
            (K.OOD_REASON, _str),
            *_OUTCOME,
        ]
    ),
}

#: declared columns a writer may leave out, and the value they then get (null = not assessed):
#: predictions written without an uncertainty / applicability-domain verdict
DEFAULTS: dict[str, dict[str, Any]] = {
    "predictions": {
        K.DIPOLE_DEBYE_STD: float("nan"),
        K.ALPHA_ISO_AU_STD: float("nan"),
        K.OOD: None,
        K.OOD_REASON: None,
    },
}


class SchemaError(ValueError):
    """A table does not match its declared schema (missing column, wrong version...)."""


def schema_for(table: str) -> pa.Schema:
    """The declared schema of ``table`` ("conformers", "labels", "predictions"), with metadata."""
    if table not in SCHEMAS:
        raise SchemaError(f"unknown table {table!r}; known: {sorted(SCHEMAS)}")
    return SCHEMAS[table].with_metadata(
        {b"schema_version": SCHEMA_VERSION.encode(), b"table": table.encode()}
    )


def to_arrow(data: pd.DataFrame | Sequence[Mapping[str, Any]], table: str) -> pa.Table:
    """Convert records or a DataFrame to an Arrow table of the declared schema.

    Declared columns come first, in schema order; extra columns follow with inferred types.
    Declared columns listed in :data:`DEFAULTS` may be missing and get their default.

    Raises
    ------
    SchemaError
        If a declared column is missing or a value cannot be converted to its type.
    """
    import pandas as pd

    schema = schema_for(table)
    df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))
    if df.empty and len(df.columns) == 0:
        df = pd.DataFrame({name: pd.Series([], dtype=object) for name in schema.names})
    defaults = {k: v for k, v in DEFAULTS.get(table, {}).items() if k not in df.columns}
    if defaults:
        df = df.assign(**{k: [v] * len(df) for k, v in defaults.items()})
    missing = [name for name in schema.names if name not in df.columns]
    if missing:
        raise SchemaError(f"{table} table is missing columns {missing}")
    extra = [c for c in df.columns if c not in schema.names]
    arrays: list[pa.Array] = []
    fields: list[pa.Field] = []
    for field in schema:
        try:
            arrays.append(pa.array(_plain(df[field.name]), type=field.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SchemaError(f"{table}.{field.name}: {exc}") from exc
        fields.append(field)
    for name in extra:
        arr = pa.array(_plain(df[name]), from_pandas=True)
        arrays.append(arr)
        fields.append(pa.field(str(name), arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


def _plain(series: pd.Series) -> list[Any] | pd.Series:
    """Values Arrow converts without surprises (numpy arrays inside lists become lists)."""
    if series.dtype == object:
        return [v.tolist() if hasattr(v, "tolist") else v for v in series]
    return series


def from_arrow(tbl: pa.Table) -> pd.DataFrame:
    """Arrow table → pandas DataFrame (list columns become object columns of numpy arrays)."""
    return tbl.to_pandas()


def frame(data: pd.DataFrame | Sequence[Mapping[str, Any]], table: str) -> pd.DataFrame:
    """The DataFrame exactly as :func:`read_table` would return it after a write."""
    return from_arrow(to_arrow(data, table))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing, atomically.

    Writes go to a temporary file in the same folder; on a clean exit it is flushed, synced
    and renamed over ``path`` (then the folder is synced). On an exception the temporary file
    is removed and ``path`` is untouched. The folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def write_parquet_atomic(tbl: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write an Arrow table to ``path`` atomically (zstd); returns the path."""
    with atomic_file(path) as fh:
        pq.write_table(tbl, fh, compression="zstd")
    return Path(path)


def write_table(
    data: pd.DataFrame | Sequence[Mapping[str, Any]], path: str | os.PathLike[str], table: str
) -> Path:
    """Write ``data`` as a Parquet file atomically.

    Parameters
    ----------
    data
        DataFrame or list of row dicts holding every declared column of ``table``.
    path
        Destination file; its folder is created if needed.
    table
        Name of the declared schema.

    Returns
    -------
    Path
        The destination path.
    """
    tbl = to_arrow(data, table)  # validate before touching the destination
    return write_parquet_atomic(tbl, path)


def _check_metadata(schema: pa.Schema, table: str | None, where: Path) -> None:
    meta = schema.metadata or {}
    version = meta.get(b"schema_version")
    if version is None:
        raise SchemaError(f"{where}: no schema_version in the Parquet metadata")
    if version.decode() != SCHEMA_VERSION:
        raise SchemaError(
            f"{where}: schema_version {version.decode()} (this densnet reads {SCHEMA_VERSION})"
        )
    if table is not None and meta.get(b"table", b"").decode() != table:
        raise SchemaError(
            f"{where}: is a {meta.get(b'table', b'?').decode()!r} table, not {table!r}"
        )


def inferred_table(schema: pa.Schema) -> str | None:
    """The table a Parquet schema without densnet metadata holds, judged by its columns.

    A file written by pandas (``df.to_parquet``), e.g. a conformers table filtered in a
    notebook, loses the ``table`` and ``schema_version`` metadata. It is taken for the table
    whose declared columns it all has (the one with most columns if several match: a labels
    table also has every conformers column). None if no table's columns are all there.
    """
    names = set(schema.names)
    matches = [t for t, s in SCHEMAS.items() if set(s.names) - set(DEFAULTS.get(t, {})) <= names]
    return max(matches, key=lambda t: len(SCHEMAS[t].names)) if matches else None


def read_table(path: str | os.PathLike[str], table: str | None = None) -> pd.DataFrame:
    """Read a table written by :func:`write_table` (or a dataset folder of parts).

    A Parquet file without densnet's metadata is read when its columns are those of a table
    (:func:`inferred_table`), converted to that table's declared types.

    Parameters
    ----------
    path
        A Parquet file, or a folder of ``part-*.parquet`` files.
    table
        If given, the file must be a table of that name.
    """
    path = Path(path)
    if path.is_dir():
        return read_dataset(path, table)
    tbl = pq.read_table(path)
    meta = tbl.schema.metadata or {}
    guess = inferred_table(tbl.schema) if b"table" not in meta else None
    if guess is not None:
        if table not in (None, guess):
            raise SchemaError(
                f"{path}: is a {guess!r} table (judged by its columns), not {table!r}"
            )
        df = from_arrow(tbl).reset_index(drop=True)
        return frame(df.drop(columns=[c for c in df.columns if str(c).startswith("__")]), guess)
    _check_metadata(tbl.schema, table, path)
    return from_arrow(tbl)


def table_name(path: str | os.PathLike[str]) -> str | None:
    """The ``table`` of a Parquet file: its metadata, else :func:`inferred_table`; None if
    it is not a table of ours."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid):
        return None
    name = (schema.metadata or {}).get(b"table")
    return name.decode() if name else inferred_table(schema)


def append_part(
    data: pd.DataFrame | Sequence[Mapping[str, Any]], directory: str | os.PathLike[str], table: str
) -> Path:
    """Add one part file to a dataset folder (atomically). Returns its path."""
    directory = Path(directory)
    # nanosecond timestamps, zero-padded: lexical order of the names is write order
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    return write_table(data, directory / name, table)


def part_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The finished part files of a dataset folder, oldest first (temporary files excluded)."""
    return sorted(Path(directory).glob("part-*.parquet"))


def read_dataset(directory: str | os.PathLike[str], table: str | None = None) -> pd.DataFrame:
    """Concatenate every part of a dataset folder into one DataFrame (parts in write order).

    An empty or missing folder gives an empty DataFrame with the declared columns.
    """
    parts = part_files(directory)
    tables = []
    for part in parts:
        tbl = pq.read_table(part)
        _check_metadata(tbl.schema, table, part)
        tables.append(tbl)
    if not tables:
        if table is None:
            import pandas as pd

            return pd.DataFrame()
        return from_arrow(schema_for(table).empty_table())
    return from_arrow(pa.concat_tables(tables, promote_options="default"))
