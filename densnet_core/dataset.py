"""Training data: label-store rows -> network inputs + targets in e3nn order, split by molecule.

One :class:`Sample` per labelled conformer (``status == "ok"`` rows of the level's hash and
aux basis). Targets are converted from PySCF aux-AO order (as stored) to e3nn order (as the
network predicts) once, at load time:

* density coefficients (M,): ``to_e3nn``;
* response coefficients, stored flat (3·M,) row-major -> (3, M) -> ``to_e3nn`` per row;
* the Coulomb metric of the molecule's aux basis, J = (mu|nu) (``int2c2e``), transformed with
  the block-orthogonal map T of :func:`densnet_core.basis.transform_matrix`
  (``c_pyscf = T c_e3nn``): ``J_e3nn = T^T J_pyscf T``, so that
  ``c_e3nn^T J_e3nn c_e3nn = c_pyscf^T J_pyscf c_pyscf``. Stored float32, (M, M) per conformer
  — memory grows as M^2 (a 30-heavy-atom drug-like molecule in def2-universal-jkfit has
  M ~ 2,000: 16 MB). An optional ``.npy`` cache folder avoids recomputing it across runs.

The dipole target is the label's PySCF dipole (e·bohr, about the centre of nuclear charge),
the polarizability its CPKS tensor (bohr^3).

The validation split is by molecule (``mol_id``), never by conformer, so conformers of one
molecule are never on both sides. It is deterministic: molecules are ordered by
sha1(f"{seed}:{mol_id}") and the first ``round(val_fraction * n_molecules)`` (at least one when
there are two or more molecules) go to validation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from densnet_core import keys as K
from densnet_core.basis import make_auxmol, to_e3nn
from densnet_core.featurize import Featurizer, get_featurizer
from densnet_core.graph import MoleculeInput
from densnet_core.level import LevelOfTheory
from densnet_core.units import BOHR_PER_ANGSTROM

__all__ = [
    "NoUsableLabelsError",
    "Sample",
    "coulomb_metric_e3nn",
    "is_inchikey",
    "load_label_rows",
    "make_samples",
    "split_by_molecule",
    "training_data_hash",
]

log = logging.getLogger(__name__)

_INCHIKEY = re.compile(r"^[A-Z]{14}-[A-Z]{10}-[A-Z]$")


class NoUsableLabelsError(ValueError):
    """The label store holds no ``status == "ok"`` rows for the requested level."""


def is_inchikey(text: str) -> bool:
    """Whether ``text`` looks like a standard InChIKey (``XXXXXXXXXXXXXX-YYYYYYYYYY-Z``)."""
    return bool(_INCHIKEY.match(str(text)))


@dataclass
class Sample:
    """One labelled conformer, ready for training.

    Attributes
    ----------
    mol_id, conformer_key, name
        Identity (``mol_id`` is the InChIKey where available).
    inputs
        Network input (prior, charge and dipole integrals, e3nn order).
    density
        (M,) label density coefficients, e3nn order.
    response
        (3, M) label response coefficients d c / d E_j, e3nn order; None for a label without
        polarizability.
    dipole_au
        (3,) label dipole, e·bohr, about the centre of nuclear charge.
    polarizability_au
        (3, 3) label static polarizability, bohr^3; None for a label without one.
    metric
        (M, M) float32 Coulomb metric J = (mu|nu), e3nn order, hartree per coefficient^2.
    n_electrons
        Number of electrons sum(Z) - charge.
    multiplicity
        2S + 1 (for rebuilding PySCF molecules in the real-space metrics).
    energy_hartree
        Label total energy, Eh.
    """

    mol_id: str
    conformer_key: str
    name: str
    inputs: MoleculeInput
    density: np.ndarray
    response: np.ndarray | None
    dipole_au: np.ndarray
    polarizability_au: np.ndarray | None
    metric: np.ndarray = field(repr=False)
    n_electrons: float
    multiplicity: int
    energy_hartree: float

    @property
    def n_coeffs(self) -> int:
        """M."""
        return int(self.density.shape[0])


def load_label_rows(
    labels_dir: str | os.PathLike[str], *, level: LevelOfTheory, density_variants: bool = False
) -> pd.DataFrame:
    """The usable rows of a label store for one level of theory.

    Parameters
    ----------
    labels_dir
        Folder of ``labels`` part files.
    level
        Level of theory: rows must have its ``level_hash`` (or that of a variant that
        :meth:`~densnet_core.level.LevelOfTheory.provides` everything it has) and its
        ``aux_basis``.
    density_variants
        Also take the rows of the level's variants with or without polarizability and forces
        (:meth:`~densnet_core.level.LevelOfTheory.variants`: the same density and dipole).
        Those rows may have null ``polarizability_au`` / ``response_coeffs`` / forces.

    Returns
    -------
    pandas.DataFrame
        ``status == "ok"`` rows of that level, deduplicated by conformer key (the most complete
        label wins, then the last write), in store order.

    Raises
    ------
    NoUsableLabelsError
        If there are none (the message says what the store holds instead).
    """
    from densnet_core.store import read_dataset

    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise NoUsableLabelsError(f"label folder {labels_dir} does not exist")
    df = read_dataset(labels_dir, "labels")
    if df.empty:
        raise NoUsableLabelsError(f"{labels_dir} holds no label part files")
    ok = df[df[K.STATUS] == K.STATUS_OK]
    levels = level.variants() if density_variants else level.providers()
    # rank of a row's level: the more it holds, the higher (dedup keeps the highest rank)
    rank = {v.hash: int(v.polarizability) * 2 + int(v.forces) for v in levels}
    mine = ok[ok[K.LEVEL_HASH].isin(list(rank)) & (ok[K.AUX_BASIS] == level.fit_auxbasis)]
    if mine.empty:
        found = (
            ok.groupby([K.LEVEL_OF_THEORY, K.LEVEL_HASH]).size().to_dict() if not ok.empty else {}
        )
        raise NoUsableLabelsError(
            f"{labels_dir}: no status='ok' labels for level {level.label!r} "
            f"(hash {level.hash}); {len(df)} rows, {len(ok)} ok; ok rows per level: {found}"
        )
    order = mine[K.LEVEL_HASH].map(rank).to_numpy()
    best = mine.iloc[np.argsort(order, kind="stable")].drop_duplicates(
        subset=[K.CONFORMER_KEY], keep="last"
    )
    return mine.loc[mine.index.isin(best.index)].reset_index(drop=True)


def training_data_hash(rows: pd.DataFrame) -> str:
    """sha1 over the sorted (label key, energy) pairs of the rows used (hex, 40 chars)."""
    items = sorted(
        f"{key}@{h}:{float(e):.10f}"
        for key, h, e in zip(
            rows[K.CONFORMER_KEY], rows[K.LEVEL_HASH], rows[K.ENERGY_HARTREE], strict=True
        )
    )
    return hashlib.sha1("\n".join(items).encode()).hexdigest()


def _auxmol(numbers: Sequence[int], positions_bohr: np.ndarray, charge: int, mult: int, aux: str):
    from densnet_core.qm import build_mol

    # a throw-away orbital basis: only the atoms and geometry carry over to the aux molecule
    mol = build_mol(numbers, positions_bohr, charge=charge, multiplicity=mult, basis="sto-3g")
    return make_auxmol(mol, aux)


def coulomb_metric_e3nn(auxmol, numbers: Sequence[int], auxbasis: str) -> np.ndarray:
    """J = (mu|nu) of an aux molecule, transformed to e3nn order: T^T J T (M, M), float64."""
    j = auxmol.intor("int2c2e", hermi=1)
    j = 0.5 * (j + j.T)
    jt = to_e3nn(j, numbers, auxbasis)  # rows: J T
    return np.ascontiguousarray(to_e3nn(np.ascontiguousarray(jt.T), numbers, auxbasis))


def _metric(
    numbers: list[int],
    pos_bohr: np.ndarray,
    charge: int,
    mult: int,
    aux: str,
    key: str,
    cache_dir: Path | None,
) -> np.ndarray:
    path = None
    if cache_dir is not None:
        safe_aux = re.sub(r"[^A-Za-z0-9_.-]", "_", aux)
        path = cache_dir / f"{safe_aux}-{key}.npy"
        if path.is_file():
            try:
                j = np.load(path, allow_pickle=False)
                m = j.shape[0]
                if j.shape == (m, m):
                    return j
            except (OSError, ValueError):
                pass
    j = coulomb_metric_e3nn(_auxmol(numbers, pos_bohr, charge, mult, aux), numbers, aux)
    j = j.astype(np.float32)
    if path is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp.npy")
            np.save(tmp, j)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only label folder is fine
            log.info("could not cache the Coulomb metric in %s: %s", cache_dir, exc)
    return j


def make_samples(
    rows: pd.DataFrame,
    *,
    level: LevelOfTheory,
    featurizer: Featurizer | None = None,
    metric_cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Sample]:
    """Turn label rows into :class:`Sample` objects (targets in e3nn order, metric computed).

    Parameters
    ----------
    rows
        Rows from :func:`load_label_rows`.
    level
        Level of theory (aux basis, prior).
    featurizer
        Reuse a featuriser (default: the process-wide one of ``level``).
    metric_cache_dir
        Optional folder of cached Coulomb metrics (``<aux>-<conformer_key>.npy``).
    progress
        Called as ``progress(done, total)`` after every sample.
    """
    feat = featurizer if featurizer is not None else get_featurizer(level)
    aux = level.fit_auxbasis
    cache = Path(metric_cache_dir) if metric_cache_dir is not None else None
    out: list[Sample] = []
    total = len(rows)
    for i, row in enumerate(rows.itertuples(index=False)):
        r = row._asdict()
        numbers = [int(z) for z in r[K.NUMBERS]]
        pos = np.stack([np.asarray(p, dtype=np.float64) for p in r[K.POSITIONS_ANGSTROM]])
        pos = pos * BOHR_PER_ANGSTROM
        charge = int(r[K.CHARGE])
        mult = int(r[K.MULTIPLICITY])
        inputs = feat(numbers, pos, charge)
        m = inputs.charge_ints.shape[0]
        dens = np.asarray(r[K.DENSITY_COEFFS], dtype=np.float64)
        has_alpha = _present(r[K.RESPONSE_COEFFS]) and _present(r[K.POLARIZABILITY_AU])
        resp = np.asarray(r[K.RESPONSE_COEFFS], np.float64) if has_alpha else None
        if dens.shape != (m,) or (resp is not None and resp.shape != (3 * m,)):
            n_resp = "no" if resp is None else resp.shape[0]
            raise ValueError(
                f"label {r[K.CONFORMER_KEY]}: {dens.shape[0]} density / {n_resp} "
                f"response coefficients, expected {m} / {3 * m} for {aux}"
            )
        alpha = (
            np.asarray(r[K.POLARIZABILITY_AU], dtype=np.float64).reshape(3, 3)
            if has_alpha
            else None
        )
        out.append(
            Sample(
                mol_id=str(r[K.MOL_ID]),
                conformer_key=str(r[K.CONFORMER_KEY]),
                name=str(r[K.NAME]),
                inputs=inputs,
                density=to_e3nn(dens, numbers, aux),
                response=None if resp is None else to_e3nn(resp.reshape(3, m), numbers, aux),
                dipole_au=np.asarray(r[K.DIPOLE_AU], dtype=np.float64).reshape(3),
                polarizability_au=alpha,
                metric=_metric(numbers, pos, charge, mult, aux, str(r[K.CONFORMER_KEY]), cache),
                n_electrons=float(sum(numbers) - charge),
                multiplicity=mult,
                energy_hartree=float(r[K.ENERGY_HARTREE]),
            )
        )
        if progress is not None:
            progress(i + 1, total)
    return out


def _present(value: Any) -> bool:
    """Whether a list-valued label field holds data (not None / NaN / empty)."""
    if value is None:
        return False
    if isinstance(value, float):
        return not np.isnan(value)
    return len(value) > 0


def split_by_molecule(
    mol_ids: Sequence[str],
    *,
    val_fraction: float,
    seed: int,
    validation_mol_ids: Collection[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split of samples by molecule.

    Parameters
    ----------
    mol_ids
        (S,) molecule id of every sample.
    val_fraction
        Fraction of the molecules (not conformers) for validation, 0 <= f < 1.
    seed
        Changes the split.
    validation_mol_ids
        If given, exactly these molecules (those present) are the validation set and
        ``val_fraction``/``seed`` are ignored — fine-tuning on a grown label store (active
        learning) keeps the validation molecules of the model it starts from, and the added
        molecules always train.

    Returns
    -------
    train, val
        Sample indices (sorted). With >= 2 molecules and ``val_fraction > 0`` at least one
        molecule is in each split; with one molecule everything is training data.
    """
    if validation_mol_ids is not None:
        fixed = set(validation_mol_ids)
        train = [i for i, m in enumerate(mol_ids) if m not in fixed]
        val = [i for i, m in enumerate(mol_ids) if m in fixed]
        return train, val
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unique = sorted(set(mol_ids))
    ranked = sorted(unique, key=lambda m: hashlib.sha1(f"{seed}:{m}".encode()).hexdigest())
    n_val = round(val_fraction * len(unique))
    if val_fraction > 0 and len(unique) >= 2:
        n_val = min(max(n_val, 1), len(unique) - 1)
    else:
        n_val = 0
    val_mols = set(ranked[:n_val])
    train = [i for i, m in enumerate(mol_ids) if m not in val_mols]
    val = [i for i, m in enumerate(mol_ids) if m in val_mols]
    return train, val
