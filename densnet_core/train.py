"""Training loop for the density model: AdamW + warm-up/cosine schedule, EMA, early stopping.

:func:`train` reads a label store, builds a model (or fine-tunes one, ``init=MODEL_DIR``),
trains it, and writes a model directory (:mod:`densnet_core.modelio`) holding the best EMA
weights by validation loss, plus ``<out_dir>/checkpoint/checkpoint.pt`` after every epoch.

Choices
-------
* Loss: Coulomb-metric density and response errors (+ optional observable terms), see
  :mod:`densnet_core.losses`.
* Optimiser: AdamW; learning rate: linear warm-up over the first ~5 % of the steps (at most one
  epoch), then cosine decay to 2 % of ``lr`` at the last planned step (``epochs`` x steps per
  epoch). Gradient-norm clipping (``grad_clip``). float32 throughout.
* EMA of the weights with decay ``min(ema_decay, (1 + n) / (10 + n))`` after n updates
  (the usual warm-up); validation, model selection and the saved model use the EMA weights.
* Early stopping: ``patience`` epochs without a lower validation loss. Without validation
  molecules (a single-molecule store) the EMA training loss is used instead.
* Reproducibility: python/numpy/torch seeds from ``seed``; the batch order of epoch e is a
  permutation drawn from ``numpy.random.default_rng([seed, e])``, so it does not depend on
  what ran before — a resumed run visits exactly the batches the uninterrupted one would have.
* Checkpoints: ``torch.save`` of plain tensors, numbers, strings, lists and dicts only (model,
  EMA, optimizer and scheduler state dicts, epoch, best metric, early-stopping counter,
  history, RNG states, run settings); read back with ``torch.load(weights_only=True)``, never
  unpickling objects. Written atomically (tmp + ``os.replace``). ``train`` on an ``out_dir``
  holding a checkpoint resumes after its last finished epoch (the model config and level of
  theory must match; the number of epochs may be raised — the cosine horizon then follows the
  new ``epochs``). A resumed run reproduces the uninterrupted one to float round-off.
* Fine-tuning (``init=MODEL_DIR``): architecture and weights come from that model (``preset``
  is ignored); its aux basis must be the level's, and every element of the labels must be
  covered by it — a missing element is an error (new heads would start untrained while the
  rest of the network is already fitted; train from scratch instead).
* Devices: ``device="cuda"`` moves the model and every batch; if CUDA is not available a
  clear ``RuntimeError`` is raised before any work.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densnet_core import keys as K
from densnet_core.dataset import (
    NoUsableLabelsError,
    Sample,
    is_inchikey,
    load_label_rows,
    make_samples,
    split_by_molecule,
    training_data_hash,
)
from densnet_core.level import DEFAULT_LEVEL, LevelOfTheory
from densnet_core.losses import (
    DEFAULT_LOSS_WEIGHTS,
    METRIC_NAMES,
    coulomb_norm2,
    loss_terms,
    make_batch,
    nan_mean,
    observable_errors,
    prior_prediction,
)
from densnet_core.modelio import (
    ModelInfo,
    load_model,
    read_model_info,
    resolve_device,
    save_model,
)
from densnet_core.store import atomic_file

__all__ = [
    "CHECKPOINT_FILE",
    "EMA",
    "EpochReport",
    "TrainResult",
    "bootstrap_by_molecule",
    "evaluate",
    "infer_level",
    "load_checkpoint",
    "train",
]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = Path("checkpoint") / "checkpoint.pt"
LEVEL_FILE = "level.json"
_MIN_LR_FACTOR = 0.02


# ------------------------------------------------------------------------------------------
# Small pieces
# ------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of a model's parameters (buffers are copied).

    Parameters
    ----------
    model
        The model being trained; a deep copy holds the averages (``self.module``).
    decay
        Asymptotic decay; the effective decay after n updates is min(decay, (1+n)/(10+n)).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.n_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Blend the current weights of ``model`` into the averages."""
        d = min(self.decay, (1.0 + self.n_updates) / (10.0 + self.n_updates))
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)
        self.n_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """Plain state: the averaged weights and the update count."""
        return {"module": self.module.state_dict(), "n_updates": int(self.n_updates)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.module.load_state_dict(state["module"])
        self.n_updates = int(state["n_updates"])


@dataclass
class EpochReport:
    """One line of training progress (handed to the ``progress`` callback).

    Attributes
    ----------
    epoch, epochs
        Finished epoch (1-based) and planned total.
    train_loss
        Mean training loss over the epoch (running weights).
    val_loss
        Validation loss of the EMA weights (NaN without validation molecules).
    val_dipole_mae_debye, val_alpha_mape_pct
        Validation dipole MAE (D) and isotropic-polarizability MAPE (%), EMA weights.
    lr
        Learning rate at the end of the epoch.
    seconds
        Wall time of the epoch (training + validation), s.
    improved
        Whether this epoch set a new best (the model directory was rewritten).
    """

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_dipole_mae_debye: float
    val_alpha_mape_pct: float
    lr: float
    seconds: float
    improved: bool


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    model_dir
        The model directory (best EMA weights).
    info
        Its :class:`~densnet_core.modelio.ModelInfo`.
    best_epoch
        Epoch of the best validation loss.
    epochs_run
        Last finished epoch.
    stopped
        "completed", "early_stopping" or "time_limit".
    resumed_from
        Epoch of the checkpoint the run resumed from (0 for a fresh run).
    metrics
        ``{"train": {"model": {...}, "prior": {...}}, "validation": {...}}``.
    history
        One dict per epoch (the :class:`EpochReport` fields).
    """

    model_dir: Path
    info: ModelInfo
    best_epoch: int
    epochs_run: int
    stopped: str
    resumed_from: int
    metrics: dict[str, dict[str, dict[str, float]]]
    history: list[dict[str, Any]] = field(default_factory=list)


def infer_level(labels_dir: str | os.PathLike[str]) -> LevelOfTheory:
    """The level of theory of a label store.

    ``<labels_dir>/level.json`` (the LevelOfTheory fields) if present; otherwise the default
    level if the store holds labels of it.

    Raises
    ------
    NoUsableLabelsError
        If neither applies (the message lists the levels found).
    """
    labels_dir = Path(labels_dir)
    path = labels_dir / LEVEL_FILE
    if path.is_file():
        return LevelOfTheory(**json.loads(path.read_text()))
    from densnet_core.store import read_dataset

    if not labels_dir.is_dir():
        raise NoUsableLabelsError(f"label folder {labels_dir} does not exist")
    df = read_dataset(labels_dir, "labels")
    ok = df[df[K.STATUS] == K.STATUS_OK] if not df.empty else df
    if ok.empty:
        raise NoUsableLabelsError(f"{labels_dir} holds no status='ok' labels ({len(df)} rows)")
    if ok[K.LEVEL_HASH].isin([v.hash for v in DEFAULT_LEVEL.variants()]).any():
        return DEFAULT_LEVEL
    found = ok.groupby([K.LEVEL_OF_THEORY, K.LEVEL_HASH]).size().to_dict()
    raise NoUsableLabelsError(
        f"{labels_dir}: labels are not at the default level ({DEFAULT_LEVEL.label}); found "
        f"{found}. Give the level of theory (a {LEVEL_FILE} in the label folder, or --level)."
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - the legacy global state others may use
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), np_state[1].tolist(), *map(float, np_state[2:])],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys_arr = np.asarray(keys, dtype=np.uint32)
    np.random.set_state((kind, keys_arr, int(pos), int(has_gauss), cached))  # noqa: NPY002
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def _lr_lambda(total_steps: int) -> Callable[[int], float]:
    warmup = max(1, min(total_steps // 20, 200))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return _MIN_LR_FACTOR + (1.0 - _MIN_LR_FACTOR) * 0.5 * (1.0 + math.cos(math.pi * t))

    return f


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_file(path) as fh:
        torch.save(obj, fh)


def load_checkpoint(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checkpoint of a training folder (``torch.load(weights_only=True)``), or None."""
    path = Path(out_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _batches(idx: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(idx[i : i + batch_size]) for i in range(0, len(idx), batch_size)]


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    *,
    level: LevelOfTheory,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    loss_weights: Mapping[str, float] | None = None,
    grid_samples: int = 0,
    grid_level: int = 2,
) -> dict[str, dict[str, float]]:
    """Metrics of a model and of the SAD prior on a set of conformers.

    Parameters
    ----------
    model
        Density model (evaluated in eval mode, no gradients).
    samples
        Conformers to evaluate.
    level
        Level of theory (aux basis for the real-space metric).
    batch_size, device
        Evaluation batches.
    loss_weights
        Loss weights (for the ``loss`` entry).
    grid_samples
        Evaluate the real-space density NMAE on this many conformers (evenly spaced through
        ``samples``); 0 skips it (NaN).
    grid_level
        PySCF grid level of the real-space metric.

    Returns
    -------
    dict
        ``{"model": {...}, "prior": {...}}`` with the entries of
        :data:`densnet_core.losses.METRIC_NAMES` (means over conformers; NaN when not
        computed; the prior's alpha errors are those of alpha = 0).
    """
    was_training = model.training
    model.eval()
    n = len(samples)
    grid_idx = (
        set(np.linspace(0, n - 1, min(grid_samples, n)).round().astype(int).tolist())
        if grid_samples > 0 and n
        else set()
    )
    acc: dict[str, dict[str, list[float]]] = {"model": {}, "prior": {}}

    def add(who: str, key: str, values: Any) -> None:
        acc[who].setdefault(key, []).extend(np.atleast_1d(np.asarray(values, float)).tolist())

    for start in range(0, n, batch_size):
        chunk = list(samples[start : start + batch_size])
        batch = make_batch(model, chunk, device=device)
        pred = model(batch)
        prior = prior_prediction(batch)
        zeros_r = torch.zeros_like(batch["target_response"])
        prior_full = {
            **prior,
            "response_coeffs": zeros_r,
            "polarizability_au": torch.zeros_like(batch["target_alpha"]),
        }
        b = len(chunk)
        n_e = batch["n_electrons_ref"]
        for who, out in (("model", pred), ("prior", prior_full)):
            terms = loss_terms(out, batch, loss_weights)
            add(who, "loss", [float(terms["total"])] * b)
            delta = out["density_coeffs"] - batch["target_density"]
            dens = coulomb_norm2(delta, batch["metrics"], batch["coef_slices"]) / n_e
            add(who, "density_coulomb", dens.cpu().numpy())
            if "response_coeffs" in out:
                d_r = out["response_coeffs"] - batch["target_response"]
                r = coulomb_norm2(d_r, batch["metrics"], batch["coef_slices"]).sum(0) / n_e
                r = torch.where(batch["has_alpha"], r, torch.full_like(r, float("nan")))
                add(who, "response_coulomb", r.cpu().numpy())
            alpha = out.get("polarizability_au")
            errs = observable_errors(
                out["dipole_au"].double().cpu().numpy(),
                np.stack([s.dipole_au for s in chunk]),
                None if alpha is None else alpha.double().cpu().numpy(),
                _alpha_refs(chunk),
            )
            add(who, "dipole_mae_debye", errs["dipole_err_debye"])
            add(who, "alpha_iso_mae_au", errs["alpha_iso_abs"])
            add(who, "alpha_iso_mape_pct", errs["alpha_iso_pct"])
            add(who, "alpha_aniso_mae_au", errs["alpha_aniso_abs"])
        for k, s in enumerate(chunk):
            if start + k not in grid_idx:
                continue
            a, e = batch["coef_slices"][k]
            coeffs = np.stack(
                [
                    pred["density_coeffs"][a:e].double().cpu().numpy(),
                    prior["density_coeffs"][a:e].double().cpu().numpy(),
                    s.density,
                ]
            )
            nm_model, nm_prior = _grid_nmae(s, coeffs, level=level, grid_level=grid_level)
            add("model", "density_nmae_pct", nm_model)
            add("prior", "density_nmae_pct", nm_prior)
    model.train(was_training)
    out: dict[str, dict[str, float]] = {}
    for who in ("model", "prior"):
        out[who] = {key: nan_mean(acc[who].get(key, [])) for key in METRIC_NAMES}
        out[who]["n_conformers"] = float(n)
    return out


def _alpha_refs(samples: Sequence[Sample]) -> np.ndarray:
    """(B, 3, 3) label polarizabilities, bohr^3; NaN for labels without one (skipped in means)."""
    nan = np.full((3, 3), np.nan)
    return np.stack([nan if s.polarizability_au is None else s.polarizability_au for s in samples])


def _grid_nmae(
    sample: Sample, coeffs_e3nn: np.ndarray, *, level: LevelOfTheory, grid_level: int
) -> tuple[float, float]:
    """100 ∫|rho_x - rho_label| / N_e for x = model, prior; coeffs rows (model, prior, label)."""
    from densnet_core.basis import to_pyscf
    from densnet_core.dataset import _auxmol
    from densnet_core.grids import fitted_density_on_grid, molecular_grid

    numbers = sample.inputs.numbers.tolist()
    aux = level.fit_auxbasis
    auxmol = _auxmol(
        numbers,
        sample.inputs.positions_bohr,
        round(sample.inputs.charge),
        sample.multiplicity,
        aux,
    )
    coords, weights = molecular_grid(auxmol, grid_level)
    rho = fitted_density_on_grid(auxmol, to_pyscf(coeffs_e3nn, numbers, aux), coords)
    ne = sample.n_electrons
    return (
        100.0 * float(weights @ np.abs(rho[0] - rho[2])) / ne,
        100.0 * float(weights @ np.abs(rho[1] - rho[2])) / ne,
    )


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------
def _zero_heads(model: torch.nn.Module) -> None:
    """Start a new model at the SAD prior: zero the per-element density and response heads.

    The heads are the last (linear) layers, so the Δ on top of the prior and the response are
    exactly zero at step 0 and the network's features still get gradients from step 1 on. A
    randomly initialised head instead starts ~100x further from the labels than the prior
    (dipole errors of tens of debye) and spends its first epochs undoing that.
    """
    with torch.no_grad():
        for heads in (getattr(model, "heads", {}), getattr(model, "response_heads", {})):
            for head in heads.values():
                for p in head.parameters():
                    p.zero_()


def bootstrap_by_molecule(
    mol_ids: Sequence[str], train_idx: Sequence[int], *, seed: int
) -> list[int]:
    """A bootstrap resample of the training samples, drawn by molecule (not by conformer).

    The n training molecules (sorted ids) are drawn n times with replacement
    (``numpy.random.default_rng([seed, 0xB007])``); every conformer of a molecule drawn c
    times appears c times in the result (so it weighs c times in every epoch), a molecule
    never drawn (~37 %) is left out.

    Parameters
    ----------
    mol_ids
        (S,) molecule id of every sample.
    train_idx
        Indices of the training samples (from :func:`densnet_core.dataset.split_by_molecule`).
    seed
        Seed of the draw.

    Returns
    -------
    list[int]
        Sample indices, sorted, with repeats.
    """
    mols = sorted({mol_ids[i] for i in train_idx})
    if not mols:
        return []
    draw = np.random.default_rng([int(seed), 0xB007]).integers(0, len(mols), size=len(mols))
    counts = np.bincount(draw, minlength=len(mols))
    count_of = dict(zip(mols, counts.tolist(), strict=True))
    return [i for i in sorted(train_idx) for _ in range(count_of[mol_ids[i]])]


def _elements(samples: Sequence[Sample]) -> list[int]:
    return sorted({int(z) for s in samples for z in s.inputs.numbers})


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def train(
    labels_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    level: LevelOfTheory | None = None,
    preset: str = "default",
    device: str = "cpu",
    init: str | os.PathLike[str] | None = None,
    epochs: int = 200,
    batch_size: int = 8,
    lr: float = 2e-3,
    weight_decay: float = 1e-5,
    ema_decay: float = 0.99,
    patience: int = 30,
    seed: int = 0,
    val_fraction: float = 0.1,
    loss_weights: Mapping[str, float] | None = None,
    max_hours: float | None = None,
    grad_clip: float = 10.0,
    grid_samples: int = 32,
    grid_level: int = 2,
    metric_cache_dir: str | os.PathLike[str] | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    split_seed: int | None = None,
    bootstrap_seed: int | None = None,
    validation_mol_ids: Sequence[str] | None = None,
    progress: Callable[[EpochReport], None] | None = None,
    status: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or resume, or fine-tune) a density model on a label store.

    Parameters
    ----------
    labels_dir
        Label store folder (``labels`` part files).
    out_dir
        Model directory to write (``model.safetensors``, ``config.json``,
        ``model_card.json``) and its ``checkpoint/`` folder. A checkpoint there is resumed.
    level
        Level of theory of the labels to use; None = :func:`infer_level`.
    preset
        Architecture preset of a new model (a key of ``densnet_core.model.PRESETS``).
    device
        ``"cpu"`` or ``"cuda[:k]"`` (a clear error if CUDA is unavailable).
    init
        Model directory to fine-tune from (see the module docstring).
    epochs
        Planned number of epochs (the cosine schedule's horizon).
    batch_size
        Conformers per optimisation step.
    lr, weight_decay
        AdamW peak learning rate and decoupled weight decay.
    ema_decay
        Decay of the weight EMA.
    patience
        Early stopping after this many epochs without a better validation loss.
    seed
        Seeds the model initialisation, the split and the batch order.
    val_fraction
        Fraction of the molecules held out for validation (split by ``mol_id``).
    loss_weights
        Loss term weights (:data:`densnet_core.losses.DEFAULT_LOSS_WEIGHTS`).
    max_hours
        Stop (cleanly, with a model) after the epoch during which this wall time is passed.
    grad_clip
        Max gradient norm.
    grid_samples, grid_level
        Real-space NMAE of the final evaluation: number of validation conformers, grid level.
    metric_cache_dir
        Optional folder caching the per-conformer Coulomb metrics (``.npy``).
    model_overrides
        Keyword overrides of the preset (new models only).
    split_seed
        Seed of the train/validation split (None = ``seed``). Ensembles give every member the
        same ``split_seed`` (same validation molecules) and different ``seed``.
    bootstrap_seed
        If given, train on a bootstrap resample of the training molecules
        (:func:`bootstrap_by_molecule`); None (default) = every training conformer once.
    validation_mol_ids
        If given, exactly these molecules (InChIKeys present in the store) are held out for
        validation instead of the hashed ``val_fraction`` split (active learning: keep the
        validation set of the model fine-tuned from, so added molecules always train).
    progress
        Called with an :class:`EpochReport` after every epoch (after the checkpoint is
        written, so an exception raised there leaves a resumable run).
    status
        Called with short status messages (loading, resuming, final evaluation).

    Returns
    -------
    TrainResult

    Raises
    ------
    NoUsableLabelsError
        No ``status == "ok"`` labels of the level in ``labels_dir``.
    RuntimeError
        CUDA requested but unavailable.
    ValueError
        Incompatible ``init`` model or checkpoint.
    """
    from densnet_core.model import DensityModel

    t_start = time.monotonic()
    say = status or (lambda msg: log.info("%s", msg))
    dev = resolve_device(device)
    out_dir = Path(out_dir)
    # the density (and the model) belong to the full level; its variants' labels all count
    level = (level if level is not None else infer_level(labels_dir)).full()
    weights = {**DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}
    if set(weights) - set(DEFAULT_LOSS_WEIGHTS):
        raise KeyError(f"unknown loss terms {sorted(set(weights) - set(DEFAULT_LOSS_WEIGHTS))}")

    rows = load_label_rows(labels_dir, level=level, density_variants=True)
    data_hash = training_data_hash(rows)
    partial = [h != level.hash for h in rows[K.LEVEL_HASH]]
    say(
        f"{len(rows)} labelled conformers at {level.label}"
        + (f" ({sum(partial)} without polarizability or forces)" if any(partial) else "")
        + "; computing Coulomb metrics"
    )
    samples = make_samples(rows, level=level, metric_cache_dir=metric_cache_dir)
    mol_ids = [s.mol_id for s in samples]
    train_idx, val_idx = split_by_molecule(
        mol_ids,
        val_fraction=val_fraction,
        seed=seed if split_seed is None else split_seed,
        validation_mol_ids=validation_mol_ids,
    )
    if bootstrap_seed is not None:
        train_idx = bootstrap_by_molecule(mol_ids, train_idx, seed=bootstrap_seed)
    train_s = [samples[i] for i in train_idx]
    val_s = [samples[i] for i in val_idx]
    elements = _elements(samples)

    _seed_everything(seed)
    if init is not None:
        model, init_info = load_model(init, device="cpu")
        if init_info.aux_basis != level.fit_auxbasis:
            raise ValueError(
                f"--init model predicts {init_info.aux_basis} coefficients; the labels are "
                f"fitted in {level.fit_auxbasis}"
            )
        missing = sorted(set(elements) - set(init_info.elements))
        if missing:
            raise ValueError(
                f"--init model {init_info.model_id} does not cover elements {missing} present "
                f"in the labels (it covers {list(init_info.elements)}); train from scratch"
            )
        if init_info.level.hash != level.hash:
            log.warning(
                "fine-tuning a model trained at %s on labels at %s",
                init_info.level.label,
                level.label,
            )
        model.train()
    else:
        model = DensityModel.for_aux_basis(
            level.fit_auxbasis, elements, preset=preset, **dict(model_overrides or {})
        )
        _zero_heads(model)
    model = model.float().to(dev)
    ema = EMA(model, ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_s) / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(epochs * steps_per_epoch))

    run_config = _jsonable(
        {
            "labels_dir": str(labels_dir),
            "level_of_theory": level.model_dump(),
            "model_config": model.config,
            "preset": None if init is not None else preset,
            "init": str(init) if init is not None else None,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "ema_decay": ema_decay,
            "patience": patience,
            "seed": seed,
            "val_fraction": val_fraction,
            "loss_weights": weights,
            "grad_clip": grad_clip,
            # recorded only when set, so default runs keep their settings unchanged
            **({"split_seed": split_seed} if split_seed is not None else {}),
            **({"bootstrap_seed": bootstrap_seed} if bootstrap_seed is not None else {}),
            **(
                {"validation_mol_ids": sorted(validation_mol_ids)}
                if validation_mol_ids is not None
                else {}
            ),
        }
    )
    best_loss, best_epoch, bad_epochs, start_epoch = math.inf, 0, 0, 1
    history: list[dict[str, Any]] = []
    resumed_from = 0
    ck = load_checkpoint(out_dir)
    if ck is not None:
        if ck["run_config"]["model_config"] != run_config["model_config"]:
            raise ValueError(
                f"{out_dir / CHECKPOINT_FILE} belongs to a different model configuration; "
                "use a new output folder (or delete the checkpoint to start over)"
            )
        if ck["run_config"]["level_of_theory"] != run_config["level_of_theory"]:
            raise ValueError(f"{out_dir / CHECKPOINT_FILE} was trained at another level")
        if ck.get("data_hash") != data_hash:
            log.warning("the label store changed since the checkpoint; continuing on new data")
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        best_loss, best_epoch = float(ck["best_val_loss"]), int(ck["best_epoch"])
        bad_epochs = int(ck["bad_epochs"])
        history = list(ck["history"])
        resumed_from = int(ck["epoch"])
        start_epoch = resumed_from + 1
        say(f"resuming from the checkpoint after epoch {resumed_from} (best {best_epoch})")

    card_base = _card_base(
        level=level,
        samples=samples,
        train_s=train_s,
        val_s=val_s,
        data_hash=data_hash,
        run_config=run_config,
        smiles_by_mol=dict(zip(rows[K.MOL_ID], rows[K.SMILES], strict=True)),
    )
    stopped = "completed"
    epoch = start_epoch - 1
    if bad_epochs >= patience:
        stopped = "early_stopping"
    for epoch in range(start_epoch, epochs + 1):
        if bad_epochs >= patience:
            stopped = "early_stopping"
            break
        t0 = time.monotonic()
        order = np.random.default_rng([seed, epoch]).permutation(np.asarray(train_idx))
        pos = {i: k for k, i in enumerate(train_idx)}
        model.train()
        tot, cnt = 0.0, 0
        for chunk in _batches(order.tolist(), batch_size):
            batch = make_batch(model, [train_s[pos[i]] for i in chunk], device=dev)
            pred = model(batch)
            terms = loss_terms(pred, batch, weights)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            ema.update(model)
            tot += float(terms["total"].detach()) * len(chunk)
            cnt += len(chunk)
        train_loss = tot / max(cnt, 1)
        eval_set = val_s if val_s else train_s
        ev = evaluate(
            ema.module, eval_set, level=level, batch_size=2 * batch_size, device=dev,
            loss_weights=weights,
        )["model"]  # fmt: skip
        val_loss = ev["loss"]
        improved = val_loss < best_loss
        if improved:
            best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
            save_model(
                ema.module,
                out_dir,
                level=level,
                card={**card_base, "best_epoch": epoch, "status": "training", "val_loss": val_loss},
            )
        else:
            bad_epochs += 1
        report = EpochReport(
            epoch=epoch,
            epochs=epochs,
            train_loss=train_loss,
            val_loss=val_loss if val_s else math.nan,
            val_dipole_mae_debye=ev["dipole_mae_debye"] if val_s else math.nan,
            val_alpha_mape_pct=ev["alpha_iso_mape_pct"] if val_s else math.nan,
            lr=float(sched.get_last_lr()[0]),
            seconds=time.monotonic() - t0,
            improved=improved,
        )
        history.append(asdict(report))
        _atomic_torch_save(
            {
                "format": "densnet-train-checkpoint",
                "epoch": epoch,
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "best_val_loss": float(best_loss),
                "best_epoch": int(best_epoch),
                "bad_epochs": int(bad_epochs),
                "history": history,
                "rng": _rng_state(),
                "run_config": run_config,
                "data_hash": data_hash,
            },
            out_dir / CHECKPOINT_FILE,
        )
        if progress is not None:
            progress(report)
        if bad_epochs >= patience:
            stopped = "early_stopping"
            break
        if max_hours is not None and time.monotonic() - t_start > max_hours * 3600.0:
            stopped = "time_limit"
            break

    if best_epoch == 0:  # no epoch ran (epochs == 0): save the untrained EMA
        save_model(ema.module, out_dir, level=level, card={**card_base, "best_epoch": 0})
    say("final evaluation of the best weights (validation density on grids)")
    best, _ = load_model(out_dir, device=str(dev))
    train_unique = list({s.conformer_key: s for s in train_s}.values())  # bootstrap repeats
    metrics = {
        "train": evaluate(
            best, train_unique, level=level, batch_size=2 * batch_size, device=dev,
            loss_weights=weights,
        ),
        "validation": evaluate(
            best, val_s, level=level, batch_size=2 * batch_size, device=dev,
            loss_weights=weights, grid_samples=grid_samples, grid_level=grid_level,
        ) if val_s else {},
    }  # fmt: skip
    info = save_model(
        best,
        out_dir,
        level=level,
        card={
            **card_base,
            "best_epoch": best_epoch,
            "epochs_run": epoch if history else 0,
            "stopped": stopped,
            "status": "final",
            "metrics": _jsonable(metrics),
            "metric_notes": {
                "density_coulomb": "mean (drho|drho)/N_e vs the label fit, Eh per electron",
                "response_coulomb": "mean sum_j (drho_j|drho_j)/N_e, per unit field",
                "density_nmae_pct": f"100 int|rho - rho_label| / N_e on a grid (level "
                f"{grid_level}) for <= {grid_samples} validation conformers",
                "dipole_mae_debye": "mean |mu_pred - mu_label| (vector error), D",
                "alpha_iso_mape_pct": "prior: no response, alpha = 0 -> 100 %",
                "alpha_aniso_mae_au": "mean |Δα_pred - Δα_label|, Δα = sqrt(((xx-yy)^2 + "
                "(yy-zz)^2 + (zz-xx)^2 + 6(xy^2+yz^2+zx^2)) / 2)",
            },
        },
    )
    return TrainResult(
        model_dir=out_dir,
        info=info,
        best_epoch=best_epoch,
        epochs_run=epoch if history else 0,
        stopped=stopped,
        resumed_from=resumed_from,
        metrics=metrics,
        history=history,
    )


def _card_base(
    *,
    level: LevelOfTheory,
    samples: Sequence[Sample],
    train_s: Sequence[Sample],
    val_s: Sequence[Sample],
    data_hash: str,
    run_config: Mapping[str, Any],
    smiles_by_mol: Mapping[str, str],
) -> dict[str, Any]:
    from densnet_core.ood import training_ring_systems

    train_mols = sorted({s.mol_id for s in train_s})
    return {
        "level_of_theory_fields": level.model_dump(),
        "training_data_sha1": data_hash,
        "n_train_molecules": len(train_mols),
        "n_train_conformers": len({s.conformer_key for s in train_s}),
        "n_val_molecules": len({s.mol_id for s in val_s}),
        "n_val_conformers": len(val_s),
        "n_train_conformers_without_alpha": len(
            {s.conformer_key for s in train_s if s.polarizability_au is None}
        ),
        "elements_in_data": _elements(samples),
        # what the model has seen: predict refuses other charges and multiplicities
        "charges_in_data": sorted({round(float(s.inputs.charge)) for s in samples}),
        "multiplicities_in_data": sorted({int(s.multiplicity) for s in samples}),
        # the training domain, for the out-of-distribution checks of densnet_core.ood
        "training_elements": _elements(train_s),
        "training_ring_systems": training_ring_systems(
            sorted({smiles_by_mol[m] for m in train_mols if smiles_by_mol.get(m)})
        ),
        "max_heavy_atoms_in_data": max(
            (int(np.count_nonzero(np.asarray(s.inputs.numbers) > 1)) for s in train_s),
            default=0,
        ),
        "training_inchikeys": [m for m in train_mols if is_inchikey(m)],
        "validation_inchikeys": sorted({s.mol_id for s in val_s if is_inchikey(s.mol_id)}),
        "training_settings": dict(run_config),
    }


def describe_model_dir(model_dir: str | os.PathLike[str]) -> ModelInfo:
    """Alias of :func:`densnet_core.modelio.read_model_info` (for the CLI summary)."""
    return read_model_info(model_dir)
