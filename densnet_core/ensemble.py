"""Deep ensembles of density models: training, the ``ensemble.json`` manifest, batched prediction.

Layout of an ensemble directory::

    <out_dir>/member-00/   a model directory (densnet_core.modelio) + checkpoint/
    <out_dir>/member-01/   ...
    <out_dir>/ensemble.json
    <out_dir>/calibration.png

Members
-------
Member k is trained by :func:`densnet_core.train.train` with ``seed = seed + k`` (initialisation
and batch order), ``split_seed = seed`` for all members — so every member holds out the *same*
validation molecules, and the calibration on them uses data no member saw — and, with
``bootstrap=True``, ``bootstrap_seed = 1000 * seed + k``: a bootstrap resample of the training
*molecules* (all conformers of a drawn molecule come along, a molecule drawn twice weighs
twice). Members are independent, so they can train in parallel (``flows/train.py`` runs them
as Prefect tasks). A finished member (model card ``status == "final"`` for the requested
epochs) is skipped; an interrupted one resumes from its checkpoint.

Manifest
--------
``ensemble.json`` (written atomically, last): ``format``, ``format_version``, ``ensemble_id``
(``<dir name>-<sha1 of the sorted member model ids>[:8]``), ``members`` (dir, model_id,
weights_sha1, seed, bootstrap_seed), ``level_of_theory_fields``, ``validation_inchikeys``
(shared), ``training_inchikeys`` (union over members), ``training_elements`` (atomic numbers
of the training molecules), ``training_ring_systems`` (:func:`densnet_core.ood.ring_systems`
of the training SMILES of the label store), ``max_heavy_atoms_in_data`` (heavy atoms of the
largest training molecule), and ``calibration``
(:mod:`densnet_core.calibration`: scale factors, OOD thresholds, validation figures).

Prediction
----------
:class:`Ensemble` collates a batch once (graph, gather indices, prior: shared) and runs all K
members on it. Two ways, measured on 64 molecules (tiny HF/STO-3G set, small preset, 1
thread): a loop over members 0.30 s, ``torch.func`` (``stack_module_state`` +
``functional_call`` + ``vmap`` over the stacked parameters, buffers shared) 0.24 s;
``mode="auto"`` uses vmap and falls back to the loop if vmap fails for a model. Outputs
(:class:`EnsemblePrediction`): per-member dipoles (B, K, 3) and polarizabilities (B, K, 3, 3),
|mu| of the mean dipole (the dipole of the averaged density, D), the mean alpha_iso (bohr^3),
and the spreads (``std``, ddof = 1) of the members' |mu| and alpha_iso. The spreads are
multiplied by the calibrated scale factors of the manifest (``calibrated=True``, default).
Weights are read only through :func:`densnet_core.modelio.load_model` (safetensors).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from densnet_core.store import atomic_file
from densnet_core.units import DEBYE_PER_AU

__all__ = [
    "MANIFEST_FILE",
    "Ensemble",
    "EnsemblePrediction",
    "MemberSpec",
    "calibrate_ensemble",
    "ensemble_id",
    "is_ensemble_dir",
    "load_ensemble",
    "member_is_finished",
    "member_specs",
    "read_manifest",
    "train_ensemble",
    "train_member",
    "write_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_FILE = "ensemble.json"
PLOT_FILE = "calibration.png"
FORMAT = "densnet-ensemble"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------
# Members
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemberSpec:
    """How member ``index`` is trained (keyword arguments of :func:`densnet_core.train.train`).

    Attributes
    ----------
    index
        0-based member number.
    name
        Directory name, ``member-<index:02d>``.
    seed
        Initialisation and batch-order seed.
    split_seed
        Train/validation split seed (the same for all members).
    bootstrap_seed
        Bootstrap draw of the training molecules (None = no bootstrap).
    """

    index: int
    name: str
    seed: int
    split_seed: int
    bootstrap_seed: int | None


def member_specs(members: int, *, seed: int = 0, bootstrap: bool = True) -> list[MemberSpec]:
    """The K member specifications (see the module docstring)."""
    if members < 1:
        raise ValueError(f"an ensemble needs at least one member, got {members}")
    return [
        MemberSpec(
            index=k,
            name=f"member-{k:02d}",
            seed=seed + k,
            split_seed=seed,
            bootstrap_seed=1000 * seed + k if bootstrap else None,
        )
        for k in range(members)
    ]


def member_is_finished(member_dir: str | os.PathLike[str], *, epochs: int | None = None) -> bool:
    """Whether a member directory holds a final model (for ``epochs``, if given)."""
    path = Path(member_dir) / "model_card.json"
    if not path.is_file():
        return False
    try:
        card = json.loads(path.read_text())
    except ValueError:
        return False
    if card.get("status") != "final":
        return False
    planned = (card.get("training_settings") or {}).get("epochs")
    return epochs is None or planned == epochs


def train_member(
    labels_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    spec: MemberSpec,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Train (or resume, or skip if finished) one member into ``out_dir/<spec.name>``.

    Parameters
    ----------
    labels_dir
        Label store.
    out_dir
        Ensemble directory.
    spec
        The member (:func:`member_specs`).
    **train_kwargs
        Keyword arguments of :func:`densnet_core.train.train` (not ``seed``, ``split_seed``,
        ``bootstrap_seed``: they come from ``spec``).

    Returns
    -------
    dict
        ``name``, ``model_dir``, ``model_id``, ``skipped`` (already finished), ``stopped``,
        ``best_epoch``, ``epochs_run``, ``validation`` metrics.
    """
    from densnet_core.modelio import read_model_info
    from densnet_core.train import train

    member_dir = Path(out_dir) / spec.name
    epochs = int(train_kwargs.get("epochs", 200))
    if member_is_finished(member_dir, epochs=epochs):
        info = read_model_info(member_dir)
        return {
            "name": spec.name,
            "model_dir": str(member_dir),
            "model_id": info.model_id,
            "skipped": True,
            "stopped": info.card.get("stopped"),
            "best_epoch": info.card.get("best_epoch"),
            "epochs_run": info.card.get("epochs_run"),
            "validation": (info.card.get("metrics") or {}).get("validation", {}),
        }
    for key in ("seed", "split_seed", "bootstrap_seed"):
        if key in train_kwargs:
            raise TypeError(f"{key} is set per member; pass seed= to train_ensemble instead")
    res = train(
        labels_dir,
        member_dir,
        seed=spec.seed,
        split_seed=spec.split_seed,
        bootstrap_seed=spec.bootstrap_seed,
        **train_kwargs,
    )
    return {
        "name": spec.name,
        "model_dir": str(member_dir),
        "model_id": res.info.model_id,
        "skipped": False,
        "stopped": res.stopped,
        "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run,
        "validation": res.metrics.get("validation", {}),
    }


def ensemble_id(out_dir: str | os.PathLike[str], member_ids: Sequence[str]) -> str:
    """``<dir name>-<sha1("\\n".join(sorted(member_ids)))[:8]>``."""
    h = hashlib.sha1("\n".join(sorted(member_ids)).encode()).hexdigest()
    return f"{Path(out_dir).resolve().name}-{h[:8]}"


# ------------------------------------------------------------------------------------------
# Prediction
# ------------------------------------------------------------------------------------------
@dataclass
class EnsemblePrediction:
    """Predictions of all K members for B molecules.

    Attributes
    ----------
    dipole_au
        (B, K, 3) member dipoles, e·bohr (about the centre of nuclear charge).
    polarizability_au
        (B, K, 3, 3) member polarizabilities, bohr^3 (NaN without response heads).
    n_electrons
        (B, K) integrated electron counts, e.
    dipole_debye, dipole_debye_std
        (B,) |mean over members of mu_k| — the dipole of the ensemble-mean density, so it is
        the norm of :attr:`dipole_au_mean` — and the spread of the members' |mu_k| (ddof 1,
        times the calibrated scale when ``calibrated``), D.
    alpha_iso_au, alpha_iso_au_std
        (B,) mean over members of tr(alpha_k)/3 and its spread, bohr^3.
    """

    dipole_au: np.ndarray
    polarizability_au: np.ndarray
    n_electrons: np.ndarray
    dipole_debye: np.ndarray
    dipole_debye_std: np.ndarray
    alpha_iso_au: np.ndarray
    alpha_iso_au_std: np.ndarray

    @property
    def dipole_au_mean(self) -> np.ndarray:
        """(B, 3) member-mean dipole vector, e·bohr."""
        return self.dipole_au.mean(axis=1)

    @property
    def polarizability_au_mean(self) -> np.ndarray:
        """(B, 3, 3) member-mean polarizability, bohr^3."""
        return self.polarizability_au.mean(axis=1)

    @staticmethod
    def concatenate(parts: Sequence[EnsemblePrediction]) -> EnsemblePrediction:
        """Join predictions of consecutive batches along B."""
        names = [f for f in EnsemblePrediction.__dataclass_fields__]
        return EnsemblePrediction(
            **{n: np.concatenate([getattr(p, n) for p in parts], axis=0) for n in names}
        )


def _summaries(
    dip: np.ndarray, alpha: np.ndarray, scale_d: float, scale_a: float
) -> dict[str, np.ndarray]:
    k = dip.shape[1]
    norm = np.linalg.norm(dip, axis=2) * DEBYE_PER_AU  # (B, K)
    iso = np.trace(alpha, axis1=2, axis2=3) / 3.0  # (B, K)
    if k > 1:
        sd, sa = norm.std(axis=1, ddof=1), iso.std(axis=1, ddof=1)
    else:
        sd = sa = np.full(dip.shape[0], np.nan)
    return {
        "dipole_debye": np.linalg.norm(dip.mean(axis=1), axis=1) * DEBYE_PER_AU,
        "dipole_debye_std": sd * scale_d,
        "alpha_iso_au": iso.mean(axis=1),
        "alpha_iso_au_std": sa * scale_a,
    }


class Ensemble:
    """K density models loaded from an ensemble directory (:func:`load_ensemble`).

    Attributes
    ----------
    members
        The K :class:`~densnet_core.model.DensityModel` (eval mode, float32).
    infos
        Their :class:`~densnet_core.modelio.ModelInfo`.
    manifest
        ``ensemble.json`` as a dict.
    ensemble_id, level, elements
        The ensemble's id, level of theory, and the elements its models support.
    calibration
        ``manifest["calibration"]`` (empty if not calibrated).
    mode
        ``"vmap"`` or ``"loop"`` (the prediction path in use).
    """

    def __init__(
        self,
        members: Sequence[Any],
        infos: Sequence[Any],
        manifest: Mapping[str, Any],
        *,
        mode: str = "auto",
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        configs = {json.dumps(i.config, sort_keys=True, default=str) for i in infos}
        if len(configs) != 1:
            raise ValueError("ensemble members have different model configurations")
        if mode not in ("auto", "vmap", "loop"):
            raise ValueError(f"mode must be auto, vmap or loop, not {mode!r}")
        self.members = list(members)
        self.infos = list(infos)
        self.manifest = dict(manifest)
        self.ensemble_id = str(self.manifest.get("ensemble_id", ""))
        self.level = self.infos[0].level
        self.elements = tuple(self.infos[0].elements)
        self.calibration: dict[str, Any] = dict(self.manifest.get("calibration") or {})
        self.mode = "loop" if mode == "loop" or len(self.members) == 1 else "vmap"
        self._auto = mode == "auto"
        self._stacked: tuple[dict[str, Any], dict[str, Any]] | None = None

    # -- helpers for the Predictor -------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The first member (for ``collate`` and the config: all members share them)."""
        return self.members[0]

    @property
    def has_response(self) -> bool:
        """Whether the members predict polarizabilities."""
        return bool(getattr(self.members[0], "has_response", True))

    @property
    def scales(self) -> tuple[float, float]:
        """Calibrated (dipole, alpha_iso) spread scale factors (1.0 when not calibrated)."""
        sc = self.calibration.get("scale") or {}
        d, a = sc.get("dipole_debye_std", 1.0), sc.get("alpha_iso_au_std", 1.0)
        ok = lambda x: x is not None and math.isfinite(float(x)) and float(x) > 0  # noqa: E731
        return (float(d) if ok(d) else 1.0, float(a) if ok(a) else 1.0)

    def ood_criteria(self) -> Any:
        """:class:`densnet_core.ood.OODCriteria` of this ensemble."""
        from densnet_core.ood import OODCriteria

        return OODCriteria.from_manifest(self.manifest)

    def collate(self, molecules: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
        """Collate once for all members (:meth:`DensityModel.collate`)."""
        return self.members[0].collate(molecules, **kwargs)

    def to(self, device: Any) -> Ensemble:
        """Move every member (and the stacked weights) to ``device``."""
        self.members = [m.to(device) for m in self.members]
        self._stacked = None
        return self

    # -- forward --------------------------------------------------------------------------------
    def _stack(self) -> tuple[dict[str, Any], dict[str, Any]]:
        import torch
        from torch.func import stack_module_state

        if self._stacked is None:
            params, _ = stack_module_state(self.members)
            buffers = dict(self.members[0].named_buffers())
            for m in self.members[1:]:
                for name, b in m.named_buffers():
                    if not torch.equal(b, buffers[name]):
                        raise ValueError(f"members differ in buffer {name}; cannot share it")
            self._stacked = (params, buffers)
        return self._stacked

    def forward_all(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Raw member outputs: ``dipole_au`` (K, B, 3), ``n_electrons`` (K, B) and, with
        response heads, ``polarizability_au`` (K, B, 3, 3) — torch tensors."""
        import torch

        keys = ("dipole_au", "n_electrons", "polarizability_au")
        if self.mode == "vmap":
            try:
                from torch.func import functional_call, vmap

                params, buffers = self._stack()
                base = self.members[0]

                def f(p: dict[str, Any]) -> dict[str, Any]:
                    out = functional_call(base, (p, buffers), (batch,))
                    return {k: out[k] for k in keys if k in out}

                return vmap(f)(params)
            except Exception as exc:  # fall back to the plain loop
                if not self._auto:
                    raise
                log.warning("vmap over ensemble members failed (%s); using a loop", exc)
                self.mode = "loop"
        outs = [m(batch) for m in self.members]
        return {k: torch.stack([o[k] for o in outs]) for k in keys if k in outs[0]}

    def predict_batch(
        self, batch: Mapping[str, Any], *, calibrated: bool = True
    ) -> EnsemblePrediction:
        """All members on one collated batch.

        Parameters
        ----------
        batch
            From :meth:`collate`.
        calibrated
            Multiply the spreads by the manifest's scale factors.

        Returns
        -------
        EnsemblePrediction
        """
        import torch

        with torch.inference_mode():
            out = self.forward_all(batch)
            dip = out["dipole_au"].double().cpu().numpy().transpose(1, 0, 2)  # (B, K, 3)
            n_el = out["n_electrons"].double().cpu().numpy().T  # (B, K)
            if "polarizability_au" in out:
                alpha = out["polarizability_au"].double().cpu().numpy().transpose(1, 0, 2, 3)
            else:
                alpha = np.full((*dip.shape[:2], 3, 3), np.nan)
        sd, sa = self.scales if calibrated else (1.0, 1.0)
        return EnsemblePrediction(
            dipole_au=dip,
            polarizability_au=alpha,
            n_electrons=n_el,
            **_summaries(dip, alpha, sd, sa),
        )

    def predict_inputs(
        self,
        inputs: Sequence[Any],
        *,
        batch_size: int = 32,
        calibrated: bool = True,
        device: str = "cpu",
    ) -> EnsemblePrediction:
        """:meth:`predict_batch` over a list of :class:`~densnet_core.graph.MoleculeInput`."""
        import torch

        parts = []
        for start in range(0, len(inputs), batch_size):
            batch = self.collate(
                list(inputs[start : start + batch_size]), dtype=torch.float32, device=device
            )
            parts.append(self.predict_batch(batch, calibrated=calibrated))
        if not parts:
            k = len(self.members)
            e = np.zeros(0)
            return EnsemblePrediction(
                np.zeros((0, k, 3)), np.zeros((0, k, 3, 3)), np.zeros((0, k)), e, e, e, e
            )
        return EnsemblePrediction.concatenate(parts)


def is_ensemble_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds an ``ensemble.json``."""
    return (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``ensemble.json`` of an ensemble directory (checked format)."""
    p = Path(path) / MANIFEST_FILE
    data = json.loads(p.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{p}: not a {FORMAT} manifest")
    if int(data.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(f"{p}: ensemble format {data.get('format_version')} is too new")
    return data


def load_ensemble(
    path: str | os.PathLike[str], *, device: str = "cpu", mode: str = "auto"
) -> Ensemble:
    """Load an ensemble directory (members through :func:`densnet_core.modelio.load_model`).

    Parameters
    ----------
    path
        Ensemble directory (with ``ensemble.json``).
    device
        Torch device of the members.
    mode
        ``"auto"`` (vmap, loop on failure), ``"vmap"`` or ``"loop"``.

    Raises
    ------
    ValueError
        A member's model id differs from the manifest's (the weights changed since).
    """
    from densnet_core.modelio import load_model

    path = Path(path)
    manifest = read_manifest(path)
    models, infos = [], []
    for m in manifest["members"]:
        model, info = load_model(path / m["dir"], device=device)
        if info.weights_sha1 != m["weights_sha1"]:
            raise ValueError(
                f"{path / m['dir']}: weights differ from the ensemble manifest "
                f"({info.model_id} vs {m['model_id']}); rerun the ensemble training"
            )
        models.append(model)
        infos.append(info)
    return Ensemble(models, infos, manifest, mode=mode)


# ------------------------------------------------------------------------------------------
# Manifest + calibration
# ------------------------------------------------------------------------------------------
def calibrate_ensemble(
    ensemble: Ensemble,
    labelled: Any,
    *,
    batch_size: int = 32,
    calibrated: bool = False,
) -> dict[str, Any]:
    """Predict a :class:`~densnet_core.calibration.LabelledSet` and compare with its labels.

    Returns
    -------
    dict
        ``metrics`` (:func:`densnet_core.calibration.calibration_metrics`), and per
        conformer ``err_<prop>`` / ``std_<prop>`` (S,) arrays for the plot.
    """
    from densnet_core.calibration import calibration_metrics

    pred = ensemble.predict_inputs(labelled.inputs, batch_size=batch_size, calibrated=calibrated)
    ref_d, ref_a = labelled.dipole_debye, labelled.alpha_iso_au
    metrics = calibration_metrics(
        pred_dipole_debye=pred.dipole_debye,
        std_dipole_debye=pred.dipole_debye_std,
        pred_alpha_iso_au=pred.alpha_iso_au,
        std_alpha_iso_au=pred.alpha_iso_au_std,
        ref_dipole_debye=ref_d,
        ref_alpha_iso_au=ref_a,
    )
    return {
        "metrics": metrics,
        "err_dipole_debye": np.abs(pred.dipole_debye - ref_d),
        "std_dipole_debye": pred.dipole_debye_std,
        "err_alpha_iso_au": np.abs(pred.alpha_iso_au - ref_a),
        "std_alpha_iso_au": pred.alpha_iso_au_std,
        "mol_ids": list(labelled.mol_ids),
    }


def _jsonable(x: Any) -> Any:
    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    text = json.dumps(x, default=default, allow_nan=True)
    return json.loads(text)


def write_manifest(
    labels_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    members: int | None = None,
    calibrate: bool = True,
    fit_scale: bool = True,
    ood_quantile: float = 0.95,
    extra_labels: Mapping[str, str | os.PathLike[str]] | None = None,
    plot: bool = True,
    batch_size: int = 32,
    device: str = "cpu",
) -> dict[str, Any]:
    """Collect the finished members, calibrate on the validation molecules, write the manifest.

    Parameters
    ----------
    labels_dir
        The label store the members trained on (training SMILES -> ring systems; validation
        labels -> calibration).
    out_dir
        Ensemble directory holding ``member-*`` model directories.
    members
        Expected number of members (None = every ``member-*`` with a final model).
    calibrate
        Predict the validation molecules and store the calibration (scale factors, OOD
        thresholds, figures). Without validation molecules nothing is calibrated.
    fit_scale
        Fit the per-property variance scale on the validation molecules (else 1).
    ood_quantile
        Quantile of the validation spreads used as OOD threshold.
    extra_labels
        ``{name: label store}``: held-out sets to report calibration figures on too
        (molecules also in the training set are left out).
    plot
        Write ``calibration.png``.
    batch_size, device
        Prediction.

    Returns
    -------
    dict
        The manifest written.
    """
    from densnet_core import keys as K
    from densnet_core.calibration import (
        calibration_plot,
        load_labelled_set,
        ood_thresholds,
    )
    from densnet_core.calibration import (
        fit_scale as _fit_scale,
    )
    from densnet_core.dataset import load_label_rows
    from densnet_core.modelio import read_model_info
    from densnet_core.ood import training_ring_systems

    out_dir = Path(out_dir)
    dirs = sorted(p for p in out_dir.glob("member-*") if member_is_finished(p))
    if members is not None:
        want = [out_dir / s.name for s in member_specs(members)]
        missing = [p.name for p in want if p not in dirs]
        if missing:
            raise FileNotFoundError(f"{out_dir}: members not finished: {missing}")
        dirs = want
    if not dirs:
        raise FileNotFoundError(f"{out_dir}: no finished ensemble members")
    infos = [read_model_info(d) for d in dirs]
    settings = [i.card.get("training_settings") or {} for i in infos]
    val_sets = {tuple(i.card.get("validation_inchikeys") or ()) for i in infos}
    if len(val_sets) != 1:
        raise ValueError("ensemble members hold out different validation molecules")
    val_ids = list(next(iter(val_sets)))
    train_ids = sorted({m for i in infos for m in i.card.get("training_inchikeys") or ()})
    level = infos[0].level
    rows = load_label_rows(labels_dir, level=level)
    tr_rows = rows[rows[K.MOL_ID].isin(set(train_ids))]
    train_elements = sorted({int(z) for nums in tr_rows[K.NUMBERS] for z in nums})
    member_ids = [i.model_id for i in infos]
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ensemble_id": ensemble_id(out_dir, member_ids),
        "n_members": len(infos),
        "members": [
            {
                "dir": d.name,
                "model_id": i.model_id,
                "weights_sha1": i.weights_sha1,
                "seed": s.get("seed"),
                "bootstrap_seed": s.get("bootstrap_seed"),
                "n_train_molecules": i.card.get("n_train_molecules"),
                "validation": ((i.card.get("metrics") or {}).get("validation") or {}).get(
                    "model", {}
                ),
            }
            for d, i, s in zip(dirs, infos, settings, strict=True)
        ],
        "level_of_theory": level.label,
        "level_of_theory_fields": level.model_dump(),
        "aux_basis": infos[0].aux_basis,
        "elements": list(infos[0].elements),
        "labels_dir": str(labels_dir),
        "validation_inchikeys": val_ids,
        "training_inchikeys": train_ids,
        "training_elements": train_elements,
        "training_ring_systems": training_ring_systems(sorted(set(tr_rows[K.SMILES]))),
        "max_heavy_atoms_in_data": max(
            (sum(1 for z in nums if int(z) > 1) for nums in tr_rows[K.NUMBERS]), default=0
        ),
        "ring_system_notes": "ring atoms + ring bonds, real elements, aromaticity kept; "
        "H, charges, substituents dropped (densnet_core.ood)",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "calibration": {},
    }
    if calibrate and val_ids and len(infos) > 1:
        ens = load_ensemble_from(out_dir, dirs, manifest, device=device)
        val = load_labelled_set(labels_dir, level=level, mol_ids=val_ids, elements=ens.elements)
        raw = calibrate_ensemble(ens, val, batch_size=batch_size, calibrated=False)
        scale = {
            "dipole_debye_std": _fit_scale(raw["err_dipole_debye"], raw["std_dipole_debye"])
            if fit_scale
            else 1.0,
            "alpha_iso_au_std": _fit_scale(raw["err_alpha_iso_au"], raw["std_alpha_iso_au"])
            if fit_scale
            else 1.0,
        }
        ens.calibration = {"scale": scale}
        sd, sa = ens.scales
        thresholds = ood_thresholds(
            {
                "dipole_debye": raw["std_dipole_debye"] * sd,
                "alpha_iso_au": raw["std_alpha_iso_au"] * sa,
            },
            quantile=ood_quantile,
        )
        cal: dict[str, Any] = {
            "rule": "sigma_reported = scale * std over members (ddof 1); scale = sqrt(mean("
            "err^2/std^2)) on the validation molecules; OOD if sigma_reported > the "
            f"{ood_quantile:.2f} quantile of the validation sigma_reported",
            "scale": scale,
            "ood_quantile": ood_quantile,
            "ood_thresholds": thresholds,
            "validation": raw["metrics"],
            "validation_scaled_coverage2": {
                "dipole_debye": _cov(raw["err_dipole_debye"], raw["std_dipole_debye"] * sd),
                "alpha_iso_au": _cov(raw["err_alpha_iso_au"], raw["std_alpha_iso_au"] * sa),
            },
        }
        plot_sets = {"validation (σ scaled)": _scaled(raw, sd, sa)}
        for name, store in (extra_labels or {}).items():
            try:
                held = load_labelled_set(
                    store, level=level, exclude_mol_ids=train_ids, elements=ens.elements
                )
            except ValueError as exc:  # NoUsableLabelsError is a ValueError
                cal.setdefault("extra", {})[name] = {"error": str(exc)}
                continue
            if len(held) == 0:
                cal.setdefault("extra", {})[name] = {"n": 0.0}
                continue
            res = calibrate_ensemble(ens, held, batch_size=batch_size, calibrated=True)
            cal.setdefault("extra", {})[name] = {"labels_dir": str(store), **res["metrics"]}
            plot_sets[f"{name} (σ scaled)"] = res
        if plot:
            calibration_plot(
                out_dir / PLOT_FILE, plot_sets, title=f"ensemble {manifest['ensemble_id']}"
            )
            cal["plot"] = PLOT_FILE
        manifest["calibration"] = cal
    manifest = _jsonable(manifest)
    with atomic_file(out_dir / MANIFEST_FILE) as fh:
        fh.write((json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _cov(err: np.ndarray, std: np.ndarray) -> float:
    from densnet_core.calibration import coverage

    return coverage(err, std, 2.0)


def _scaled(raw: Mapping[str, Any], sd: float, sa: float) -> dict[str, Any]:
    return {
        "err_dipole_debye": raw["err_dipole_debye"],
        "std_dipole_debye": raw["std_dipole_debye"] * sd,
        "err_alpha_iso_au": raw["err_alpha_iso_au"],
        "std_alpha_iso_au": raw["std_alpha_iso_au"] * sa,
    }


def load_ensemble_from(
    out_dir: Path, dirs: Sequence[Path], manifest: Mapping[str, Any], *, device: str = "cpu"
) -> Ensemble:
    """An :class:`Ensemble` of explicit member directories (before the manifest is written)."""
    from densnet_core.modelio import load_model

    loaded = [load_model(d, device=device) for d in dirs]
    return Ensemble([m for m, _ in loaded], [i for _, i in loaded], manifest)


@dataclass
class EnsembleResult:
    """Outcome of :func:`train_ensemble`: ``out_dir``, the member summaries, the manifest."""

    out_dir: Path
    members: list[dict[str, Any]]
    manifest: dict[str, Any] = field(default_factory=dict)


def train_ensemble(
    labels_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    members: int = 5,
    bootstrap: bool = True,
    seed: int = 0,
    calibrate: bool = True,
    extra_labels: Mapping[str, str | os.PathLike[str]] | None = None,
    on_member: Callable[[dict[str, Any]], None] | None = None,
    **train_kwargs: Any,
) -> EnsembleResult:
    """Train K members one after the other (resumable), then write the calibrated manifest.

    Parameters
    ----------
    labels_dir
        Label store.
    out_dir
        Ensemble directory (``member-XX/``, ``ensemble.json``, ``calibration.png``).
    members
        K.
    bootstrap
        Bootstrap the training molecules per member.
    seed
        Base seed (member k: ``seed + k``; the validation split: ``seed``).
    calibrate
        Calibrate on the shared validation molecules (:func:`write_manifest`).
    extra_labels
        More held-out label stores for the calibration report.
    on_member
        Called with each member's summary (:func:`train_member`) when it is done.
    **train_kwargs
        Keyword arguments of :func:`densnet_core.train.train` (epochs, preset, level,
        val_fraction, device, ...).

    Returns
    -------
    EnsembleResult
    """
    out = []
    for spec in member_specs(members, seed=seed, bootstrap=bootstrap):
        summary = train_member(labels_dir, out_dir, spec, **train_kwargs)
        out.append(summary)
        if on_member is not None:
            on_member(summary)
    manifest = write_manifest(
        labels_dir,
        out_dir,
        members=members,
        calibrate=calibrate,
        extra_labels=extra_labels,
        device=str(train_kwargs.get("device", "cpu")),
    )
    return EnsembleResult(out_dir=Path(out_dir), members=out, manifest=manifest)
