"""High-throughput prediction: conformers-table rows → predictions-table rows.

A :class:`Predictor` loads a density model once and turns conformer rows into observables
computed *from the predicted density* (electron count, dipole, polarizability):

1. every row gets exactly one output row, in input order; rows whose conformer stage failed
   pass through with their status and error; rows the model cannot handle get
   ``unsupported_element`` / ``unsupported_charge`` / ``unsupported_multiplicity``;
2. the remaining rows are featurised (per-element tables cached by
   :mod:`densnet_core.featurize`), sorted by size, collated into batches of ``batch_size``
   molecules and run through the network under ``torch.inference_mode`` in float32;
3. if a batch raises, that batch is redone one molecule at a time, so only the offending
   molecule gets ``status="prediction_failed"``. Nothing raises out of
   :meth:`Predictor.predict_rows` for a problem of one row.

Threads: torch's intra-op thread count is process-global, so it is set by the caller (the
CLI, a worker process) — pass ``threads=`` to :class:`Predictor` or call
``torch.set_num_threads`` yourself; importing this module changes nothing. On the 2-core
development machine (with another job running) one thread per process was fastest by far:
two intra-op threads were 5-10x *slower* (each batch waits for the busier core), and two
single-threaded processes gave the same total rate as one (see ``benchmarks/throughput.py``).

Units: positions in the tables are Å, converted to bohr here; observables are atomic units
(``dipole_au`` e·a0, ``polarizability_au`` a0^3) plus ``dipole_debye`` (|μ| in D).
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import densnet_core
from densnet_core import keys as K
from densnet_core.units import BOHR_PER_ANGSTROM, DEBYE_PER_AU

__all__ = [
    "ALPHA_ANISO_AU",
    "GAS_CONSTANT_KCAL_PER_MOL_K",
    "N_ATOMS",
    "ModelNotFoundError",
    "Predictor",
    "alpha_anisotropy",
    "boltzmann_average",
    "boltzmann_weights",
    "default_model_dir",
    "resolve_model_dir",
    "status_counts",
    "write_molecules_table",
]

#: extra columns of the predictions table (not in the declared schema)
ALPHA_ANISO_AU = "alpha_aniso_au"  # float: anisotropy invariant of alpha, a0^3
N_ATOMS = "n_atoms"  # int: atoms including hydrogens

#: R in kcal/(mol K)
GAS_CONSTANT_KCAL_PER_MOL_K = 1.987204259e-3

# columns copied from the conformer row to the prediction row
_IDENTITY_COLUMNS = (K.RECORD_INDEX, K.NAME, K.SMILES, K.MOL_ID, K.CONFORMER_ID)


class ModelNotFoundError(FileNotFoundError):
    """No model directory where one was expected (no default model, or a wrong --model)."""


def default_model_dir() -> Path:
    """The default model: ``DENSNET_MODEL_DIR`` if set, else ``<repo>/models/densnet-default``."""
    from densnet_core.settings import get_settings

    configured = get_settings().model_dir
    if configured is not None:
        return Path(configured)
    return Path(densnet_core.__file__).resolve().parents[1] / "models" / "densnet-default"


def resolve_model_dir(model_dir: str | os.PathLike[str] | None = None) -> Path:
    """The model directory to use; ``None`` = :func:`default_model_dir`.

    Raises
    ------
    ModelNotFoundError
        If the folder does not exist or holds no ``config.json``/``model.safetensors``.
    """
    from densnet_core.modelio import CONFIG_FILE, WEIGHTS_FILE

    if model_dir is None:
        path = default_model_dir()
        if not (path / WEIGHTS_FILE).is_file():
            raise ModelNotFoundError(
                f"no default model at {path}; train one with `densnet train` or pass --model"
            )
        return path
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelNotFoundError(f"model directory not found: {path}")
    missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE) if not (path / f).is_file()]
    if missing:
        raise ModelNotFoundError(f"{path} is not a densnet model directory (no {missing[0]})")
    return path


def alpha_anisotropy(alpha: np.ndarray) -> np.ndarray:
    """Anisotropy invariant Δα of polarizability tensors.

    Δα = sqrt(((xx-yy)² + (yy-zz)² + (zz-xx)² + 6(xy² + yz² + zx²)) / 2).

    Parameters
    ----------
    alpha
        (..., 3, 3) a0^3 (symmetric).

    Returns
    -------
    np.ndarray
        (...,) a0^3.
    """
    a = np.asarray(alpha, dtype=np.float64)
    xx, yy, zz = a[..., 0, 0], a[..., 1, 1], a[..., 2, 2]
    xy, yz, zx = a[..., 0, 1], a[..., 1, 2], a[..., 2, 0]
    return np.sqrt(
        0.5 * ((xx - yy) ** 2 + (yy - zz) ** 2 + (zz - xx) ** 2 + 6 * (xy**2 + yz**2 + zx**2))
    )


def _symbol(z: int) -> str:
    from pyscf.data.elements import ELEMENTS

    return str(ELEMENTS[int(z)]) if 0 < int(z) < len(ELEMENTS) else f"Z={int(z)}"


def _card_set(card: Mapping[str, Any], keys: Sequence[str], default: set[int]) -> set[int]:
    for key in keys:
        values = card.get(key)
        if isinstance(values, list | tuple) and values:
            try:
                return {int(v) for v in values}
            except (TypeError, ValueError):
                continue
    return set(default)


class Predictor:
    """A loaded density model that predicts observables for conformers-table rows.

    Parameters
    ----------
    model_dir
        Model directory (:func:`densnet_core.modelio.save_model`); None = the default model
        (:func:`default_model_dir`).
    device
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    batch_size
        Molecules per forward pass.
    threads
        If given, ``torch.set_num_threads(threads)`` (process-global: the caller's choice).

    Attributes
    ----------
    model_id
        ``<dir name>-<sha1(weights)[:8]>``.
    info
        :class:`densnet_core.modelio.ModelInfo`.
    supported_elements
        Atomic numbers the model covers.
    supported_charges, supported_multiplicities
        From the model card (``charges_in_data`` / ``multiplicities_in_data``) when it has
        them; otherwise ``{0}`` and ``{1}`` (a model trained on neutral closed-shell
        molecules says nothing about ions or radicals).
    timings
        Seconds spent so far per stage: ``featurize``, ``collate``, ``forward``, ``rows``.

    Raises
    ------
    ModelNotFoundError
        No model where expected.
    densnet_core.modelio.ModelFileError
        A broken or tampered model directory.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        threads: int | None = None,
    ) -> None:
        import torch

        from densnet_core.featurize import get_featurizer
        from densnet_core.modelio import load_model

        self.threads = None if threads is None else max(1, int(threads))
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.model_dir = resolve_model_dir(model_dir)
        self.model, self.info = load_model(self.model_dir, device=device)
        self.device = next(self.model.parameters()).device
        self.batch_size = max(1, int(batch_size))
        self.model_id: str = self.info.model_id
        self.featurizer = get_featurizer(self.info.level)
        self.supported_elements: set[int] = set(self.info.elements)
        card = self.info.card
        self.supported_charges = _card_set(card, ("charges_in_data", "charges"), {0})
        self.supported_multiplicities = _card_set(
            card, ("multiplicities_in_data", "multiplicities"), {1}
        )
        self.has_response = bool(getattr(self.model, "has_response", False))
        self.timings: dict[str, float] = dict.fromkeys(
            ("rows", "featurize", "collate", "forward"), 0.0
        )
        # warm the per-element tables now (PySCF integrals, priors): not inside the timed loop
        for z in sorted(self.supported_elements):
            self.featurizer.element(z)

    # ---- rows ---------------------------------------------------------------------------
    def _base_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        numbers = [int(z) for z in _as_list(row.get(K.NUMBERS))]
        out: dict[str, Any] = {c: row.get(c) for c in _IDENTITY_COLUMNS}
        out[K.RECORD_INDEX] = int(out[K.RECORD_INDEX] if out[K.RECORD_INDEX] is not None else -1)
        out[K.CONFORMER_ID] = int(out[K.CONFORMER_ID] if out[K.CONFORMER_ID] is not None else 0)
        for c in (K.NAME, K.SMILES, K.MOL_ID):
            out[c] = "" if out[c] is None else str(out[c])
        out.update(
            {
                K.MODEL_ID: self.model_id,
                K.DIPOLE_DEBYE: math.nan,
                K.DIPOLE_AU: None,
                K.POLARIZABILITY_AU: None,
                K.ALPHA_ISO_AU: math.nan,
                K.N_ELECTRONS: math.nan,
                K.STATUS: str(row.get(K.STATUS) or K.STATUS_OK),
                K.ERROR: str(row.get(K.ERROR) or ""),
                ALPHA_ANISO_AU: math.nan,
                N_ATOMS: len(numbers),
                K.N_HEAVY_ATOMS: sum(1 for z in numbers if z > 1),
                K.CHARGE: _int_or(row.get(K.CHARGE), 0),
                K.MULTIPLICITY: _int_or(row.get(K.MULTIPLICITY), 1),
                K.MMFF_ENERGY_KCAL: _float_or_nan(row.get(K.MMFF_ENERGY_KCAL)),
            }
        )
        return out

    def _check(self, row: Mapping[str, Any], out: dict[str, Any]) -> tuple[str, str] | None:
        """(status, error) if the model cannot handle this ok row, else None."""
        numbers = [int(z) for z in _as_list(row.get(K.NUMBERS))]
        if not numbers:
            return K.STATUS_INVALID_INPUT, "the conformer row has no atoms"
        pos = _as_list(row.get(K.POSITIONS_ANGSTROM))
        if len(pos) != len(numbers):
            return (
                K.STATUS_INVALID_INPUT,
                f"{len(numbers)} atomic numbers but {len(pos)} positions",
            )
        bad = sorted({z for z in numbers if z not in self.supported_elements})
        if bad:
            covered = " ".join(_symbol(z) for z in sorted(self.supported_elements))
            return (
                K.STATUS_UNSUPPORTED_ELEMENT,
                f"element(s) {', '.join(_symbol(z) for z in bad)} not covered by model "
                f"{self.model_id} (covers {covered})",
            )
        charge = out[K.CHARGE]
        if charge not in self.supported_charges:
            allowed = ", ".join(f"{c:+d}" if c else "0" for c in sorted(self.supported_charges))
            return (
                K.STATUS_UNSUPPORTED_CHARGE,
                f"total charge {charge:+d}: model {self.model_id} was trained on charge(s) "
                f"{allowed} only",
            )
        mult = out[K.MULTIPLICITY]
        if mult not in self.supported_multiplicities:
            allowed = ", ".join(str(m) for m in sorted(self.supported_multiplicities))
            return (
                K.STATUS_UNSUPPORTED_MULTIPLICITY,
                f"multiplicity {mult}: model {self.model_id} was trained on multiplicity "
                f"{allowed} only",
            )
        return None

    def predict_rows(self, conformer_rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One predictions-table row per conformers-table row, in order.

        Parameters
        ----------
        conformer_rows
            Rows of a conformers table (dicts; ``numbers`` (N,), ``positions_angstrom``
            (N, 3) Å, ``charge``, ``multiplicity``, ``status``, ...).

        Returns
        -------
        list[dict]
            Every column of the "predictions" table plus ``alpha_aniso_au`` (a0^3),
            ``n_atoms``, ``n_heavy_atoms``, ``charge``, ``multiplicity`` and
            ``mmff_energy_kcal`` (passed through, for Boltzmann averaging). ``dipole_au`` (3,)
            e·a0 about the centre of nuclear charge, ``polarizability_au`` (9,) a0^3
            row-major, ``dipole_debye`` = |μ| in D, ``alpha_iso_au`` = trace/3,
            ``n_electrons`` = ∫ρ (= sum(Z) − charge by construction). Non-ok rows have NaN
            observables and None vectors.
        """
        t0 = time.perf_counter()
        rows = list(conformer_rows)
        out = [self._base_row(r) for r in rows]
        todo: list[int] = []
        for i, (row, o) in enumerate(zip(rows, out, strict=True)):
            if o[K.STATUS] != K.STATUS_OK:
                if not o[K.ERROR]:
                    o[K.ERROR] = f"upstream status {o[K.STATUS]}"
                continue
            problem = self._check(row, o)
            if problem is not None:
                o[K.STATUS], o[K.ERROR] = problem
                continue
            todo.append(i)
        self.timings["rows"] += time.perf_counter() - t0

        # featurise (a failure here is the molecule's own)
        t0 = time.perf_counter()
        feats: dict[int, Any] = {}
        for i in todo:
            row = rows[i]
            try:
                pos = np.asarray(_as_list(row[K.POSITIONS_ANGSTROM]), dtype=np.float64)
                if not np.isfinite(pos).all():
                    raise ValueError("non-finite coordinates")
                feats[i] = self.featurizer(
                    row[K.NUMBERS], pos.reshape(-1, 3) * BOHR_PER_ANGSTROM, float(out[i][K.CHARGE])
                )
            except Exception as exc:
                _failed(out[i], exc)
        self.timings["featurize"] += time.perf_counter() - t0

        # size-sorted batches (stable: equal sizes keep input order), results scattered back
        ready = sorted(feats, key=lambda i: len(feats[i].numbers))
        for start in range(0, len(ready), self.batch_size):
            idx = ready[start : start + self.batch_size]
            try:
                self._run_batch([feats[i] for i in idx], [out[i] for i in idx])
            except Exception:
                for i in idx:  # only the offending molecule fails
                    try:
                        self._run_batch([feats[i]], [out[i]])
                    except Exception as exc:
                        _failed(out[i], exc)
        return out

    def _run_batch(self, molecules: Sequence[Any], out_rows: Sequence[dict[str, Any]]) -> None:
        """Collate, forward and fill ``out_rows`` (raises on any problem, nothing written)."""
        import torch

        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # OpenMP's count can be per calling thread
        t0 = time.perf_counter()
        with torch.inference_mode():
            batch = self.model.collate(molecules, dtype=torch.float32, device=self.device)
            t1 = time.perf_counter()
            res = self.model(batch)
            dip = res["dipole_au"].double().cpu().numpy()  # (B, 3)
            n_el = res["n_electrons"].double().cpu().numpy()  # (B,)
            alpha = (
                res["polarizability_au"].double().cpu().numpy()  # (B, 3, 3)
                if "polarizability_au" in res
                else np.full((len(molecules), 3, 3), np.nan)
            )
        t2 = time.perf_counter()
        self.timings["collate"] += t1 - t0
        self.timings["forward"] += t2 - t1
        bad = ~(np.isfinite(dip).all(1) & np.isfinite(n_el))
        if self.has_response:
            bad |= ~np.isfinite(alpha).all((1, 2))
        if bad.any():
            if len(molecules) == 1:
                raise FloatingPointError("the model returned non-finite values")
            raise FloatingPointError("non-finite values in the batch")
        iso = np.trace(alpha, axis1=1, axis2=2) / 3.0
        aniso = alpha_anisotropy(alpha)
        norm = np.linalg.norm(dip, axis=1) * DEBYE_PER_AU
        for b, o in enumerate(out_rows):
            o[K.DIPOLE_AU] = dip[b].tolist()
            o[K.DIPOLE_DEBYE] = float(norm[b])
            o[K.POLARIZABILITY_AU] = alpha[b].reshape(9).tolist()
            o[K.ALPHA_ISO_AU] = float(iso[b])
            o[ALPHA_ANISO_AU] = float(aniso[b])
            o[K.N_ELECTRONS] = float(n_el[b])
            o[K.STATUS] = K.STATUS_OK
            o[K.ERROR] = ""


def _failed(row: dict[str, Any], exc: BaseException) -> None:
    row[K.STATUS] = K.STATUS_PREDICTION_FAILED
    row[K.ERROR] = f"{type(exc).__name__}: {exc}"
    for c in (K.DIPOLE_DEBYE, K.ALPHA_ISO_AU, K.N_ELECTRONS, ALPHA_ANISO_AU):
        row[c] = math.nan
    row[K.DIPOLE_AU] = None
    row[K.POLARIZABILITY_AU] = None


def _as_list(value: Any) -> list[Any]:
    """Lists, numpy arrays (incl. object arrays of arrays from pandas) → a list."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [np.asarray(v).tolist() for v in value]
        return value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return []
    return list(value)


def _int_or(value: Any, default: int) -> int:
    try:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return default
        return int(value)
    except (TypeError, ValueError):
        return default


def _float_or_nan(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def status_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Rows per status, most common first."""
    return dict(Counter(str(r[K.STATUS]) for r in rows).most_common())


# ---- per-molecule Boltzmann averages ------------------------------------------------------
def boltzmann_weights(energies_kcal: Sequence[float], temperature_K: float = 298.15) -> np.ndarray:
    """Boltzmann weights exp(-(E - E_min) / RT), normalised.

    Parameters
    ----------
    energies_kcal
        (C,) conformer energies, kcal/mol. If any is NaN (no force-field energy, e.g. SDF
        coordinates without MMFF parameters), all weights are equal.
    temperature_K
        Temperature, K.

    Returns
    -------
    np.ndarray
        (C,) weights summing to 1.
    """
    e = np.asarray(energies_kcal, dtype=np.float64).reshape(-1)
    if e.size == 0:
        return e
    if not np.isfinite(e).all():
        return np.full(e.size, 1.0 / e.size)
    w = np.exp(-(e - e.min()) / (GAS_CONSTANT_KCAL_PER_MOL_K * float(temperature_K)))
    return w / w.sum()


def boltzmann_average(
    predictions_df: Any,
    conformers_df: Any | None = None,
    temperature_K: float = 298.15,
) -> Any:
    """One row per molecule (``record_index``): Boltzmann-averaged observables.

    Parameters
    ----------
    predictions_df
        Predictions table (pandas DataFrame), one row per conformer.
    conformers_df
        The conformers table the predictions came from (its ``mmff_energy_kcal`` is joined on
        ``record_index``, ``conformer_id``). Optional when ``predictions_df`` already carries
        ``mmff_energy_kcal`` (as :meth:`Predictor.predict_rows` output does).
    temperature_K
        Temperature of the Boltzmann weights, K.

    Returns
    -------
    pandas.DataFrame
        Columns ``record_index``, ``name``, ``smiles``, ``mol_id``, ``model_id``,
        ``n_conformers`` (ok predictions averaged), ``alpha_iso_au`` and ``alpha_aniso_au``
        (a0^3) and ``dipole_debye`` (the average of |μ|, D) — Boltzmann-weighted over the ok
        conformers (MMFF energies; equal weights when an energy is missing) — their
        ``_min``/``_max`` over those conformers, ``lowest_conformer_id``,
        ``max_weight`` (weight of the dominant conformer), ``status`` ("ok" when at least
        one conformer was predicted, else the first conformer's status) and ``error``.
    """
    import pandas as pd

    df = predictions_df.copy()
    if conformers_df is not None and len(conformers_df):
        energies = conformers_df[[K.RECORD_INDEX, K.CONFORMER_ID, K.MMFF_ENERGY_KCAL]]
        df = df.drop(columns=[K.MMFF_ENERGY_KCAL], errors="ignore").merge(
            energies, on=[K.RECORD_INDEX, K.CONFORMER_ID], how="left"
        )
    if K.MMFF_ENERGY_KCAL not in df.columns:
        df[K.MMFF_ENERGY_KCAL] = math.nan
    if ALPHA_ANISO_AU not in df.columns:
        df[ALPHA_ANISO_AU] = math.nan
    out: list[dict[str, Any]] = []
    for rec, group in df.groupby(K.RECORD_INDEX, sort=True):
        first = group.iloc[0]
        row: dict[str, Any] = {
            K.RECORD_INDEX: int(rec),
            K.NAME: first[K.NAME],
            K.SMILES: first[K.SMILES],
            K.MOL_ID: first[K.MOL_ID],
            K.MODEL_ID: first[K.MODEL_ID],
        }
        ok = group[group[K.STATUS] == K.STATUS_OK]
        row["n_conformers"] = len(ok)
        if len(ok) == 0:
            for c in (K.ALPHA_ISO_AU, ALPHA_ANISO_AU, K.DIPOLE_DEBYE):
                row[c] = row[f"{c}_min"] = row[f"{c}_max"] = math.nan
            row["lowest_conformer_id"] = int(first[K.CONFORMER_ID])
            row["max_weight"] = math.nan
            row[K.STATUS] = str(first[K.STATUS])
            row[K.ERROR] = str(first[K.ERROR])
        else:
            e = ok[K.MMFF_ENERGY_KCAL].to_numpy(dtype=np.float64)
            w = boltzmann_weights(e, temperature_K)
            for c in (K.ALPHA_ISO_AU, ALPHA_ANISO_AU, K.DIPOLE_DEBYE):
                v = ok[c].to_numpy(dtype=np.float64)
                row[c] = float(w @ v)
                row[f"{c}_min"] = float(v.min())
                row[f"{c}_max"] = float(v.max())
            lowest = int(np.nanargmin(e)) if np.isfinite(e).any() else 0
            row["lowest_conformer_id"] = int(ok[K.CONFORMER_ID].iloc[lowest])
            row["max_weight"] = float(w.max())
            row[K.STATUS] = K.STATUS_OK
            row[K.ERROR] = ""
        out.append(row)
    columns = [
        K.RECORD_INDEX, K.NAME, K.SMILES, K.MOL_ID, K.MODEL_ID, "n_conformers",
        K.ALPHA_ISO_AU, f"{K.ALPHA_ISO_AU}_min", f"{K.ALPHA_ISO_AU}_max",
        K.DIPOLE_DEBYE, f"{K.DIPOLE_DEBYE}_min", f"{K.DIPOLE_DEBYE}_max",
        ALPHA_ANISO_AU, f"{ALPHA_ANISO_AU}_min", f"{ALPHA_ANISO_AU}_max",
        "lowest_conformer_id", "max_weight", K.STATUS, K.ERROR,
    ]  # fmt: skip
    return pd.DataFrame(out, columns=columns)


def write_molecules_table(df: Any, path: str | os.PathLike[str]) -> Path:
    """Write a :func:`boltzmann_average` table atomically (``table="molecules"`` metadata).

    ``densnet_core.store`` has no declared "molecules" schema yet, so the Arrow types are
    inferred; the file carries the same ``schema_version``/``table`` metadata as the store's
    tables and is written the same way (temporary file in the folder, fsync, rename).
    """

    import pyarrow as pa

    from densnet_core.store import SCHEMA_VERSION, write_parquet_atomic

    tbl = pa.Table.from_pandas(df, preserve_index=False)
    tbl = tbl.replace_schema_metadata(
        {b"schema_version": SCHEMA_VERSION.encode(), b"table": b"molecules"}
    )
    return write_parquet_atomic(tbl, path)
