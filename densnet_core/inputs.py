"""Reading input records: SMILES files, CSV, SDF/MOL, and conformers tables.

Every record of the input file becomes one :class:`InputRecord`, in file order, including the
ones that cannot be read (they carry a non-empty ``error`` and later get a row with
``status="invalid_input"``). Nothing is parsed with RDKit here: SMILES strings and SDF
molblocks are kept as text and interpreted in :mod:`densnet_core.conformers`.

A problem with the *file* (missing, unknown format, a CSV without a ``smiles`` column) raises
:class:`InputFileError`: that is a failure of the run, not of a record.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from densnet_core import keys as K

# ``densnet_core.store`` (pandas, pyarrow: ~1 s to import) is imported only where a Parquet
# file is looked at, so that conformer worker processes, which never read one, start fast.

log = logging.getLogger(__name__)

SMILES_SUFFIXES = (".smi", ".smiles", ".txt", ".ism", ".can")
CSV_SUFFIXES = (".csv",)
SDF_SUFFIXES = (".sdf", ".mol", ".sd")
PARQUET_SUFFIXES = (".parquet", ".pq")

_HEADER_FIRST = {"smiles", "smi", "canonical_smiles", "isomeric_smiles"}

#: Prefix of a path inside RDKit's installed data (``Data/...``) or contributions (``Contrib/...``).
RDKIT_PREFIX = "rdkit:"
#: RDKit's 5,000 NCI compounds (salts, metals and odd valences included).
NCI_FIRST_5K = "rdkit:Data/NCI/first_5K.smi"
#: RDKit's 1,017-compound ChEMBL lead-optimisation series (Free-Wilson example).
CHEMBL_SERIES = "rdkit:Contrib/FreeWilson/data/CHEMBL2321810.smi"


class InputFileError(ValueError):
    """The input file as a whole cannot be read (missing, unknown format, no SMILES column)."""


@dataclass(frozen=True)
class InputRecord:
    """One record of an input file.

    Attributes
    ----------
    record_index
        0-based position of the record in the file (blank and comment lines not counted).
    name
        The user's name for the record; ``record-<record_index + 1>`` when none was given.
    smiles
        SMILES text exactly as given (SMILES and CSV input), else None.
    molblock
        The SDF/MOL record text (SDF input), else None.
    error
        Non-empty if the record itself is unreadable (e.g. not valid UTF-8).
    note
        Remarks about the record that are not errors (generated name, ...); "" if none.
    rows
        For a conformers-table input: the table's rows of this record, passed through as
        they are; else None.
    """

    record_index: int
    name: str
    smiles: str | None = None
    molblock: str | None = None
    error: str = ""
    note: str = ""
    rows: tuple[Mapping[str, Any], ...] | None = field(default=None, compare=False)

    @property
    def raw_text(self) -> str:
        """The record's input text (SMILES, molblock), used to derive a stable fallback id."""
        if self.smiles is not None:
            return self.smiles
        if self.molblock is not None:
            return self.molblock
        return f"{self.record_index}:{self.name}"

    @property
    def needs_embedding(self) -> bool:
        """True if the conformer stage has to embed this record (SMILES, or an SDF record
        without 3D coordinates): tens of ms each, against ~3 ms to read a 3D SDF record."""
        if self.rows is not None or self.error:
            return False
        if self.molblock is not None:
            return not molblock_is_3d(self.molblock)
        return self.smiles is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for Prefect task inputs and process pools)."""
        out = asdict(self)
        if self.rows is not None:
            out["rows"] = [dict(r) for r in self.rows]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputRecord:
        """Inverse of :meth:`to_dict`."""
        rows = data.get("rows")
        return cls(
            record_index=int(data["record_index"]),
            name=str(data["name"]),
            smiles=data.get("smiles"),
            molblock=data.get("molblock"),
            error=str(data.get("error") or ""),
            note=str(data.get("note") or ""),
            rows=None if rows is None else tuple(dict(r) for r in rows),
        )


def molblock_is_3d(molblock: str) -> bool:
    """Whether a MOL/SDF record carries 3D coordinates, read from its text (no RDKit).

    As RDKit decides it: the header's dimension code (columns 21-22 of line 2) says ``3D``, or
    some atom has a non-zero z coordinate (V2000 atom block, or ``M  V30`` atom lines).
    Unparsable text gives False (the record is then handed to RDKit, which reports it).
    """
    lines = molblock.splitlines()
    if len(lines) < 4:
        return False
    code = lines[1][20:22].upper()
    if code == "3D":
        return True
    try:
        if "V3000" in lines[3]:
            in_atoms = False
            for line in lines[4:]:
                if line.startswith("M  V30 BEGIN ATOM"):
                    in_atoms = True
                elif line.startswith("M  V30 END ATOM"):
                    return False
                elif in_atoms and line.startswith("M  V30 "):
                    if abs(float(line.split()[6])) > 1e-4:  # M V30 idx El x y z
                        return True
            return False
        n_atoms = int(lines[3][0:3])
        for line in lines[4 : 4 + n_atoms]:
            if abs(float(line[20:30])) > 1e-4:
                return True
    except (ValueError, IndexError):
        return False
    return False


def as_record(record: InputRecord | Mapping[str, Any] | str) -> InputRecord:
    """Accept an :class:`InputRecord`, its dict form, or a bare SMILES string."""
    if isinstance(record, InputRecord):
        return record
    if isinstance(record, str):
        return InputRecord(record_index=0, name="record-1", smiles=record)
    return InputRecord.from_dict(record)


def rdkit_data_path(path: str | os.PathLike[str]) -> Path:
    """Resolve an ``rdkit:`` path to the file inside RDKit's installation; others unchanged.

    ``rdkit:Data/NCI/first_5K.smi`` is looked up under RDKit's ``RDDataDir`` and
    ``rdkit:Contrib/FreeWilson/...`` under ``RDContribDir``, so wheel installs (both under
    ``site-packages/rdkit``) and conda installs (``share/RDKit``) both work.

    Parameters
    ----------
    path
        ``rdkit:<Data|Contrib>/<relative path>``, or any other path (returned as a Path).

    Returns
    -------
    Path
        The resolved file path. It is returned even if it does not exist, so that the caller
        reports the missing file by its real location.
    """
    text = os.fspath(path)
    if not text.startswith(RDKIT_PREFIX):
        return Path(text)
    from rdkit import RDConfig

    rel = text.removeprefix(RDKIT_PREFIX).lstrip("/")
    top, _, rest = rel.partition("/")
    roots = {"Data": RDConfig.RDDataDir, "Contrib": RDConfig.RDContribDir}
    if top in roots:
        return Path(roots[top]) / rest
    return Path(RDConfig.RDDataDir).parent / rel


def detect_format(path: str | os.PathLike[str]) -> str:
    """The input format of ``path``: "smiles", "csv", "sdf" or "conformers".

    Raises
    ------
    InputFileError
        If the file does not exist or its format is not recognised.
    """
    path = rdkit_data_path(path)
    if not path.exists():
        raise InputFileError(f"input file not found: {path}")
    if path.is_dir():
        raise InputFileError(f"input is a folder, not a file: {path}")
    suffix = path.suffix.lower()
    if suffix in SMILES_SUFFIXES:
        return "smiles"
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in SDF_SUFFIXES:
        return "sdf"
    from densnet_core import store

    table = store.table_name(path)
    if table == "conformers":
        return "conformers"
    if table is not None:
        raise InputFileError(f"{path} is a {table!r} table; expected a conformers table")
    raise InputFileError(
        f"unknown input format {suffix or '(no suffix)'!r} for {path}: expected .smi/.smiles/"
        ".txt (SMILES per line), .csv (a 'smiles' column), .sdf/.mol, or a conformers table"
    )


def read_records(path: str | os.PathLike[str]) -> list[InputRecord]:
    """Read every record of an input file, in file order.

    Parameters
    ----------
    path
        ``.smi``/``.smiles``/``.txt`` (one SMILES per line, optional name after whitespace,
        ``#`` comments and blank lines skipped, a ``smiles name`` header skipped), ``.csv``
        (a ``smiles`` column, case-insensitive, optional ``name``), ``.sdf``/``.mol`` (title
        line = name), or a conformers Parquet table (rows passed through). An ``rdkit:``
        path names a file of RDKit's bundled data (see :func:`rdkit_data_path`).

    Returns
    -------
    list[InputRecord]
        One per record; unreadable records carry an ``error``. An empty file gives ``[]``.

    Raises
    ------
    InputFileError
        Missing file, unknown format, or a CSV without a SMILES column.
    """
    path = rdkit_data_path(path)
    fmt = detect_format(path)
    if fmt == "conformers":
        records = _read_conformers_table(path)
    else:
        data = path.read_bytes()
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        if fmt == "smiles":
            records = _read_smiles(data)
        elif fmt == "csv":
            records = _read_csv(data, path)
        else:
            records = _read_sdf(data)
    _warn_duplicates(records, path)
    return records


def _decode_line(raw: bytes, line_no: int) -> tuple[str, str]:
    """Decode one line; returns (text, error) with error set if it is not valid UTF-8."""
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), f"line {line_no} is not valid UTF-8"


def _split_lines(data: bytes) -> list[bytes]:
    """Split on LF, CRLF or lone CR."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def _finish_name(index: int, name: str) -> tuple[str, str]:
    if name:
        return name, ""
    generated = f"record-{index + 1}"
    return generated, f"no name given; named {generated}"


def _read_smiles(data: bytes) -> list[InputRecord]:
    records: list[InputRecord] = []
    first_data_line = True
    for line_no, raw in enumerate(_split_lines(data), start=1):
        text, error = _decode_line(raw, line_no)
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split(None, 1)
        if first_data_line:
            first_data_line = False
            if parts[0].lower() in _HEADER_FIRST and not error:
                continue  # header line "smiles name"
        smiles = parts[0]
        name = parts[1].strip() if len(parts) > 1 else ""
        index = len(records)
        name, note = _finish_name(index, name)
        records.append(
            InputRecord(record_index=index, name=name, smiles=smiles, error=error, note=note)
        )
    return records


def _read_csv(data: bytes, path: Path) -> list[InputRecord]:
    lines = _split_lines(data)
    texts: list[str] = []
    errors: list[str] = []
    for line_no, raw in enumerate(lines, start=1):
        text, error = _decode_line(raw, line_no)
        texts.append(text)
        errors.append(error)
    if not any(t.strip() for t in texts):
        return []
    # Map every physical line to its error; csv rows can span lines (quoted newlines), so
    # track the reader's line number.
    reader = csv.reader(io.StringIO("\n".join(texts), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    lower = [h.strip().lower() for h in header]
    smiles_cols = [i for i, h in enumerate(lower) if h in _HEADER_FIRST]
    if not smiles_cols:
        raise InputFileError(f"{path}: no 'smiles' column in the CSV header {header}")
    s_col = smiles_cols[0]
    n_col = next((i for i, h in enumerate(lower) if h in ("name", "id", "title")), None)
    records: list[InputRecord] = []
    start = reader.line_num
    for row in reader:
        end = reader.line_num
        if not any(cell.strip() for cell in row):
            start = end
            continue
        error = next((e for e in errors[start:end] if e), "")
        start = end
        smiles = row[s_col].strip() if s_col < len(row) else ""
        name = row[n_col].strip() if n_col is not None and n_col < len(row) else ""
        index = len(records)
        name, note = _finish_name(index, name)
        if not smiles and not error:
            error = f"row {index + 1} has an empty smiles field"
        records.append(
            InputRecord(record_index=index, name=name, smiles=smiles, error=error, note=note)
        )
    return records


def _read_sdf(data: bytes) -> list[InputRecord]:
    lines = _split_lines(data)
    records: list[InputRecord] = []
    block: list[str] = []
    block_error = ""
    for line_no, raw in enumerate(lines, start=1):
        text, error = _decode_line(raw, line_no)
        if text.rstrip() == "$$$$":
            _add_sdf_block(records, block, block_error)
            block, block_error = [], ""
            continue
        block.append(text)
        block_error = block_error or error
    _add_sdf_block(records, block, block_error)
    return records


def _add_sdf_block(records: list[InputRecord], block: list[str], error: str) -> None:
    if not any(line.strip() for line in block):
        return
    index = len(records)
    name, note = _finish_name(index, block[0].strip())
    molblock = "\n".join(block) + "\n"
    records.append(
        InputRecord(record_index=index, name=name, molblock=molblock, error=error, note=note)
    )


def _plain_value(value: Any) -> Any:
    """Arrow/pandas values → plain Python (lists of floats, ints, str)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain_value(v) for v in value]
    return value


def _read_conformers_table(path: Path) -> list[InputRecord]:
    from densnet_core import store

    df = store.read_table(path, "conformers")
    records: list[InputRecord] = []
    if df.empty:
        return records
    columns = list(df.columns)
    rows = [
        {c: _plain_value(v) for c, v in zip(columns, values, strict=True)}
        for values in df.itertuples(index=False, name=None)
    ]
    grouped: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(int(row[K.RECORD_INDEX]), []).append(row)
    for new_index, (_, group) in enumerate(sorted(grouped.items())):
        first = group[0]
        smiles = first.get(K.INPUT_SMILES) or first.get(K.SMILES) or ""
        records.append(
            InputRecord(
                record_index=new_index,
                name=str(first.get(K.NAME) or f"record-{new_index + 1}"),
                smiles=str(smiles),
                rows=tuple(group),
            )
        )
    return records


def _warn_duplicates(records: Iterable[InputRecord], path: Path) -> None:
    counts = Counter(r.name for r in records)
    dups = {n: c for n, c in counts.items() if c > 1}
    if dups:
        shown = ", ".join(f"{n!r} x{c}" for n, c in list(dups.items())[:5])
        more = "" if len(dups) <= 5 else f" and {len(dups) - 5} more"
        log.warning(
            "%s: %d duplicate record names kept as given (record_index tells them apart): %s%s",
            path,
            len(dups),
            shown,
            more,
        )


def duplicate_names(records: Iterable[InputRecord]) -> dict[str, int]:
    """Names that occur more than once, with their counts."""
    counts = Counter(r.name for r in records)
    return {n: c for n, c in counts.items() if c > 1}


def split_batches(n_records: int, workers: int, batch_size: int | None = None) -> list[range]:
    """Split ``range(n_records)`` into contiguous batches for parallel processing.

    Parameters
    ----------
    n_records
        Number of records.
    workers
        Parallel workers; there are at least this many batches when there are enough records.
    batch_size
        Records per batch; default: about 8 batches per worker, between 8 and 200 records.

    Returns
    -------
    list[range]
        Contiguous, ordered, non-overlapping index ranges covering ``range(n_records)``.
    """
    if n_records <= 0:
        return []
    workers = max(1, workers)
    if batch_size is None:
        batch_size = min(200, max(8, math.ceil(n_records / (8 * workers))))
    batch_size = max(1, min(batch_size, math.ceil(n_records / workers)))
    return [range(i, min(i + batch_size, n_records)) for i in range(0, n_records, batch_size)]
