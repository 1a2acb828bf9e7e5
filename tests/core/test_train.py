"""Datasets, the Coulomb-metric loss, training, checkpoint resume and the ``densnet train`` CLI.

Labels: HF/STO-3G for water, ammonia, formaldehyde and methanol, 3 conformers each (one part
file, made once per module, ~15 s).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from densnet_core import keys as K
from densnet_core.basis import make_auxmol, to_pyscf
from densnet_core.dataset import (
    NoUsableLabelsError,
    load_label_rows,
    make_samples,
    split_by_molecule,
)
from densnet_core.losses import coulomb_norm2, loss_terms, make_batch
from densnet_core.model import DensityModel
from densnet_core.units import BOHR_PER_ANGSTROM
from tests.core._tiny_labels import TINY_LEVEL, make_tiny_labels

TRAIN_KW = dict(
    level=TINY_LEVEL,
    preset="small",
    batch_size=5,
    lr=3e-3,
    val_fraction=0.25,
    patience=50,
    seed=7,
    grid_samples=1,
)


@pytest.fixture(scope="module")
def labels_dir(tmp_path_factory):
    return make_tiny_labels(tmp_path_factory.mktemp("labels"))


@pytest.fixture(scope="module")
def samples(labels_dir):
    return make_samples(load_label_rows(labels_dir, level=TINY_LEVEL), level=TINY_LEVEL)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return DensityModel.for_aux_basis(TINY_LEVEL.fit_auxbasis, [1, 6, 7, 8], preset="small")


def test_split_is_by_molecule_and_deterministic(samples):
    ids = [s.mol_id for s in samples]
    tr, va = split_by_molecule(ids, val_fraction=0.25, seed=1)
    assert sorted(tr + va) == list(range(len(ids)))
    assert {ids[i] for i in tr}.isdisjoint({ids[i] for i in va})
    assert len({ids[i] for i in va}) == 1  # 25 % of 4 molecules
    assert (tr, va) == split_by_molecule(ids, val_fraction=0.25, seed=1)
    splits = {tuple(split_by_molecule(ids, val_fraction=0.25, seed=s)[1]) for s in range(8)}
    assert len(splits) > 1  # the seed changes the split
    assert split_by_molecule(ids, val_fraction=0.0, seed=1)[1] == []


def test_no_usable_labels(tmp_path, labels_dir):
    with pytest.raises(NoUsableLabelsError, match="no label part files"):
        load_label_rows(tmp_path, level=TINY_LEVEL)
    from densnet_core.level import DEFAULT_LEVEL

    with pytest.raises(NoUsableLabelsError, match="ok rows per level"):
        load_label_rows(labels_dir, level=DEFAULT_LEVEL)


def test_targets_and_metric_transform(labels_dir, samples):
    """Targets are the stored PySCF-order labels; δᵀJδ is the same in both orders."""
    rows = load_label_rows(labels_dir, level=TINY_LEVEL)
    aux = TINY_LEVEL.fit_auxbasis
    rng = np.random.default_rng(0)
    for k in (0, len(samples) - 1):  # water, methanol
        s, row = samples[k], rows.iloc[k]
        numbers = list(s.inputs.numbers)
        np.testing.assert_allclose(
            to_pyscf(s.density, numbers, aux), np.asarray(row[K.DENSITY_COEFFS]), atol=1e-12
        )
        m = s.n_coeffs
        resp = np.asarray(row[K.RESPONSE_COEFFS]).reshape(3, m)
        np.testing.assert_allclose(to_pyscf(s.response, numbers, aux), resp, atol=1e-12)
        # Coulomb metric straight from PySCF in PySCF order
        from densnet_core.qm import build_mol

        pos = np.stack(row[K.POSITIONS_ANGSTROM]).astype(float) * BOHR_PER_ANGSTROM
        auxmol = make_auxmol(build_mol(numbers, pos, basis="sto-3g"), aux)
        j_py = auxmol.intor("int2c2e")
        d_e3nn = rng.normal(size=m) * np.abs(s.density).clip(1e-3, None)
        d_py = to_pyscf(d_e3nn, numbers, aux)
        ref = d_py @ j_py @ d_py
        got = float(
            coulomb_norm2(
                torch.as_tensor(d_e3nn), [torch.as_tensor(s.metric, dtype=torch.float64)], [(0, m)]
            )
        )
        assert got == pytest.approx(ref, rel=1e-5)  # J stored in float32
        # the label density is a fit of an N-electron density in this metric: its norm is large
        # and positive, and its charge is exact
        assert float(s.inputs.charge_ints @ s.density) == pytest.approx(s.n_electrons, abs=1e-6)


def test_loss_is_zero_for_exact_targets_and_positive_otherwise(samples, small_model):
    batch = make_batch(small_model, samples[:5], dtype=torch.float64)
    exact = {
        "density_coeffs": batch["target_density"],
        "response_coeffs": batch["target_response"],
        "dipole_au": batch["target_dipole"],
        "polarizability_au": batch["target_alpha"],
    }
    w = {"density": 1.0, "response": 1.0, "dipole": 1.0, "polarizability": 1.0}
    terms = loss_terms(exact, batch, w)
    for k in ("density", "response", "dipole", "polarizability", "total"):
        assert float(terms[k]) == pytest.approx(0.0, abs=1e-20), k
    worse = dict(exact, density_coeffs=batch["prior_coeffs"])
    t2 = loss_terms(worse, batch, w)
    # per molecule (δ|δ)/N_e, averaged: check against the per-molecule definition
    ref = np.mean(
        [
            (d := (s.inputs.prior_coeffs - s.density))
            @ s.metric.astype(np.float64)
            @ d
            / s.n_electrons
            for s in samples[:5]
        ]
    )
    assert float(t2["density"]) == pytest.approx(ref, rel=1e-6)
    assert float(t2["density"]) > 0


@pytest.mark.slow
def test_training_resume_model_files_and_beating_the_prior(labels_dir, tmp_path):
    from densnet_core.featurize import featurize
    from densnet_core.modelio import load_model
    from densnet_core.train import CHECKPOINT_FILE, load_checkpoint, train

    # uninterrupted 4 epochs
    ref = train(labels_dir, tmp_path / "a", epochs=4, **TRAIN_KW)
    assert ref.epochs_run == 4 and ref.stopped == "completed"

    # "killed" after epoch 2, then resumed to 4
    class Killed(Exception):
        pass

    def kill_after_2(report):
        if report.epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(labels_dir, tmp_path / "b", epochs=4, progress=kill_after_2, **TRAIN_KW)
    ck = load_checkpoint(tmp_path / "b")
    assert ck["epoch"] == 2
    # the checkpoint is plain data (weights_only) - no pickled objects
    torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=True)
    seen = []
    res = train(labels_dir, tmp_path / "b", epochs=4, progress=seen.append, **TRAIN_KW)
    assert res.resumed_from == 2 and [r.epoch for r in seen] == [3, 4]
    ck_a, ck_b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for key in ("model", "ema"):
        sa = ck_a[key] if key == "model" else ck_a[key]["module"]
        sb = ck_b[key] if key == "model" else ck_b[key]["module"]
        for name, ta in sa.items():
            np.testing.assert_allclose(sb[name].numpy(), ta.numpy(), atol=1e-6, err_msg=name)
    assert [h["val_loss"] for h in ck_a["history"]] == pytest.approx(
        [h["val_loss"] for h in ck_b["history"]], rel=1e-5
    )

    # training reduced the validation loss below the starting point (the prior: zero heads)
    val = ref.metrics["validation"]
    assert val["model"]["loss"] < val["prior"]["loss"]
    assert ref.history[-1]["val_loss"] < ref.history[0]["val_loss"]
    assert math.isfinite(val["model"]["density_nmae_pct"])
    assert val["prior"]["alpha_iso_mape_pct"] == pytest.approx(100.0)

    # model files: card contents, and predictions at the label geometries beat the prior
    model, info = load_model(tmp_path / "a")
    card = info.card
    assert card["n_train_molecules"] == 3 and card["n_val_molecules"] == 1
    assert card["n_train_conformers"] == 9 and card["n_val_conformers"] == 3
    assert len(card["training_inchikeys"]) == 3
    assert card["training_inchikeys"] == sorted(card["training_inchikeys"])
    assert card["metrics"]["validation"]["prior"]["dipole_mae_debye"] > 0
    assert info.model_id.startswith("a-") and len(info.model_id) == 10
    rows = load_label_rows(labels_dir, level=TINY_LEVEL)
    rows = rows[rows[K.MOL_ID].isin(card["training_inchikeys"])]
    err_model, err_prior = [], []
    for _, row in rows.iterrows():
        pos = np.stack(row[K.POSITIONS_ANGSTROM]).astype(float) * BOHR_PER_ANGSTROM
        inp = featurize(row[K.NUMBERS], pos, 0, level=TINY_LEVEL)
        batch = model.collate([inp])
        with torch.no_grad():
            mu = model(batch)["dipole_au"][0].double().numpy()
        q, c0 = inp.charge_ints, inp.prior_coeffs
        c0 = c0 + q * (sum(row[K.NUMBERS]) - q @ c0) / (q @ q)
        z = np.asarray(row[K.NUMBERS], dtype=float)
        mu0 = z @ (pos - inp.origin_bohr) - inp.dipole_ints @ c0
        err_model.append(np.linalg.norm(mu - row[K.DIPOLE_AU]))
        err_prior.append(np.linalg.norm(mu0 - row[K.DIPOLE_AU]))
    assert np.mean(err_model) < np.mean(err_prior)


@pytest.mark.slow
def test_cli_train(labels_dir, tmp_path):
    from typer.testing import CliRunner

    from densnet.cli import app

    runner = CliRunner()
    out = tmp_path / "model"
    level = json.dumps(TINY_LEVEL.model_dump())
    args = ["train", str(labels_dir), "-o", str(out), "--preset", "small", "--epochs", "2"]
    args += ["--batch-size", "6", "--level", level, "--seed", "1", "--weight-decay", "0.01"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "epoch    2/2" in res.output
    card = json.loads((out / "model_card.json").read_text())
    assert card["training_settings"]["weight_decay"] == 0.01
    assert "dipole MAE" in res.output and "model" in res.output
    for name in ("model.safetensors", "config.json", "model_card.json", "checkpoint"):
        assert (out / name).exists(), name
    # running again resumes (nothing left to do) and still succeeds
    res2 = runner.invoke(app, args)
    assert res2.exit_code == 0, res2.output
    assert "resuming" in res2.output

    # a run that cannot start fails with a clear message and a non-zero exit code
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = runner.invoke(app, ["train", str(empty), "-o", str(tmp_path / "m2"), "--level", level])
    assert bad.exit_code != 0
    assert "no label part files" in " ".join(bad.output.split())
