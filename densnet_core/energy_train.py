"""Training the density -> energy model on PySCF energies and forces; MD model directories.

Stages (:func:`train_md_model`)
-------------------------------
1. **Density model.** Either given (``density_init``: a density model directory, e.g. the
   default screening model fine-tuned elsewhere) or trained here on the labels' fitted densities
   (Coulomb-metric loss of :mod:`densnet_core.losses`; no response term when the labels carry
   no response, i.e. labels made with ``LevelOfTheory(polarizability=False)``, and the model
   is then built without response heads).
2. **Energy model, density frozen** ("staged"): loss on energies and forces, forces = -dE/dR
   through both networks (the density model's weights are frozen, but positions still flow
   through it). Per-element reference energies by least squares, energy scale = RMS force.
3. Optionally **joint** fine-tuning (``joint_epochs``): both networks trained on energies and
   forces plus the density term (weight ``joint_density_weight``), so the density stays a
   density. ``benchmarks/md.py`` compares the validation errors of the staged and joint models.

Loss (per batch): ``energy_weight * mean_mol ((E_pred - E) / N_atoms)^2 + force_weight *
mean_atoms,xyz (F_pred - F)^2`` with energies in kcal/mol and forces in kcal/mol/Å (O(1) numbers;
conversion only inside the loss). Optimiser AdamW, cosine learning rate, best validation
weights kept (validation loss = the same loss on the held-out configurations).

Hold-out: one molecule's configurations are split *by configuration* (deterministic:
sha1(seed:conformer_key)); with several molecules the split is still by configuration, as the
energy model is trained per molecule set for MD.

MD model directory (``save_md_model`` / ``load_md_model``)
----------------------------------------------------------
``density/``
    A density model directory (:mod:`densnet_core.modelio`: ``model.safetensors``,
    ``config.json``, ``model_card.json``).
``energy.safetensors``
    ``EnergyModel.state_dict()`` (weights plus the persistent buffers: SAD prior blocks,
    per-shell input scales, reference energies, energy scale), safetensors only.
``energy_config.json``
    ``{"format": "densnet-energy-model", "format_version": 1, "model": EnergyModel.config,
    "level_of_theory": ...}``.
``model_card.json``
    Metrics on the training and held-out configurations (energy MAE meV and meV/atom, force
    MAE meV/Å, dipole MAE D), data sizes, training settings, ``energy_weights_sha1``.

Weights are only ever read with safetensors (never unpickled); the card's sha1 is checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densnet_core import keys as K
from densnet_core.energy_model import ENERGY_PRESETS, DenSNetPotential, EnergyModel, density_level
from densnet_core.graph import MoleculeInput
from densnet_core.level import LevelOfTheory
from densnet_core.store import atomic_file
from densnet_core.units import (
    ANGSTROM_PER_BOHR,
    BOHR_PER_ANGSTROM,
    DEBYE_PER_AU,
    EV_PER_HARTREE,
    KCAL_PER_MOL_PER_HARTREE,
)

__all__ = [
    "ENERGY_CONFIG_FILE",
    "ENERGY_FORMAT",
    "ENERGY_WEIGHTS_FILE",
    "MDSample",
    "evaluate_energy",
    "hill_formula",
    "load_md_model",
    "load_md_samples",
    "save_md_model",
    "split_by_conformer",
    "train_density",
    "train_energy",
    "train_md_model",
]

log = logging.getLogger(__name__)

ENERGY_WEIGHTS_FILE = "energy.safetensors"
ENERGY_CONFIG_FILE = "energy_config.json"
CARD_FILE = "model_card.json"
DENSITY_SUBDIR = "density"
CHECKPOINT_SUBDIR = "checkpoint"
ENERGY_FORMAT = "densnet-energy-model"
ENERGY_FORMAT_VERSION = 1


@dataclass
class MDSample:
    """One labelled configuration for energy/force training.

    Attributes
    ----------
    conformer_key, mol_id
        Identity.
    numbers
        (N,) atomic numbers.
    inputs
        Network input (prior, charge and dipole integrals, e3nn order).
    energy_hartree
        Label total energy, Eh.
    forces_hartree_per_bohr
        (N, 3) label forces, Eh/bohr.
    dipole_au
        (3,) label dipole, e·bohr, about the centre of nuclear charge.
    density
        (M,) label density coefficients, e3nn order.
    metric
        (M, M) float32 Coulomb metric, e3nn order (None until needed for density training).
    """

    conformer_key: str
    mol_id: str
    numbers: np.ndarray
    inputs: MoleculeInput
    energy_hartree: float
    forces_hartree_per_bohr: np.ndarray
    dipole_au: np.ndarray
    density: np.ndarray
    metric: np.ndarray | None = field(default=None, repr=False)
    response: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_atoms(self) -> int:
        """N."""
        return int(self.numbers.shape[0])


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
def load_md_samples(
    labels_dir: str | os.PathLike[str],
    *,
    level: LevelOfTheory,
    with_metric: bool = False,
    metric_cache_dir: str | os.PathLike[str] | None = None,
) -> list[MDSample]:
    """Usable labels (``status == "ok"``, the level's hash) as :class:`MDSample` objects.

    Parameters
    ----------
    labels_dir
        Label dataset folder.
    level
        Level of theory of the labels (with or without polarizability).
    with_metric
        Also compute the Coulomb metrics (needed to train the density model).
    metric_cache_dir
        Optional ``.npy`` cache folder of the metrics.
    """
    from densnet_core.basis import to_e3nn
    from densnet_core.dataset import _metric, load_label_rows
    from densnet_core.featurize import get_featurizer

    rows = load_label_rows(labels_dir, level=level)
    feat = get_featurizer(density_level(level))
    aux = level.fit_auxbasis
    cache = Path(metric_cache_dir) if metric_cache_dir is not None else None
    out: list[MDSample] = []
    for row in rows.itertuples(index=False):
        r = row._asdict()
        numbers = np.asarray([int(z) for z in r[K.NUMBERS]], dtype=np.int64)
        pos_a = np.stack([np.asarray(p, dtype=np.float64) for p in r[K.POSITIONS_ANGSTROM]])
        pos = pos_a * BOHR_PER_ANGSTROM
        inputs = feat(numbers, pos, int(r[K.CHARGE]))
        forces = np.stack([np.asarray(f, dtype=np.float64) for f in r[K.FORCES_HARTREE_PER_BOHR]])
        dens = to_e3nn(np.asarray(r[K.DENSITY_COEFFS], dtype=np.float64), numbers.tolist(), aux)
        resp = r.get(K.RESPONSE_COEFFS)
        response = None
        if resp is not None and len(resp):
            m = dens.shape[0]
            response = to_e3nn(np.asarray(resp, dtype=np.float64).reshape(3, m), numbers, aux)
        metric = None
        if with_metric:
            metric = _metric(
                numbers.tolist(),
                pos,
                int(r[K.CHARGE]),
                int(r[K.MULTIPLICITY]),
                aux,
                str(r[K.CONFORMER_KEY]),
                cache,
            )
        out.append(
            MDSample(
                conformer_key=str(r[K.CONFORMER_KEY]),
                mol_id=str(r[K.MOL_ID]),
                numbers=numbers,
                inputs=inputs,
                energy_hartree=float(r[K.ENERGY_HARTREE]),
                forces_hartree_per_bohr=forces,
                dipole_au=np.asarray(r[K.DIPOLE_AU], dtype=np.float64).reshape(3),
                density=dens,
                metric=metric,
                response=response,
            )
        )
    return out


def hill_formula(numbers: Sequence[int]) -> str:
    """Hill formula of a molecule with atomic numbers ``numbers`` (ASE's), e.g. ``C2H6O``; the
    form of a model card's ``training_formulas``."""
    from ase import Atoms

    return Atoms(numbers=[int(z) for z in numbers]).get_chemical_formula()


def split_by_conformer(
    keys: Sequence[str], *, val_fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split of configurations (sha1(seed:key) order).

    Returns
    -------
    train, val
        Sample indices (sorted); at least one of each when there are >= 2 samples and
        ``val_fraction > 0``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = sorted(
        range(len(keys)), key=lambda i: hashlib.sha1(f"{seed}:{keys[i]}".encode()).hexdigest()
    )
    n_val = round(val_fraction * len(keys))
    if val_fraction > 0 and len(keys) >= 2:
        n_val = min(max(n_val, 1), len(keys) - 1)
    else:
        n_val = 0
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return train, val


def _batch(potential: DenSNetPotential, samples: Sequence[MDSample]) -> dict[str, Any]:
    batch: dict[str, Any] = potential.collate([s.inputs for s in samples])
    p = batch["positions_bohr"]
    batch["target_energy"] = torch.tensor(
        [s.energy_hartree for s in samples], dtype=torch.float64, device=p.device
    )
    batch["target_forces"] = torch.as_tensor(
        np.concatenate([s.forces_hartree_per_bohr for s in samples]), dtype=p.dtype, device=p.device
    )
    batch["n_atoms"] = torch.tensor(
        [s.n_atoms for s in samples], dtype=torch.float64, device=p.device
    )
    return batch


# ------------------------------------------------------------------------------------------
# Density stage
# ------------------------------------------------------------------------------------------
def _density_batch(model: Any, samples: Sequence[MDSample], device: Any) -> dict[str, Any]:
    batch: dict[str, Any] = model.collate([s.inputs for s in samples], device=device)
    dtype = batch["positions_bohr"].dtype
    batch["target_density"] = torch.as_tensor(
        np.concatenate([s.density for s in samples]), dtype=dtype, device=device
    )
    if all(s.response is not None for s in samples):
        batch["target_response"] = torch.as_tensor(
            np.concatenate([s.response for s in samples], axis=1), dtype=dtype, device=device
        )
    batch["metrics"] = [torch.as_tensor(s.metric, device=device).to(dtype) for s in samples]
    batch["target_dipole"] = torch.as_tensor(
        np.stack([s.dipole_au for s in samples]), dtype=dtype, device=device
    )
    slices, start = [], 0
    for s in samples:
        slices.append((start, start + s.density.shape[0]))
        start += s.density.shape[0]
    batch["coef_slices"] = slices
    return batch


def _density_loss(
    pred: Mapping[str, torch.Tensor], batch: Mapping[str, Any], dipole_weight: float = 0.0
) -> torch.Tensor:
    """Coulomb-metric density (+ response) loss, Eh per electron, plus ``dipole_weight`` times
    the mean squared dipole error against the PySCF label dipole, (e·bohr)^2."""
    from densnet_core.losses import coulomb_norm2

    n_e = batch["n_electrons_ref"]
    delta = pred["density_coeffs"] - batch["target_density"]
    loss = (coulomb_norm2(delta, batch["metrics"], batch["coef_slices"]) / n_e).mean()
    if "response_coeffs" in pred and "target_response" in batch:
        d_r = pred["response_coeffs"] - batch["target_response"]
        loss = (
            loss + (coulomb_norm2(d_r, batch["metrics"], batch["coef_slices"]).sum(0) / n_e).mean()
        )
    if dipole_weight:
        d_mu = pred["dipole_au"] - batch["target_dipole"]
        loss = loss + dipole_weight * d_mu.pow(2).sum(-1).mean()
    return loss


def _cosine(total: int) -> Callable[[int], float]:
    warm = max(1, min(total // 20, 100))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * t))

    return f


def train_density(
    train_s: Sequence[MDSample],
    val_s: Sequence[MDSample],
    *,
    level: LevelOfTheory,
    preset: str = "small",
    epochs: int = 100,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    max_minutes: float | None = None,
    device: str = "cpu",
    model_overrides: Mapping[str, Any] | None = None,
    dipole_weight: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> tuple[Any, dict[str, float]]:
    """Train a density model on the labels' fitted densities (Coulomb-metric loss).

    The model has response heads only when every training sample has a response label.
    ``dipole_weight`` adds the squared dipole error against the PySCF dipoles, (e·bohr)^2
    (the IR intensities of an MD run come from how the dipole changes along the trajectory;
    the density term alone leaves them ~2x off for ethanol's C-H stretches). Early stopping
    and the reported losses use the same weighted loss.

    Returns
    -------
    model
        :class:`~densnet_core.model.DensityModel` (best validation weights), float32, eval.
    metrics
        ``train_/val_density_coulomb`` (mean (drho|drho)/N_e, Eh per electron),
        ``train_/val_dipole_mae_debye`` (vector error, D), ``epochs``.
    """
    import copy

    from densnet_core.model import DensityModel

    torch.manual_seed(seed)
    elements = sorted({int(z) for s in train_s for z in s.numbers})
    response = all(s.response is not None for s in train_s)
    model = DensityModel.for_aux_basis(
        level.fit_auxbasis,
        elements,
        preset=preset,
        **{"response": response, **dict(model_overrides or {})},
    ).to(device)
    with torch.no_grad():  # start from the SAD prior (see densnet_core.train._zero_heads)
        for heads in (model.heads, model.response_heads):
            for head in heads.values():
                for p in head.parameters():
                    p.zero_()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    steps = max(1, math.ceil(len(train_s) / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(epochs * steps))
    best, best_state, t0 = math.inf, copy.deepcopy(model.state_dict()), time.monotonic()
    epoch = 0

    def mean_loss(samples: Sequence[MDSample], terms: bool = False) -> Any:
        """The weighted loss; with ``terms`` also the density term and the dipole MAE (D)."""
        model.eval()
        tot = dens = dmu = 0.0
        with torch.no_grad():
            for i in range(0, len(samples), 2 * batch_size):
                chunk = list(samples[i : i + 2 * batch_size])
                b = _density_batch(model, chunk, device)
                pred = model(b)
                tot += float(_density_loss(pred, b, dipole_weight)) * len(chunk)
                if terms:
                    dens += float(_density_loss(pred, b)) * len(chunk)
                    err = (pred["dipole_au"] - b["target_dipole"]).norm(dim=-1)
                    dmu += float(err.sum()) * DEBYE_PER_AU
        model.train()
        n = max(1, len(samples))
        return (tot / n, dens / n, dmu / n) if terms else tot / n

    # small MD molecules: no opt_einsum path search (see DenSNetPotential.forward)
    with torch.backends.opt_einsum.flags(enabled=False):
        for epoch in range(1, epochs + 1):
            order = np.random.default_rng([seed, epoch]).permutation(len(train_s))
            model.train()
            for i in range(0, len(order), batch_size):
                chunk = [train_s[j] for j in order[i : i + batch_size]]
                b = _density_batch(model, chunk, device)
                loss = _density_loss(model(b), b, dipole_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                sched.step()
            v, v_dens, v_mu = mean_loss(val_s if val_s else train_s, terms=True)
            if v < best:
                best, best_state = v, copy.deepcopy(model.state_dict())
            if progress is not None:
                progress(
                    f"density epoch {epoch}/{epochs}: val (drho|drho)/N_e {v_dens:.3e} Eh, "
                    f"dipole MAE {v_mu:.4f} D" + (f", loss {v:.3e}" if dipole_weight else "")
                )
            if max_minutes is not None and time.monotonic() - t0 > 60.0 * max_minutes:
                break
    model.load_state_dict(best_state)
    model.eval()
    tr = mean_loss(train_s, terms=True)
    va = mean_loss(val_s, terms=True) if val_s else (math.nan,) * 3
    metrics = {
        "train_density_coulomb": tr[1],
        "val_density_coulomb": va[1],
        "train_dipole_mae_debye": tr[2],
        "val_dipole_mae_debye": va[2],
        "epochs": float(epoch),
    }
    model.eval()
    return model, metrics


# ------------------------------------------------------------------------------------------
# Energy stage
# ------------------------------------------------------------------------------------------
_KCAL = KCAL_PER_MOL_PER_HARTREE
_KCAL_PER_A = KCAL_PER_MOL_PER_HARTREE * BOHR_PER_ANGSTROM  # (Eh/bohr) -> kcal/mol/Å


def _ef_loss(
    out: Mapping[str, torch.Tensor],
    batch: Mapping[str, Any],
    energy_weight: float,
    force_weight: float,
) -> torch.Tensor:
    de = (out["energy_hartree"].double() - batch["target_energy"]) / batch["n_atoms"] * _KCAL
    df = (out["forces_hartree_per_bohr"] - batch["target_forces"]) * _KCAL_PER_A
    return energy_weight * (de**2).mean() + force_weight * (df.double() ** 2).mean()


def evaluate_energy(
    potential: DenSNetPotential, samples: Sequence[MDSample], *, batch_size: int = 16
) -> dict[str, float]:
    """Energy, force and dipole errors of a potential on labelled configurations.

    Returns
    -------
    dict
        ``energy_mae_mev``, ``energy_mae_mev_per_atom``, ``energy_rmse_mev``,
        ``force_mae_mev_per_angstrom`` (component-wise), ``force_rmse_mev_per_angstrom``,
        ``force_mae_kcal_mol_angstrom``, ``dipole_mae_debye`` (vector error), ``n`` — NaN
        for an empty set. The energy errors are after removing nothing (absolute energies).
    """
    if not samples:
        return {"n": 0.0}
    was = potential.training
    potential.eval()
    de, dea, df, dmu = [], [], [], []
    for i in range(0, len(samples), batch_size):
        chunk = list(samples[i : i + batch_size])
        b = _batch(potential, chunk)
        out = potential(b, compute_forces=True)
        e = (out["energy_hartree"].detach().double() - b["target_energy"]).cpu().numpy()
        de.extend(e.tolist())
        dea.extend((e / b["n_atoms"].cpu().numpy()).tolist())
        f = out["forces_hartree_per_bohr"].detach().double() - b["target_forces"].double()
        df.append(f.cpu().numpy().reshape(-1))
        mu = out["dipole_au"].detach().double().cpu().numpy()
        dmu.extend(np.linalg.norm(mu - np.stack([s.dipole_au for s in chunk]), axis=1).tolist())
    potential.train(was)
    ev = EV_PER_HARTREE * 1000.0
    f_all = np.concatenate(df) * ev / ANGSTROM_PER_BOHR
    de_a = np.asarray(de) * ev
    return {
        "energy_mae_mev": float(np.mean(np.abs(de_a))),
        "energy_rmse_mev": float(np.sqrt(np.mean(de_a**2))),
        "energy_mae_mev_per_atom": float(np.mean(np.abs(dea)) * ev),
        "force_mae_mev_per_angstrom": float(np.mean(np.abs(f_all))),
        "force_rmse_mev_per_angstrom": float(np.sqrt(np.mean(f_all**2))),
        "force_mae_kcal_mol_angstrom": float(np.mean(np.abs(f_all)) / 1000.0 / 0.0433641043),
        "dipole_mae_debye": float(np.mean(dmu) * DEBYE_PER_AU),
        "n": float(len(samples)),
    }


def prepare_energy_model(
    potential_density: Any,
    train_s: Sequence[MDSample],
    *,
    level: LevelOfTheory,
    preset: str = "small",
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> DenSNetPotential:
    """A new energy model on a (trained) density model: reference energies, scales fitted."""
    torch.manual_seed(seed)
    em = EnergyModel.for_density_model(
        potential_density, level=level, preset=preset, **dict(overrides or {})
    )
    em.fit_reference_energies([s.numbers for s in train_s], [s.energy_hartree for s in train_s])
    em.fit_energy_scale([s.forces_hartree_per_bohr for s in train_s])
    pot = DenSNetPotential(density_model=potential_density, energy_model=em, level=level)
    pot = pot.to(next(potential_density.parameters()).dtype)
    # input normalisation from the density model's predictions on the training set
    coeffs = []
    with torch.no_grad():
        for i in range(0, len(train_s), 32):
            chunk = list(train_s[i : i + 32])
            b = pot.collate([s.inputs for s in chunk])
            out = potential_density(b, compute_response=False)
            c = out["density_coeffs"].double().cpu().numpy()
            for a, e in _slices(chunk):
                coeffs.append(c[a:e])
    em.fit_normalization([s.numbers for s in train_s], coeffs)
    return pot


def _slices(samples: Sequence[MDSample]) -> list[tuple[int, int]]:
    out, start = [], 0
    for s in samples:
        m = s.density.shape[0]
        out.append((start, start + m))
        start += m
    return out


def train_energy(
    potential: DenSNetPotential,
    train_s: Sequence[MDSample],
    val_s: Sequence[MDSample],
    *,
    epochs: int = 100,
    batch_size: int = 8,
    lr: float = 3e-3,
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
    joint: bool = False,
    density_weight: float = 10.0,
    seed: int = 0,
    max_minutes: float | None = None,
    progress: Callable[[str], None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    run_key: str = "",
) -> dict[str, Any]:
    """Fit the energy model (density frozen), or both networks (``joint=True``).

    Parameters
    ----------
    potential
        Density + energy model (trained in place; the best validation weights are restored).
    train_s, val_s
        Training and validation configurations (validation empty: training loss is used).
    epochs, batch_size, lr
        AdamW with a warm-up + cosine schedule.
    energy_weight, force_weight
        Loss weights of the per-atom energy error (kcal/mol)^2 and force components
        (kcal/mol/Å)^2.
    joint
        Also train the density model; the density term (Coulomb metric, Eh per electron, needs
        the samples' metrics) is added with ``density_weight``.
    max_minutes
        Stop after the epoch during which this wall time is passed.
    progress
        Called with one line per epoch.
    checkpoint
        File written atomically after every epoch (weights, optimiser and schedule states, best
        weights, history; ``torch.load(weights_only=True)``). If it exists the run continues
        after its last finished epoch and visits the same batches as an uninterrupted run, so
        the result matches it to float round-off; a finished checkpoint just restores the best
        weights.
    run_key
        Identity of the run (settings and data); a checkpoint with another key is refused.

    Returns
    -------
    dict
        ``history`` (per-epoch train/val loss), ``best_epoch``, ``best_val_loss``, ``epochs_run``,
        ``seconds`` (of this call), ``resumed_from`` (epoch of the checkpoint, 0 if fresh).

    Raises
    ------
    ValueError
        The checkpoint belongs to another run (``run_key``, stage or epochs differ).
    """
    import copy

    from densnet_core.train import _atomic_torch_save

    torch.manual_seed(seed)
    dens = potential.density
    for p in dens.parameters():
        p.requires_grad_(bool(joint))
    params = [p for p in potential.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-6)
    steps = max(1, math.ceil(len(train_s) / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(epochs * steps))
    t0 = time.monotonic()
    history: list[dict[str, float]] = []
    best, best_epoch = math.inf, 0
    best_state = copy.deepcopy(potential.state_dict())

    def loss_of(samples: Sequence[MDSample], b: dict[str, Any], out: Any) -> torch.Tensor:
        loss = _ef_loss(out, b, energy_weight, force_weight)
        if joint and density_weight > 0:
            db = _density_batch(dens, samples, b["positions_bohr"].device)
            loss = loss + density_weight * _density_loss(out, db).double()
        return loss

    def val_loss(samples: Sequence[MDSample]) -> float:
        potential.eval()
        tot = 0.0
        for i in range(0, len(samples), 2 * batch_size):
            chunk = list(samples[i : i + 2 * batch_size])
            b = _batch(potential, chunk)
            out = potential(b, compute_forces=True, create_graph=False)
            tot += float(loss_of(chunk, b, out).detach()) * len(chunk)
        return tot / max(1, len(samples))

    stage = "joint" if joint else "energy"
    ck_path = Path(checkpoint) if checkpoint is not None else None
    start = 1
    if ck_path is not None and ck_path.is_file():
        ck = torch.load(ck_path, map_location="cpu", weights_only=True)
        if (ck.get("run_key"), ck.get("stage"), ck.get("epochs")) != (run_key, stage, epochs):
            raise ValueError(
                f"{ck_path} belongs to another run (settings, data, stage or epochs differ); "
                "use a new output folder or delete the checkpoint to start over"
            )
        potential.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        best_state, best, best_epoch = (
            ck["best_state"],
            float(ck["best_val_loss"]),
            int(ck["best_epoch"]),
        )
        history = [dict(h) for h in ck["history"]]
        start = int(ck["epoch"]) + 1  # epochs + 1 after a finished run: no epoch left
        if progress is not None:
            progress(f"{stage}: resuming after epoch {start - 1}/{epochs} (best {best_epoch})")

    def save_checkpoint(epoch: int) -> None:
        if ck_path is None:
            return
        _atomic_torch_save(
            {
                "format": "densnet-energy-checkpoint",
                "run_key": run_key,
                "stage": stage,
                "epochs": epochs,
                "epoch": epoch,
                "model": potential.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "best_state": best_state,
                "best_val_loss": float(best),
                "best_epoch": int(best_epoch),
                "history": history,
            },
            ck_path,
        )

    resumed_from = start - 1
    epoch = start - 1
    for epoch in range(start, epochs + 1):
        te = time.monotonic()
        order = np.random.default_rng([seed, epoch]).permutation(len(train_s))
        potential.train()
        dens.eval()  # no dropout/batchnorm in the density model; keeps its mode explicit
        tot = 0.0
        for i in range(0, len(order), batch_size):
            chunk = [train_s[j] for j in order[i : i + batch_size]]
            b = _batch(potential, chunk)
            out = potential(b, compute_forces=True, create_graph=True)
            loss = loss_of(chunk, b, out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(chunk)
        v = val_loss(val_s if val_s else train_s)
        history.append({"epoch": epoch, "train_loss": tot / len(train_s), "val_loss": v})
        improved = v < best
        if improved:
            best, best_epoch = v, epoch
            best_state = copy.deepcopy(potential.state_dict())
        if progress is not None:
            progress(
                f"{'joint' if joint else 'energy'} epoch {epoch}/{epochs}: train "
                f"{tot / len(train_s):.4g} val {v:.4g} ({time.monotonic() - te:.1f} s)"
                + (" *" if improved else "")
            )
        save_checkpoint(epoch)
        if max_minutes is not None and time.monotonic() - t0 > 60.0 * max_minutes:
            break
    potential.load_state_dict(best_state)
    for p in dens.parameters():
        p.requires_grad_(False)
    potential.eval()
    return {
        "history": history,
        "best_epoch": best_epoch,
        "best_val_loss": best,
        "epochs_run": epoch,
        "seconds": time.monotonic() - t0,
        "resumed_from": resumed_from,
    }


# ------------------------------------------------------------------------------------------
# Model directories
# ------------------------------------------------------------------------------------------
def _json_bytes(obj: Any) -> bytes:
    return (
        json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
        + "\n"
    ).encode()


def save_md_model(
    potential: DenSNetPotential,
    model_dir: str | os.PathLike[str],
    *,
    card: Mapping[str, Any] | None = None,
) -> Path:
    """Write an MD model directory (density model, energy weights, configs, card), atomically
    file by file (weights first, card last).

    Returns
    -------
    Path
        ``model_dir``.
    """
    from safetensors.torch import save as st_save

    from densnet_core.modelio import save_model, software_versions

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    level = potential.level
    dens = potential.density
    save_model(dens, model_dir / DENSITY_SUBDIR, level=level, card={"role": "md-density"})
    state = {k: v.detach().to("cpu").contiguous() for k, v in potential.energy.state_dict().items()}
    blob = st_save(state, metadata={"format": "pt"})
    sha = hashlib.sha1(blob).hexdigest()
    with atomic_file(model_dir / ENERGY_WEIGHTS_FILE) as fh:
        fh.write(blob)
    config = {
        "format": ENERGY_FORMAT,
        "format_version": ENERGY_FORMAT_VERSION,
        "model": dict(potential.energy.config),
        "level_of_theory": level.model_dump(),
        "units": {"energy": "hartree", "length": "bohr"},
    }
    with atomic_file(model_dir / ENERGY_CONFIG_FILE) as fh:
        fh.write(_json_bytes(config))
    full = {
        "model_id": f"{model_dir.resolve().name}-{sha[:8]}",
        "kind": "densnet-md-model",
        "level_of_theory": level.label,
        "level_hash": level.hash,
        "elements": sorted(int(z) for z in potential.elements),
        **dict(card or {}),
        "energy_weights_sha1": sha,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": software_versions(),
    }
    with atomic_file(model_dir / CARD_FILE) as fh:
        fh.write(_json_bytes(full))
    return model_dir


def load_md_model(
    model_dir: str | os.PathLike[str],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[DenSNetPotential, dict[str, Any]]:
    """Load an MD model directory.

    Returns
    -------
    potential
        :class:`DenSNetPotential` in eval mode, ``dtype``, on ``device``.
    card
        The MD model card (``model_id``, metrics, ...).

    Raises
    ------
    densnet_core.modelio.ModelFileError
        Missing files, weights that are not safetensors or do not match the card's sha1.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    from densnet_core.modelio import ModelFileError, load_model, resolve_device, weights_sha1

    model_dir = Path(model_dir)
    for name in (ENERGY_WEIGHTS_FILE, ENERGY_CONFIG_FILE):
        if not (model_dir / name).is_file():
            raise ModelFileError(f"{model_dir} is not a densnet MD model directory: no {name}")
    density, info = load_model(model_dir / DENSITY_SUBDIR, device="cpu")
    try:
        config = json.loads((model_dir / ENERGY_CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{model_dir / ENERGY_CONFIG_FILE}: {exc}") from exc
    if config.get("format") != ENERGY_FORMAT:
        raise ModelFileError(f"{model_dir / ENERGY_CONFIG_FILE}: not a {ENERGY_FORMAT} config")
    card = {}
    if (model_dir / CARD_FILE).is_file():
        card = json.loads((model_dir / CARD_FILE).read_text())
    sha = weights_sha1(model_dir / ENERGY_WEIGHTS_FILE)
    if card.get("energy_weights_sha1") and card["energy_weights_sha1"] != sha:
        raise ModelFileError(
            f"{model_dir / ENERGY_WEIGHTS_FILE}: sha1 does not match the model card — the "
            "weights were modified or replaced"
        )
    try:
        state = st_load((model_dir / ENERGY_WEIGHTS_FILE).read_bytes())
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise ModelFileError(
            f"{model_dir / ENERGY_WEIGHTS_FILE} is not a valid safetensors file ({exc})"
        ) from exc
    energy = EnergyModel.from_config(config["model"])
    try:
        energy.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(
            f"{model_dir}: energy weights do not match the config ({exc})"
        ) from exc
    level = LevelOfTheory(**config["level_of_theory"])
    pot = DenSNetPotential(density_model=density, energy_model=energy, level=level)
    # buffers that must stay float64 (reference energies, prior, scales) are cast by .to(dtype)
    # too; the total energy is accumulated in float64 in EnergyModel.forward either way
    pot = pot.to(device=resolve_device(device), dtype=dtype).eval()
    for p in pot.parameters():
        p.requires_grad_(False)
    card.setdefault("model_id", f"{model_dir.resolve().name}-{sha[:8]}")
    card["density_model_id"] = info.model_id
    return pot, card


# ------------------------------------------------------------------------------------------
# The whole recipe
# ------------------------------------------------------------------------------------------
def train_md_model(
    labels_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    level: LevelOfTheory | None = None,
    density_init: str | os.PathLike[str] | None = None,
    density_preset: str = "small",
    energy_preset: str = "small",
    density_epochs: int = 60,
    energy_epochs: int = 100,
    joint_epochs: int = 0,
    batch_size: int = 8,
    energy_lr: float = 3e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_minutes_per_stage: float | None = None,
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
    density_dipole_weight: float = 0.0,
    metric_cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train an MD model (density model, then energy model; optionally joint) and save it.

    Parameters
    ----------
    labels_dir
        Label dataset (energies, forces, fitted densities).
    out_dir
        MD model directory to write (:func:`save_md_model`).
    level
        Level of theory of the labels (default: ``labels_dir/level.json``).
    density_init
        Use this density model directory instead of training one (stage 1 skipped).
    density_preset, energy_preset
        Architecture presets (:data:`densnet_core.model.PRESETS`, :data:`ENERGY_PRESETS`).
    density_epochs, energy_epochs, joint_epochs
        Epochs of each stage (``joint_epochs = 0``: staged only).
    batch_size, val_fraction, seed
        Batches, held-out fraction of configurations, seed.
    energy_lr
        Peak learning rate of the staged energy fit (the joint stage uses 1e-3).
    max_minutes_per_stage
        Wall-time limit of each stage.
    energy_weight, force_weight
        Loss weights (see :func:`train_energy`).
    density_dipole_weight
        Weight of the dipole term of the density stage (see :func:`train_density`).
    metric_cache_dir
        Cache of Coulomb metrics.
    progress
        Called with status lines.

    Notes
    -----
    Resumable: ``out_dir/checkpoint/`` keeps the trained density model (``density/``, its card
    holding the run's key) and the energy stages' checkpoints (``energy_staged.pt``,
    ``energy_joint.pt``, written after every epoch). Running again with the same settings and
    labels continues where a killed run stopped (an energy stage cut by ``max_minutes_per_stage`` is
    continued too); other settings or labels are refused (:func:`train_energy`). The number of
    epochs is part of each stage's checkpoint, so a resumed run cannot change it.

    Returns
    -------
    dict
        ``model_dir``, ``metrics`` (``{"staged": {"train": ..., "validation": ...},
        "joint": ...}``), ``n_train``, ``n_val``, ``seconds``.
    """
    from densnet_core.modelio import CONFIG_FILE as MODEL_CONFIG_FILE
    from densnet_core.modelio import load_model, save_model
    from densnet_core.train import infer_level

    t0 = time.monotonic()
    say = progress or (lambda msg: log.info("%s", msg))
    level = level if level is not None else infer_level(labels_dir)
    samples = load_md_samples(
        labels_dir,
        level=level,
        with_metric=density_init is None or joint_epochs > 0,
        metric_cache_dir=metric_cache_dir,
    )
    train_idx, val_idx = split_by_conformer(
        [s.conformer_key for s in samples], val_fraction=val_fraction, seed=seed
    )
    train_s = [samples[i] for i in train_idx]
    val_s = [samples[i] for i in val_idx]
    say(f"{len(samples)} labelled configurations: {len(train_s)} train, {len(val_s)} held out")
    run = {
        "level_hash": level.hash,
        "density_init": str(density_init) if density_init else None,
        "density_preset": density_preset,
        "energy_preset": energy_preset,
        "density_epochs": density_epochs,
        "batch_size": batch_size,
        "energy_lr": energy_lr,
        "seed": seed,
        "weights": [energy_weight, force_weight, density_dipole_weight],
        "train": sorted(s.conformer_key for s in train_s),
        "val": sorted(s.conformer_key for s in val_s),
    }
    run_key = hashlib.sha1(json.dumps(run, sort_keys=True).encode()).hexdigest()
    ck_dir = Path(out_dir) / CHECKPOINT_SUBDIR
    ck_density = ck_dir / DENSITY_SUBDIR
    ck_model = None  # the density model a killed run of these settings trained
    if (ck_density / MODEL_CONFIG_FILE).is_file():
        ck_model, ck_info = load_model(ck_density)
        if ck_info.card.get("run_key") != run_key:
            raise ValueError(
                f"{ck_dir} belongs to another run (settings or labels differ); "
                "use a new output folder or delete the checkpoint to start over"
            )
    if density_init is not None:
        density, _ = load_model(density_init)
        dens_metrics: dict[str, float] = {"init": str(density_init)}  # type: ignore[dict-item]
    elif ck_model is not None:
        density, dens_metrics = ck_model, dict(ck_info.card["density_metrics"])
        say(f"density model of this run from {ck_density} (stage 1 done before)")
    else:
        density, dens_metrics = train_density(
            train_s,
            val_s,
            level=level,
            preset=density_preset,
            epochs=density_epochs,
            batch_size=batch_size,
            seed=seed,
            max_minutes=max_minutes_per_stage,
            dipole_weight=density_dipole_weight,
            progress=say,
        )
        save_model(
            density,
            ck_density,
            level=level,
            card={"role": "md-density", "run_key": run_key, "density_metrics": dens_metrics},
        )
    for p in density.parameters():
        p.requires_grad_(False)
    pot = prepare_energy_model(density, train_s, level=level, preset=energy_preset, seed=seed)
    staged = train_energy(
        pot,
        train_s,
        val_s,
        epochs=energy_epochs,
        batch_size=batch_size,
        lr=energy_lr,
        energy_weight=energy_weight,
        force_weight=force_weight,
        seed=seed,
        max_minutes=max_minutes_per_stage,
        progress=say,
        checkpoint=ck_dir / "energy_staged.pt",
        run_key=run_key,
    )
    metrics: dict[str, Any] = {
        "density": dens_metrics,
        "staged": {
            "train": evaluate_energy(pot, train_s),
            "validation": evaluate_energy(pot, val_s),
            "best_epoch": staged["best_epoch"],
            "epochs_run": staged["epochs_run"],
            "seconds": staged["seconds"],
        },
    }
    say(f"staged: validation {metrics['staged']['validation']}")
    settings = {
        "labels_dir": str(labels_dir),
        "density_init": str(density_init) if density_init else None,
        "density_preset": density_preset,
        "energy_preset": energy_preset,
        "density_epochs": density_epochs,
        "energy_epochs": energy_epochs,
        "joint_epochs": joint_epochs,
        "batch_size": batch_size,
        "energy_lr": energy_lr,
        "val_fraction": val_fraction,
        "seed": seed,
        "energy_weight": energy_weight,
        "force_weight": force_weight,
        "density_dipole_weight": density_dipole_weight,
        "energy_presets": ENERGY_PRESETS[energy_preset],
    }
    card = {
        "training_formulas": sorted({hill_formula(x.numbers) for x in samples}),
        "n_train_configurations": len(train_s),
        "n_val_configurations": len(val_s),
        "validation_conformer_keys": [s.conformer_key for s in val_s],
        "training_settings": settings,
        "metric_notes": {
            "energy_mae_mev": "absolute total energies vs PySCF, meV",
            "force_mae_mev_per_angstrom": "component-wise MAE of forces, meV/Å",
            "dipole_mae_debye": "|mu_pred - mu_label| from the predicted density, D",
        },
    }
    save_md_model(pot, out_dir, card={**card, "training": "staged", "metrics": metrics})
    if joint_epochs > 0:
        joint = train_energy(
            pot,
            train_s,
            val_s,
            epochs=joint_epochs,
            batch_size=batch_size,
            lr=1e-3,
            energy_weight=energy_weight,
            force_weight=force_weight,
            joint=True,
            seed=seed,
            max_minutes=max_minutes_per_stage,
            progress=say,
            checkpoint=ck_dir / "energy_joint.pt",
            run_key=run_key,
        )
        metrics["joint"] = {
            "train": evaluate_energy(pot, train_s),
            "validation": evaluate_energy(pot, val_s),
            "best_epoch": joint["best_epoch"],
            "epochs_run": joint["epochs_run"],
            "seconds": joint["seconds"],
        }
        say(f"joint: validation {metrics['joint']['validation']}")
        staged_f = metrics["staged"]["validation"].get("force_mae_mev_per_angstrom", math.inf)
        joint_f = metrics["joint"]["validation"].get("force_mae_mev_per_angstrom", math.inf)
        if joint_f <= staged_f:
            save_md_model(pot, out_dir, card={**card, "training": "joint", "metrics": metrics})
        else:  # keep the staged model on disk, record the comparison in its card
            staged_pot, _ = load_md_model(out_dir)
            save_md_model(
                staged_pot, out_dir, card={**card, "training": "staged", "metrics": metrics}
            )
    return {
        "model_dir": str(out_dir),
        "metrics": metrics,
        "n_train": len(train_s),
        "n_val": len(val_s),
        "seconds": time.monotonic() - t0,
    }
