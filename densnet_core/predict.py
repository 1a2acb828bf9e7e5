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

Threads and processes: torch's intra-op thread count is process-global, so it is set by the
caller (the CLI, a worker process) — pass ``threads=`` to :class:`Predictor` or call
``torch.set_num_threads`` yourself; importing this module changes nothing. Use the cores with
processes, not threads: :func:`predict_rows_parallel` forks one-thread workers from the loaded
model. On the 2-core development machine (other jobs running) 2 intra-op threads were 5-10x
*slower* than 1 (OpenMP threads spin while waiting for the busier core), 2 forked processes
~1.8x faster (``benchmarks/throughput.py``).

Ensembles and the applicability domain: ``model_dir`` may be a single model directory or an
ensemble directory (``ensemble.json``, :mod:`densnet_core.ensemble`; detected with
:func:`densnet_core.ensemble.is_ensemble_dir`). With an ensemble every batch is collated once and
all K members run on it in one vmapped pass (:meth:`densnet_core.ensemble.Ensemble.predict_batch`);
the row's values are the member means (``dipole_au`` and ``polarizability_au`` the mean vector /
tensor, ``dipole_debye`` the mean of the members' |μ| — the quantity the spread and its
calibration refer to, so it can exceed |mean μ| slightly), and ``dipole_debye_std`` (D) and
``alpha_iso_au_std`` (a0^3) are the members' spread (ddof 1) times the manifest's calibrated scale.
A single model has no spread: both are NaN. Every ok row also gets an ``ood`` verdict and an
``ood_reason`` (:func:`densnet_core.ood.ood_reasons`: element or ring system absent from
training, more heavy atoms than the largest training molecule, and — ensembles only — spread
above the calibrated threshold); the training domain comes from the model card or manifest,
or from the label store it names for cards written before it was recorded
(:func:`densnet_core.ood.complete_domain`). Rows that are not ``ok`` have ``ood = False``,
``ood_reason = ""`` and NaN spreads: no prediction, so no verdict — their ``status`` and ``error``
say what happened (an element the model does not cover at all stays ``unsupported_element``).

Without Prefect: :func:`screen_file` is the whole screen (input file → conformers → predictions
table) as ``densnet predict`` runs it by default; ``flows/screen.py`` is the Prefect version.

Units: positions in the tables are Å, converted to bohr here; observables are atomic units
(``dipole_au`` e·a0, ``polarizability_au`` a0^3) plus ``dipole_debye`` (|μ| in D).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import densnet_core
from densnet_core import keys as K
from densnet_core.units import BOHR_PER_ANGSTROM, DEBYE_PER_AU

if TYPE_CHECKING:
    from densnet_core.conformer_pool import ConformerBatches

__all__ = [
    "ALPHA_ANISO_AU",
    "GAS_CONSTANT_KCAL_PER_MOL_K",
    "N_ATOMS",
    "SENT_COLUMNS",
    "ModelNotFoundError",
    "Predictor",
    "alpha_anisotropy",
    "boltzmann_average",
    "boltzmann_weights",
    "default_model_dir",
    "import_e3nn_without_dynamo",
    "model_identity",
    "ood_count",
    "predict_rows_parallel",
    "read_conformer_rows",
    "resolve_model_dir",
    "screen_file",
    "sibling_path",
    "status_counts",
    "write_molecules_table",
    "write_prediction_tables",
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

    A folder with an ``ensemble.json`` (an ensemble directory) is accepted as it is.

    Raises
    ------
    ModelNotFoundError
        If the folder does not exist or holds no ``config.json``/``model.safetensors``.
    """
    from densnet_core.ensemble import is_ensemble_dir
    from densnet_core.modelio import CONFIG_FILE, WEIGHTS_FILE

    if model_dir is None:
        path = default_model_dir()
        if not ((path / WEIGHTS_FILE).is_file() or is_ensemble_dir(path)):
            raise ModelNotFoundError(
                f"no default model at {path}; train one with `densnet train` or pass --model"
            )
        return path
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelNotFoundError(f"model directory not found: {path}")
    if is_ensemble_dir(path):
        return path
    missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE) if not (path / f).is_file()]
    if missing:
        raise ModelNotFoundError(f"{path} is not a densnet model directory (no {missing[0]})")
    return path


def model_identity(model_dir: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """Id and card of a model or ensemble directory, without loading weights.

    Parameters
    ----------
    model_dir
        Single-model or ensemble directory.

    Returns
    -------
    tuple[str, dict]
        ``(model_id, card)``: for a single model its :class:`~densnet_core.modelio.ModelInfo`
        id and card; for an ensemble the ``ensemble_id`` and the first member's card with an
        ``ensemble`` entry (``n_members``, ``members``, ``calibration`` scale and thresholds,
        ``validation`` calibration figures).
    """
    from densnet_core.ensemble import is_ensemble_dir, read_manifest
    from densnet_core.modelio import read_model_info

    path = Path(model_dir)
    if not is_ensemble_dir(path):
        info = read_model_info(path)
        return info.model_id, dict(info.card)
    manifest = read_manifest(path)
    card = dict(read_model_info(path / manifest["members"][0]["dir"]).card)
    cal = manifest.get("calibration") or {}
    card["ensemble"] = {
        "n_members": len(manifest["members"]),
        "members": [m["model_id"] for m in manifest["members"]],
        "scale": cal.get("scale"),
        "ood_thresholds": cal.get("ood_thresholds"),
        "validation": cal.get("validation"),
    }
    return str(manifest["ensemble_id"]), card


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


# element symbols by atomic number (index 0 unused): error messages need no PySCF import
_SYMBOLS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge "
    "As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu "
    "Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu "
    "Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()


def _symbol(z: int) -> str:
    return _SYMBOLS[int(z)] if 0 < int(z) < len(_SYMBOLS) else f"Z={int(z)}"


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
        Model directory (:func:`densnet_core.modelio.save_model`) or ensemble directory
        (:mod:`densnet_core.ensemble`, auto-detected); None = the default model
        (:func:`default_model_dir`).
    device
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    batch_size
        Molecules per forward pass.
    threads
        If given, ``torch.set_num_threads(threads)`` (process-global: the caller's choice).
    ensemble_mode
        For ensembles: ``"auto"`` (vmap over members, loop if vmap fails), ``"vmap"`` or
        ``"loop"``.
    retain_memory
        Keep freed memory in the process for the next batch
        (:func:`densnet_core.allocator.retain_freed_memory`, a process-wide glibc setting;
        forward passes took a quarter less CPU time without the page faults).

    Attributes
    ----------
    model_id
        ``<dir name>-<sha1(weights)[:8]>``; for an ensemble its ``ensemble_id``.
    info
        :class:`densnet_core.modelio.ModelInfo` (of the first member for an ensemble).
    ensemble
        The loaded :class:`densnet_core.ensemble.Ensemble`, or None for a single model.
    ood_criteria
        :class:`densnet_core.ood.OODCriteria`: the training domain (and, for ensembles, the
        calibrated spread thresholds) behind the ``ood`` column.
    domain_source
        Where the domain came from: ``"recorded"``, ``"label store <path>"`` or
        ``"incomplete: <why>"`` (ring and size checks skipped).
    supported_elements
        Atomic numbers the model covers.
    supported_charges, supported_multiplicities
        From the model card (``charges_in_data`` / ``multiplicities_in_data``) when it has
        them; otherwise ``{0}`` and ``{1}`` (a model trained on neutral closed-shell
        molecules says nothing about ions or radicals).
    timings
        Seconds spent so far per stage: ``featurize``, ``collate``, ``forward``, ``rows``,
        ``ood``.

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
        ensemble_mode: str = "auto",
        retain_memory: bool = True,
    ) -> None:
        import torch

        from densnet_core.allocator import retain_freed_memory
        from densnet_core.ensemble import Ensemble, is_ensemble_dir, load_ensemble
        from densnet_core.featurize import get_featurizer
        from densnet_core.modelio import load_model
        from densnet_core.ood import OODCriteria, complete_domain

        if retain_memory:
            retain_freed_memory()
        self.threads = None if threads is None else max(1, int(threads))
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.model_dir = resolve_model_dir(model_dir)
        repo = Path(densnet_core.__file__).resolve().parents[1]
        self.ensemble: Ensemble | None = None
        if is_ensemble_dir(self.model_dir):
            self.ensemble = load_ensemble(self.model_dir, device=device, mode=ensemble_mode)
            self.model: Any = self.ensemble  # collate() and has_response, as a single model
            self.info = self.ensemble.infos[0]
            self.model_id: str = self.ensemble.ensemble_id
            self.supported_elements: set[int] = set(self.ensemble.elements)
            domain = complete_domain(self.ensemble.manifest, base_dirs=(repo,))
            self.ood_criteria = OODCriteria.from_manifest(domain)
            first = self.ensemble.members[0]
        else:
            self.model, self.info = load_model(self.model_dir, device=device, deferred_codegen=True)
            self.model_id = self.info.model_id
            self.supported_elements = set(self.info.elements)
            domain = complete_domain(self.info.card, base_dirs=(repo,))
            self.ood_criteria = OODCriteria.from_model_card(
                domain, supported_elements=self.supported_elements
            )
            first = self.model
        self.domain_source = str(domain.get("domain_source", ""))
        self.device = next(first.parameters()).device
        self.batch_size = max(1, int(batch_size))
        self.featurizer = get_featurizer(self.info.level)
        card = self.info.card
        self.supported_charges = _card_set(card, ("charges_in_data", "charges"), {0})
        self.supported_multiplicities = _card_set(
            card, ("multiplicities_in_data", "multiplicities"), {1}
        )
        self.has_response = bool(getattr(self.model, "has_response", False))
        self.timings: dict[str, float] = dict.fromkeys(
            ("rows", "featurize", "collate", "forward", "ood"), 0.0
        )
        # warm the per-element tables now (PySCF integrals, priors): not inside the timed loop
        for z in sorted(self.supported_elements):
            self.featurizer.element(z)

    # ---- rows ---------------------------------------------------------------------------
    def _base_row(self, row: Mapping[str, Any], numbers: np.ndarray) -> dict[str, Any]:
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
                K.DIPOLE_DEBYE_STD: math.nan,
                K.ALPHA_ISO_AU_STD: math.nan,
                K.OOD: False,
                K.OOD_REASON: "",
                K.STATUS: str(row.get(K.STATUS) or K.STATUS_OK),
                K.ERROR: str(row.get(K.ERROR) or ""),
                ALPHA_ANISO_AU: math.nan,
                N_ATOMS: int(numbers.shape[0]),
                K.N_HEAVY_ATOMS: int(np.count_nonzero(numbers > 1)),
                K.CHARGE: _int_or(row.get(K.CHARGE), 0),
                K.MULTIPLICITY: _int_or(row.get(K.MULTIPLICITY), 1),
                K.MMFF_ENERGY_KCAL: _float_or_nan(row.get(K.MMFF_ENERGY_KCAL)),
            }
        )
        return out

    def _check(
        self, row: Mapping[str, Any], numbers: np.ndarray, out: dict[str, Any]
    ) -> tuple[str, str] | None:
        """(status, error) if the model cannot handle this ok row, else None."""
        if numbers.shape[0] == 0:
            return K.STATUS_INVALID_INPUT, "the conformer row has no atoms"
        n_pos = len(_as_sequence(row.get(K.POSITIONS_ANGSTROM)))
        if n_pos != numbers.shape[0]:
            return (
                K.STATUS_INVALID_INPUT,
                f"{numbers.shape[0]} atomic numbers but {n_pos} positions",
            )
        bad = sorted({int(z) for z in set(numbers.tolist()) - self.supported_elements})
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
            ``n_electrons`` = ∫ρ (= sum(Z) − charge by construction); ``dipole_debye_std`` (D)
            and ``alpha_iso_au_std`` (a0^3), the calibrated ensemble spreads (NaN for a single
            model); ``ood`` (bool) and ``ood_reason`` ("" in distribution). With an ensemble
            the observables are member means (module docstring). Non-ok rows have NaN
            observables and spreads, None vectors, ``ood = False`` and ``ood_reason = ""``.
        """
        t0 = time.perf_counter()
        rows = list(conformer_rows)
        numbers = [_numbers_array(r.get(K.NUMBERS)) for r in rows]
        out = [self._base_row(r, z) for r, z in zip(rows, numbers, strict=True)]
        todo: list[int] = []
        for i, (row, o) in enumerate(zip(rows, out, strict=True)):
            if o[K.STATUS] != K.STATUS_OK:
                if not o[K.ERROR]:
                    o[K.ERROR] = f"upstream status {o[K.STATUS]}"
                continue
            problem = self._check(row, numbers[i], o)
            if problem is not None:
                o[K.STATUS], o[K.ERROR] = problem
                continue
            todo.append(i)
        self.timings["rows"] += time.perf_counter() - t0

        # featurise (a failure here is the molecule's own)
        t0 = time.perf_counter()
        feats: dict[int, Any] = {}
        for i in todo:
            try:
                pos = _positions_array(rows[i][K.POSITIONS_ANGSTROM])
                if not np.isfinite(pos).all():
                    raise ValueError("non-finite coordinates")
                feats[i] = self.featurizer(
                    numbers[i], pos * BOHR_PER_ANGSTROM, float(out[i][K.CHARGE])
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

        # applicability domain of the predicted rows (a failure here fails no row)
        t0 = time.perf_counter()
        done = [i for i in todo if out[i][K.STATUS] == K.STATUS_OK]
        if done:
            from densnet_core.ood import ood_reasons

            try:
                reasons = ood_reasons(
                    [out[i][K.SMILES] for i in done],
                    [numbers[i] for i in done],
                    [out[i][K.DIPOLE_DEBYE_STD] for i in done],
                    [out[i][K.ALPHA_ISO_AU_STD] for i in done],
                    self.ood_criteria,
                    rings=[_ring_list(rows[i].get(K.RING_SYSTEMS)) for i in done],
                )
            except Exception as exc:  # pragma: no cover - defensive
                reasons = [f"applicability check failed: {type(exc).__name__}: {exc}"] * len(done)
            for i, why in zip(done, reasons, strict=True):
                out[i][K.OOD] = bool(why)
                out[i][K.OOD_REASON] = why
        self.timings["ood"] += time.perf_counter() - t0
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
            nan = np.full(len(molecules), np.nan)
            if self.ensemble is not None:  # all members in one (vmapped) pass
                ens = self.ensemble.predict_batch(batch)
                dip = ens.dipole_au_mean  # (B, 3)
                n_el = ens.n_electrons.mean(axis=1)  # (B,)
                alpha = ens.polarizability_au_mean  # (B, 3, 3)
                norm_mean, iso_mean = ens.dipole_debye, ens.alpha_iso_au  # (B,) member means
                std_d, std_a = ens.dipole_debye_std, ens.alpha_iso_au_std  # (B,) calibrated
            else:
                res = self.model(batch)
                dip = res["dipole_au"].double().cpu().numpy()  # (B, 3)
                n_el = res["n_electrons"].double().cpu().numpy()  # (B,)
                alpha = (
                    res["polarizability_au"].double().cpu().numpy()  # (B, 3, 3)
                    if "polarizability_au" in res
                    else np.full((len(molecules), 3, 3), np.nan)
                )
                norm_mean = iso_mean = None
                std_d = std_a = nan
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
        iso = np.trace(alpha, axis1=1, axis2=2) / 3.0 if iso_mean is None else iso_mean
        aniso = alpha_anisotropy(alpha)
        norm = np.linalg.norm(dip, axis=1) * DEBYE_PER_AU if norm_mean is None else norm_mean
        for b, o in enumerate(out_rows):
            o[K.DIPOLE_AU] = dip[b].tolist()
            o[K.DIPOLE_DEBYE] = float(norm[b])
            o[K.POLARIZABILITY_AU] = alpha[b].reshape(9).tolist()
            o[K.ALPHA_ISO_AU] = float(iso[b])
            o[ALPHA_ANISO_AU] = float(aniso[b])
            o[K.N_ELECTRONS] = float(n_el[b])
            o[K.DIPOLE_DEBYE_STD] = float(std_d[b])
            o[K.ALPHA_ISO_AU_STD] = float(std_a[b])
            o[K.STATUS] = K.STATUS_OK
            o[K.ERROR] = ""


def _failed(row: dict[str, Any], exc: BaseException) -> None:
    row[K.STATUS] = K.STATUS_PREDICTION_FAILED
    row[K.ERROR] = f"{type(exc).__name__}: {exc}"
    for c in (
        K.DIPOLE_DEBYE, K.ALPHA_ISO_AU, K.N_ELECTRONS, ALPHA_ANISO_AU,
        K.DIPOLE_DEBYE_STD, K.ALPHA_ISO_AU_STD,
    ):  # fmt: skip
        row[c] = math.nan
    row[K.DIPOLE_AU] = None
    row[K.POLARIZABILITY_AU] = None
    row[K.OOD] = False
    row[K.OOD_REASON] = ""


def _as_sequence(value: Any) -> Sequence[Any] | np.ndarray:
    """A list column value as something with a length (None / NaN → empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return value


def _ring_list(value: Any) -> list[str] | None:
    """A row's ``ring_systems`` as a list of keys; None when unknown (missing, null, NaN)."""
    if value is None or isinstance(value, float | str):
        return None
    return [str(v) for v in value]


def _numbers_array(value: Any) -> np.ndarray:
    """Atomic numbers of a row as an (N,) int64 array (None / NaN → empty)."""
    seq = _as_sequence(value)
    return np.asarray(seq, dtype=np.int64).reshape(-1) if len(seq) else np.zeros(0, np.int64)


def _positions_array(value: Any) -> np.ndarray:
    """Positions of a row as an (N, 3) float64 array (lists, arrays, arrays of arrays)."""
    arr = np.asarray(value)
    if arr.dtype == object:  # pandas gives object arrays of per-atom arrays
        arr = np.asarray([np.asarray(v, dtype=np.float64) for v in value])
    return np.asarray(arr, dtype=np.float64).reshape(-1, 3)


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


def ood_count(rows: Iterable[Mapping[str, Any]]) -> int:
    """Ok rows flagged out of distribution (``ood`` True)."""
    return sum(1 for r in rows if r[K.STATUS] == K.STATUS_OK and r.get(K.OOD) is True)


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
        ``max_weight`` (weight of the dominant conformer), ``dipole_debye_std`` and
        ``alpha_iso_au_std`` (Boltzmann-weighted ensemble spreads of the conformers; NaN for a
        single model), ``ood`` (any ok conformer out of distribution) and ``ood_reason``
        (their distinct reasons), ``status`` ("ok" when at least one conformer was predicted,
        else the first conformer's status) and ``error``.
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
    for c, default in (
        (ALPHA_ANISO_AU, math.nan), (K.DIPOLE_DEBYE_STD, math.nan),
        (K.ALPHA_ISO_AU_STD, math.nan), (K.OOD, False), (K.OOD_REASON, ""),
    ):  # fmt: skip
        if c not in df.columns:
            df[c] = default
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
            row[K.DIPOLE_DEBYE_STD] = row[K.ALPHA_ISO_AU_STD] = math.nan
            row[K.OOD], row[K.OOD_REASON] = False, ""
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
            for c in (K.DIPOLE_DEBYE_STD, K.ALPHA_ISO_AU_STD):
                v = ok[c].to_numpy(dtype=np.float64)
                row[c] = float(w @ v)
            row[K.OOD] = any(x is not None and x == x and bool(x) for x in ok[K.OOD])
            reasons = [r for r in ok[K.OOD_REASON] if isinstance(r, str)]
            parts = [p for r in reasons for p in r.split("; ") if p]
            row[K.OOD_REASON] = "; ".join(dict.fromkeys(parts))
            row[K.STATUS] = K.STATUS_OK
            row[K.ERROR] = ""
        out.append(row)
    columns = [
        K.RECORD_INDEX, K.NAME, K.SMILES, K.MOL_ID, K.MODEL_ID, "n_conformers",
        K.ALPHA_ISO_AU, f"{K.ALPHA_ISO_AU}_min", f"{K.ALPHA_ISO_AU}_max",
        K.DIPOLE_DEBYE, f"{K.DIPOLE_DEBYE}_min", f"{K.DIPOLE_DEBYE}_max",
        ALPHA_ANISO_AU, f"{ALPHA_ANISO_AU}_min", f"{ALPHA_ANISO_AU}_max",
        "lowest_conformer_id", "max_weight", K.DIPOLE_DEBYE_STD, K.ALPHA_ISO_AU_STD,
        K.OOD, K.OOD_REASON, K.STATUS, K.ERROR,
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


# ---- the whole screen without Prefect ------------------------------------------------------
ProgressFn = Callable[[str, int, int], None]

# the columns of a conformer row the prediction needs (the rest stays in the conformers table)
SENT_COLUMNS = (
    K.RECORD_INDEX,
    K.NAME,
    K.SMILES,
    K.MOL_ID,
    K.CONFORMER_ID,
    K.CHARGE,
    K.MULTIPLICITY,
    K.NUMBERS,
    K.POSITIONS_ANGSTROM,
    K.MMFF_ENERGY_KCAL,
    K.STATUS,
    K.ERROR,
)


def write_prediction_tables(
    rows: Sequence[Mapping[str, Any]],
    output_path: str | os.PathLike[str],
    n_conformers: int,
) -> tuple[str, Any | None, str | None]:
    """Write the predictions table and, with several conformers, the per-molecule table.

    Parameters
    ----------
    rows
        Prediction rows (one per conformer or failed record).
    output_path
        Predictions Parquet; the molecules table goes to :func:`sibling_path` ``"molecules"``.
    n_conformers
        Conformers per molecule asked for; > 1 adds the Boltzmann-averaged molecules table.

    Returns
    -------
    tuple
        ``(predictions path, molecules DataFrame or None, molecules path or None)``. Both
        writes are atomic (:func:`densnet_core.store.write_table`).
    """
    from densnet_core import store

    out = str(store.write_table(list(rows), output_path, "predictions"))
    if n_conformers <= 1 or not rows:
        return out, None, None
    import pandas as pd

    molecules = boltzmann_average(pd.DataFrame(list(rows)))
    return (
        out,
        molecules,
        str(write_molecules_table(molecules, sibling_path(output_path, "molecules"))),
    )


def import_e3nn_without_dynamo() -> None:
    """Import e3nn without ``torch._dynamo`` (1.5-3 s of CPU time saved) or sympy.

    e3nn 0.6 decorates one construction-time helper (``change_basis_real_to_complex``) with
    ``torch.compiler.disable``, and that decorator imports all of ``torch._dynamo``, which
    nothing else on the prediction path needs. During the e3nn import only, the decorator is
    replaced by one that returns the function unchanged. The only consequence: ``torch.compile``
    of code that calls this helper *in this process* would trace into it instead of breaking
    the graph there. sympy is not imported either (:func:`_sympy_deferred`, ~0.6 s). For
    short-lived prediction processes (the CLI); a no-op when e3nn or ``torch._dynamo`` is
    already imported.
    """
    import sys

    if "e3nn.o3" in sys.modules or "torch._dynamo" in sys.modules:
        return
    import torch
    import torch.compiler

    real = torch.compiler.disable

    def passthrough(fn: Any = None, recursive: bool = True, *, reason: str | None = None) -> Any:
        return fn if fn is not None else (lambda f: f)

    torch.compiler.disable = passthrough
    try:
        with _sympy_deferred():
            import e3nn.o3  # noqa: F401
    finally:
        torch.compiler.disable = real


# the names e3nn.o3._angular_spherical_harmonics imports from sympy, used only by its two
# Legendre-polynomial builders (SphericalHarmonicsAlphaBeta, which densnet never builds)
_E3NN_SYMPY_NAMES = ("Integer", "Poly", "diff", "factorial", "pi", "sqrt", "symbols")
_E3NN_SYMPY_USERS = ("_poly_legendre", "_sympy_legendre")


@contextlib.contextmanager
def _sympy_deferred() -> Iterator[None]:
    """Import e3nn without importing sympy (~0.6 s); sympy is imported when first needed.

    While the block runs, ``sys.modules["sympy"]`` is a stand-in that hands out placeholders
    for the seven names e3nn's angular spherical-harmonics module imports and raises
    ``AttributeError`` for anything else. Afterwards the stand-in is removed, the two e3nn
    functions that use those names import sympy and put the real objects in place before
    their first call, and any other module that bound the stand-in gets the real sympy.
    Does nothing when sympy is already imported.
    """
    import sys
    import types

    if "sympy" in sys.modules:
        yield
        return
    stand_in = types.ModuleType("sympy")

    def placeholder(name: str) -> Any:
        if name not in _E3NN_SYMPY_NAMES:
            raise AttributeError(name)
        return _SympyPending(name)

    stand_in.__getattr__ = placeholder  # type: ignore[method-assign]
    sys.modules["sympy"] = stand_in
    try:
        yield
    finally:
        if sys.modules.get("sympy") is stand_in:
            del sys.modules["sympy"]
    mod = sys.modules.get("e3nn.o3._angular_spherical_harmonics")
    if mod is not None:
        for fn_name in _E3NN_SYMPY_USERS:
            fn = getattr(mod, fn_name, None)
            if fn is not None:
                setattr(mod, fn_name, _with_real_sympy(mod, fn))
    for other in list(sys.modules.values()):
        names = getattr(other, "__dict__", {})
        if any(value is stand_in for value in names.values()):
            import sympy

            for key, value in list(names.items()):
                if value is stand_in:
                    names[key] = sympy


class _SympyPending:
    """Stands for a sympy object until :func:`_with_real_sympy` puts the real one in place."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<sympy.{self.name}, not imported yet>"


def _with_real_sympy(mod: Any, fn: Any) -> Any:
    """``fn`` of e3nn's module ``mod``, first replacing the module's placeholders by sympy's
    objects."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        import sympy

        for name in _E3NN_SYMPY_NAMES:
            if isinstance(mod.__dict__.get(name), _SympyPending):
                mod.__dict__[name] = getattr(sympy, name)
        return fn(*args, **kwargs)

    return call


def sibling_path(output_path: str | os.PathLike[str], kind: str) -> Path:
    """``<output stem>.<kind>.parquet`` next to the output (kind: conformers, molecules)."""
    out = Path(output_path)
    return out.with_name(f"{out.stem}.{kind}.parquet")


def read_conformer_rows(
    path: str | os.PathLike[str], *, arrays: bool = True
) -> list[dict[str, Any]]:
    """The prediction-relevant columns of a conformers table as row dicts, in order.

    Parameters
    ----------
    path
        A conformers table (:func:`densnet_core.store.write_table` with ``"conformers"``).
    arrays
        ``numbers`` as (N,) int64 and ``positions_angstrom`` as (N, 3) float64 numpy arrays
        (views into one buffer: ~10x faster than nested lists for 1,000 rows). False: plain
        Python lists (what Prefect task parameters need).

    Returns
    -------
    list[dict]
        One dict per row with the columns of :data:`SENT_COLUMNS` present in the table.

    Raises
    ------
    densnet_core.store.SchemaError
        If the file is not a conformers table of this schema version.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from densnet_core import store

    path = Path(path)
    schema = pq.read_schema(path)
    store._check_metadata(schema, "conformers", path)
    cols = [c for c in SENT_COLUMNS if c in schema.names]
    tbl = pq.read_table(path, columns=cols)
    scalar = [c for c in cols if not (arrays and c in (K.NUMBERS, K.POSITIONS_ANGSTROM))]
    rows = tbl.select(scalar).to_pylist()
    if not arrays or not rows:
        return rows
    n = tbl.num_rows
    if K.NUMBERS in cols:
        col = tbl.column(K.NUMBERS).combine_chunks()
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = np.asarray(col.offsets)
        lengths = np.asarray(pc.fill_null(pc.list_value_length(col), 0))
        for r, start, length in zip(rows, offsets[:n], lengths, strict=True):
            r[K.NUMBERS] = flat[start : start + length]
    if K.POSITIONS_ANGSTROM in cols:
        col = tbl.column(K.POSITIONS_ANGSTROM).combine_chunks()
        atoms = pc.list_flatten(col)
        xyz = pc.list_flatten(atoms).to_numpy(zero_copy_only=False).astype(np.float64)
        if len(xyz) == 3 * len(atoms):  # every atom has 3 coordinates: one reshape
            xyz = xyz.reshape(-1, 3)
            offsets = np.asarray(col.offsets)
            lengths = np.asarray(pc.fill_null(pc.list_value_length(col), 0))
            for r, start, length in zip(rows, offsets[:n], lengths, strict=True):
                r[K.POSITIONS_ANGSTROM] = xyz[start : start + length]
        else:  # malformed rows: keep them as lists, the Predictor reports them
            for r, value in zip(rows, col.to_pylist(), strict=True):
                r[K.POSITIONS_ANGSTROM] = value if value is not None else []
    return rows


# worker-process state for predict_rows_parallel (set before forking / by the initializer)
_WORKER_PREDICTOR: Predictor | None = None


def _init_spawned_worker(model_dir: str, batch_size: int, threads: int) -> None:
    global _WORKER_PREDICTOR
    _WORKER_PREDICTOR = Predictor(model_dir, batch_size=batch_size, threads=threads)


def _predict_in_worker(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict]:
    p = _WORKER_PREDICTOR
    assert p is not None, "worker has no predictor"
    before = dict(p.timings)
    out = p.predict_rows(rows)
    return out, {k: p.timings[k] - before.get(k, 0.0) for k in p.timings}


def predict_rows_parallel(
    predictor: Predictor,
    rows: Sequence[Mapping[str, Any]],
    *,
    workers: int = 1,
    chunk_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """:meth:`Predictor.predict_rows` over several processes; rows out in input order.

    With ``workers > 1`` on a CPU predictor, ``workers`` processes are *forked* from this one
    after the model is loaded: they share its loaded model, per-element tables and imports (no
    second start-up) and run one torch thread each. The rows are ordered by size, largest
    first, and cut into chunks of one batch, handed out in that order (longest-processing-time
    first: the workers finish within a fraction of a batch of each other). Where ``fork`` is not
    available the workers are spawned and load the model themselves. The workers' stage timings
    are added to ``predictor.timings`` (seconds summed over the workers).

    Measured on the 2-core development machine (1,017 ChEMBL molecules, default preset, other
    jobs running): 2 forked processes x 1 thread took 22-26 s and 11-12 CPU-s, 1 process x 2
    intra-op threads 154-171 s and 73-81 CPU-s (OpenMP threads spin while they wait for the
    busier core; these per-atom ops are too small to split). See ``benchmarks/throughput.py``.

    Parameters
    ----------
    predictor
        A loaded predictor (its settings are used in every worker).
    rows
        Conformers-table rows.
    workers
        Processes; 1 = in this process.
    chunk_size
        Rows per task (default: the predictor's batch size with workers, else n/8, at least
        two batches).
    on_progress
        Called as ``on_progress(rows_done, rows_total)`` at the start and after every chunk.

    Returns
    -------
    list[dict]
        As :meth:`Predictor.predict_rows`.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    global _WORKER_PREDICTOR
    rows = list(rows)
    total = len(rows)
    bs = predictor.batch_size
    if on_progress:
        on_progress(0, total)
    parallel = workers > 1 and total > bs and predictor.device.type == "cpu"
    if not parallel:
        size = chunk_size or max(2 * bs, math.ceil(total / 8))
        out: list[dict[str, Any]] = []
        for i in range(0, total, size):
            out.extend(predictor.predict_rows(rows[i : i + size]))
            if on_progress:
                on_progress(len(out), total)
        return out

    # largest molecules first, one batch per task
    n_atoms = [len(_as_sequence(r.get(K.NUMBERS))) for r in rows]
    order = sorted(range(total), key=lambda i: -n_atoms[i])
    size = chunk_size or bs
    chunks = [order[i : i + size] for i in range(0, total, size)]
    if "fork" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("fork")
        _WORKER_PREDICTOR = predictor  # inherited by the forked workers
        init: Any = None
        initargs: tuple[Any, ...] = ()
    else:  # pragma: no cover - not Linux
        ctx = multiprocessing.get_context("spawn")
        init, initargs = _init_spawned_worker, (str(predictor.model_dir), bs, 1)
    saved_threads = predictor.threads
    predictor.threads = 1  # the workers' setting (applied in _run_batch)
    results: list[dict[str, Any] | None] = [None] * total
    try:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(chunks)),
            mp_context=ctx,
            initializer=init,
            initargs=initargs,
        ) as pool:
            futures = {pool.submit(_predict_in_worker, [rows[j] for j in c]): c for c in chunks}
            done = 0
            for fut in as_completed(futures):
                chunk = futures[fut]
                part, timings = fut.result()
                for j, row in zip(chunk, part, strict=True):
                    results[j] = row
                for k, v in timings.items():
                    predictor.timings[k] = predictor.timings.get(k, 0.0) + v
                done += len(chunk)
                if on_progress:
                    on_progress(done, total)
    finally:
        predictor.threads = saved_threads
        _WORKER_PREDICTOR = None
    missing = [j for j, row in enumerate(results) if row is None]
    if missing:  # cannot happen (every chunk returns one row per row); never drop rows silently
        raise RuntimeError(f"{len(missing)} rows came back from no worker")
    return results  # type: ignore[return-value]


def _stream_conformer_batches(
    conformer_stage: ConformerBatches,
    predictor: Predictor,
    stage: dict[str, float],
    notify: Callable[[str, int, int], None],
) -> tuple[dict[int, list[dict[str, Any]]], dict[int, list[dict[str, Any]]]]:
    """Collect the conformer batches as they finish; predict here while the pool still works.

    Returns ``(conformer rows per batch, predicted rows per batch)``; the second holds only the
    batches predicted during the stream. Adds ``stage["conformers"]`` (seconds from the
    submission of the batches to the last one) and the streamed prediction seconds to
    ``stage["predict"]``.
    """
    batches: dict[int, list[dict[str, Any]]] = {}
    predicted: dict[int, list[dict[str, Any]]] = {}
    queued: list[int] = []
    stream_rows = max(1, predictor.batch_size // 2)
    n_records, records_done = conformer_stage.n_records, 0
    notify("conformers", 0, n_records)
    if conformer_stage.working():
        # The conformers table is written next, and pyarrow's first conversion imports pandas
        # (~0.6 CPU-s, serial in this process before the workers fork). While the pool still
        # works this process would wait anyway: import it now.
        import pandas  # noqa: F401

    for number, rows in conformer_stage:
        batches[number] = rows
        queued.append(number)
        records_done += conformer_stage.batch_records(number)
        notify("conformers", records_done, n_records)
        if not conformer_stage.working():
            continue  # the pool is done (or there is none): the rest goes to the workers
        if sum(len(batches[q]) for q in queued) < stream_rows:
            continue
        t0 = time.perf_counter()
        out = predictor.predict_rows([row for q in queued for row in batches[q]])
        at = 0
        for q in queued:
            predicted[q] = out[at : at + len(batches[q])]
            at += len(batches[q])
        queued = []
        stage["predict"] += time.perf_counter() - t0
    stage["conformers"] = time.perf_counter() - conformer_stage.started
    return batches, predicted


def screen_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    model_dir: str | os.PathLike[str] | None = None,
    n_conformers: int = 1,
    workers: int | None = None,
    threads: int = 1,
    batch_size: int = 64,
    predictor: Predictor | None = None,
    on_progress: ProgressFn | None = None,
    freeze_gc: bool = False,
    conformer_stage: ConformerBatches | None = None,
) -> dict[str, Any]:
    """The screen without Prefect: input file → conformers → predictions table.

    What ``densnet predict`` runs by default; ``flows/screen.py`` is the same work as a
    Prefect flow. Stages:

    1. conformers: a conformers table is read as it is; any other input (``.smi``, ``.csv``,
       ``.sdf`` — 3D SDF coordinates are kept) is cut into batches for the worker pool of
       :func:`densnet_core.conformer_pool.start_conformer_stage` (``workers`` processes;
       ``workers - 1``, at least one, when every record is a 3D SDF block: parsing needs no
       embedding, so the model loads on the remaining core) *while* this process loads the
       model. The rows are written to ``<output stem>.conformers.parquet``;
    2. prediction, streamed: while the pool still works, the batches it has finished are
       predicted here (one torch thread, ``batch_size // 2`` rows at a time); the rest, once
       the pool is done, by :func:`predict_rows_parallel` with ``workers`` processes;
    3. the predictions table is written atomically, plus ``<output stem>.molecules.parquet``
       (Boltzmann-averaged per molecule) when ``n_conformers > 1``.

    Parameters
    ----------
    input_path
        ``.smi``/``.csv``/``.sdf`` file, or a conformers table.
    output_path
        Destination Parquet file (predictions table).
    model_dir
        Model directory; None = the default model.
    n_conformers
        Conformers per molecule (SMILES/CSV input).
    workers
        Processes for the conformers and the prediction (default: ``DENSNET_WORKERS`` or the
        usable cores).
    threads
        Torch intra-op threads of this process (with ``workers=1``; forked workers use 1).
    batch_size
        Molecules per forward pass.
    predictor
        An already loaded predictor (then ``model_dir``, ``batch_size`` and ``threads`` are
        its own).
    on_progress
        Called as ``on_progress(stage, done, total)``, stage ``"conformers"`` (records) or
        ``"predict"`` (conformer rows).
    freeze_gc
        Once the model is loaded, move every object to Python's permanent generation
        (``gc.freeze()``) and (re-)enable the collector: later collections skip the imported
        modules and the model, forked workers copy fewer pages, and the interpreter's exit is
        ~1 s shorter. For short-lived processes (the CLI, which also disables the collector
        during its start-up: ~0.5 s of the ~5 s); it leaves those objects uncollected for good.
    conformer_stage
        The conformer batches of ``input_path``, already submitted by
        :func:`densnet_core.conformer_pool.start_conformer_stage` with the same ``workers``
        and ``n_conformers`` (the CLI starts them before it imports torch); None = submit
        them here.

    Returns
    -------
    dict
        ``input``, ``output``, ``molecules_output``, ``conformers_output``, ``n_records``,
        ``n_rows``, ``status_counts`` (rows per status), ``seconds``, ``stage_seconds``
        (``load``, ``conformers`` (from the submission of the batches), ``predict`` (the
        streamed part included), ``write``; the first three overlap), ``streamed_rows`` (rows
        predicted while the conformer pool was still working), ``predict_timings``
        (CPU-seconds per predictor stage, summed over workers), ``rows_per_second``,
        ``model_id``, ``model_dir``, ``workers``, ``n_ood`` (ok rows flagged out of
        distribution), ``n_members`` (ensemble members; 1 for a single model),
        ``domain_source`` (:attr:`Predictor.domain_source`).

    Raises
    ------
    densnet_core.inputs.InputFileError
        Missing or unreadable input.
    ModelNotFoundError
        No model.
    """
    from densnet_core.conformer_pool import shutdown_shared_pools, start_conformer_stage
    from densnet_core.inputs import detect_format
    from densnet_core.settings import get_settings

    start = time.perf_counter()
    fmt = detect_format(input_path)
    workers = max(1, int(workers or get_settings().n_workers()))
    if predictor is None:
        resolve_model_dir(model_dir)  # fail before any work
    stage: dict[str, float] = {"predict": 0.0}

    def notify(name: str, done: int, total: int) -> None:
        if on_progress is not None:
            try:
                on_progress(name, done, total)
            except Exception:  # a display problem must not fail the run
                pass

    # --- 1. conformers (submitted to the pool; it works while the model loads here) ---------
    if fmt == "conformers":
        t0 = time.perf_counter()
        conf_rows = read_conformer_rows(input_path)
        stage["conformers"] = time.perf_counter() - t0
    elif conformer_stage is None:
        conformer_stage = start_conformer_stage(
            input_path, workers=workers, n_conformers=n_conformers
        )

    # --- model -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    try:
        if predictor is None:
            predictor = Predictor(model_dir, batch_size=batch_size, threads=threads)
    except BaseException:
        shutdown_shared_pools()  # the conformer work would only be thrown away
        raise
    finally:
        stage["load"] = time.perf_counter() - t0
    if freeze_gc:
        import gc

        gc.freeze()
        gc.enable()
    timings_before = dict(predictor.timings)

    # --- 2. prediction: streamed while the pool works, the rest in forked workers -----------
    conformers_output: str | None = None
    done_rows: dict[int, list[dict[str, Any]]] = {}  # predicted rows per conformer batch
    if conformer_stage is not None:
        batches, done_rows = _stream_conformer_batches(conformer_stage, predictor, stage, notify)
        shutdown_shared_pools()  # no idle workers (nor their threads) while we fork below
        conf_rows = [row for i in range(len(batches)) for row in batches[i]]
        from densnet_core import store

        conf_path = sibling_path(output_path, "conformers")
        conformers_output = str(store.write_table(conf_rows, conf_path, "conformers"))
        rest = [i for i in range(len(batches)) if i not in done_rows]
        rest_rows = [row for i in rest for row in batches[i]]
    else:
        batches, rest, rest_rows = {0: conf_rows}, [0], conf_rows
    n_streamed = sum(len(v) for v in done_rows.values())
    t0 = time.perf_counter()
    predicted = predict_rows_parallel(
        predictor,
        rest_rows,
        workers=workers,
        on_progress=lambda d, t: notify("predict", n_streamed + d, n_streamed + t),
    )
    stage["predict"] += time.perf_counter() - t0
    at = 0
    for i in rest:
        done_rows[i] = predicted[at : at + len(batches[i])]
        at += len(batches[i])
    rows = [row for i in range(len(batches)) for row in done_rows[i]]
    predict_timings = {k: v - timings_before.get(k, 0.0) for k, v in predictor.timings.items()}

    # --- 3. tables --------------------------------------------------------------------------
    t0 = time.perf_counter()
    out, _, molecules_output = write_prediction_tables(rows, output_path, n_conformers)
    stage["write"] = time.perf_counter() - t0
    seconds = time.perf_counter() - start
    return {
        "input": str(input_path),
        "output": out,
        "molecules_output": molecules_output,
        "conformers_output": conformers_output,
        "n_records": len({int(r[K.RECORD_INDEX]) for r in rows}),
        "n_rows": len(rows),
        "status_counts": status_counts(rows),
        "seconds": seconds,
        "stage_seconds": stage,
        "streamed_rows": n_streamed,
        "predict_timings": predict_timings,
        "rows_per_second": len(rows) / seconds if seconds > 0 else 0.0,
        "model_id": predictor.model_id,
        "model_dir": str(predictor.model_dir),
        "workers": workers,
        "n_ood": ood_count(rows),
        "n_members": len(predictor.ensemble.members) if predictor.ensemble is not None else 1,
        "domain_source": predictor.domain_source,
    }
