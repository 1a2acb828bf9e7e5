"""Ensembles: member plans, bootstrap by molecule, training + resume, manifest, batched prediction.

The slow tests share one 3-member ensemble trained for 2 epochs on the tiny HF/STO-3G store
(4 molecules x 3 conformers; one molecule held out for validation), ~1 min.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from densnet_core.ensemble import (
    MANIFEST_FILE,
    ensemble_id,
    load_ensemble,
    member_specs,
    read_manifest,
    train_ensemble,
)
from densnet_core.train import bootstrap_by_molecule
from tests.core._tiny_labels import TINY_LEVEL, make_tiny_labels

ENS_KW = dict(
    level=TINY_LEVEL,
    preset="small",
    epochs=2,
    batch_size=6,
    lr=3e-3,
    val_fraction=0.25,
    grid_samples=0,
)


def test_member_specs_share_the_split_and_differ_in_seeds():
    specs = member_specs(3, seed=5, bootstrap=True)
    assert [s.name for s in specs] == ["member-00", "member-01", "member-02"]
    assert {s.split_seed for s in specs} == {5}
    assert len({s.seed for s in specs}) == 3 and len({s.bootstrap_seed for s in specs}) == 3
    assert all(s.bootstrap_seed is None for s in member_specs(2, bootstrap=False))
    with pytest.raises(ValueError):
        member_specs(0)


def test_bootstrap_is_by_molecule_and_deterministic():
    mol_ids = [m for m in "abcdefgh" for _ in range(3)]  # 8 molecules x 3 conformers
    train_idx = [i for i, m in enumerate(mol_ids) if m != "h"]
    got = bootstrap_by_molecule(mol_ids, train_idx, seed=1)
    assert got == bootstrap_by_molecule(mol_ids, train_idx, seed=1)
    assert got != bootstrap_by_molecule(mol_ids, train_idx, seed=2)
    assert len(got) == len(train_idx)  # n molecules drawn n times, all conformers along
    counts = {m: sum(mol_ids[i] == m for i in got) for m in "abcdefgh"}
    assert counts["h"] == 0  # validation molecules never come in
    assert all(c % 3 == 0 for c in counts.values())  # whole molecules only
    assert any(c == 0 for m, c in counts.items() if m != "h")  # some left out of the bag
    assert set(got) <= set(train_idx)


def test_ensemble_id_is_deterministic(tmp_path):
    a = ensemble_id(tmp_path / "ens", ["m-1", "m-2"])
    assert a == ensemble_id(tmp_path / "ens", ["m-2", "m-1"])
    assert a != ensemble_id(tmp_path / "ens", ["m-1", "m-3"])
    assert a.startswith("ens-") and len(a) == len("ens-") + 8


@pytest.fixture(scope="module")
def labels_dir(tmp_path_factory):
    return make_tiny_labels(tmp_path_factory.mktemp("labels"))


@pytest.fixture(scope="module")
def ensemble_dir(labels_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens") / "ens"
    train_ensemble(labels_dir, out, members=3, seed=0, **ENS_KW)
    return out


@pytest.mark.slow
def test_members_differ_and_share_the_validation_molecules(ensemble_dir):
    m = read_manifest(ensemble_dir)
    cards = [
        json.loads((ensemble_dir / x["dir"] / "model_card.json").read_text()) for x in m["members"]
    ]
    assert len({tuple(c["validation_inchikeys"]) for c in cards}) == 1
    assert len(m["validation_inchikeys"]) == 1
    assert set(m["validation_inchikeys"]).isdisjoint(m["training_inchikeys"])
    assert len({x["weights_sha1"] for x in m["members"]}) == 3
    assert [c["training_settings"]["bootstrap_seed"] for c in cards] == [0, 1, 2]
    union = sorted({k for c in cards for k in c["training_inchikeys"]})
    assert m["training_inchikeys"] == union
    assert 1 in m["training_elements"] and set(m["training_elements"]) <= {1, 6, 7, 8}
    assert m["training_ring_systems"] == []  # water, ammonia, formaldehyde, methanol
    cal = m["calibration"]
    assert cal["validation"]["n"] == 3  # 1 molecule x 3 conformers
    assert set(cal["ood_thresholds"]) == {"dipole_debye_std", "alpha_iso_au_std"}
    assert (ensemble_dir / "calibration.png").stat().st_size > 1000


@pytest.mark.slow
def test_manifest_round_trip_and_batched_prediction(ensemble_dir, labels_dir):
    from densnet_core.calibration import load_labelled_set
    from densnet_core.modelio import load_model

    m = read_manifest(ensemble_dir)
    ens = load_ensemble(ensemble_dir)
    assert (
        ens.ensemble_id
        == m["ensemble_id"]
        == ensemble_id(ensemble_dir, [x["model_id"] for x in m["members"]])
    )
    assert [i.model_id for i in ens.infos] == [x["model_id"] for x in m["members"]]
    ls = load_labelled_set(labels_dir, level=TINY_LEVEL)
    batch = ens.collate(ls.inputs, dtype=torch.float32)
    p_vmap = ens.predict_batch(batch, calibrated=False)
    assert ens.mode == "vmap"
    loop = load_ensemble(ensemble_dir, mode="loop")
    p_loop = loop.predict_batch(batch, calibrated=False)
    b, k = len(ls), 3
    assert p_vmap.dipole_au.shape == (b, k, 3)
    assert p_vmap.polarizability_au.shape == (b, k, 3, 3)
    assert p_vmap.dipole_debye_std.shape == (b,) == p_vmap.alpha_iso_au_std.shape
    np.testing.assert_allclose(p_vmap.dipole_au, p_loop.dipole_au, atol=1e-5)
    np.testing.assert_allclose(p_vmap.polarizability_au, p_loop.polarizability_au, atol=1e-4)
    # member by member, each on its own
    for j, x in enumerate(m["members"]):
        model, _ = load_model(ensemble_dir / x["dir"])
        with torch.no_grad():
            out = model(model.collate(ls.inputs, dtype=torch.float32))
        np.testing.assert_allclose(p_vmap.dipole_au[:, j], out["dipole_au"].numpy(), atol=1e-5)
    # summaries: mean and ddof-1 std of |mu| (D) and alpha_iso, then the calibrated scale
    from densnet_core.units import DEBYE_PER_AU

    norm = np.linalg.norm(p_loop.dipole_au, axis=2) * DEBYE_PER_AU
    mean_vec = np.linalg.norm(p_loop.dipole_au.mean(1), axis=1) * DEBYE_PER_AU
    np.testing.assert_allclose(p_loop.dipole_debye, mean_vec)  # |μ| of the mean density
    assert (p_loop.dipole_debye <= norm.mean(1) + 1e-12).all()  # triangle inequality
    np.testing.assert_allclose(p_loop.dipole_debye_std, norm.std(1, ddof=1))
    assert (p_loop.dipole_debye_std > 0).all()  # the members differ
    p_cal = ens.predict_batch(batch)
    sd, sa = ens.scales
    np.testing.assert_allclose(p_cal.dipole_debye_std, sd * p_vmap.dipole_debye_std, rtol=1e-6)
    np.testing.assert_allclose(p_cal.alpha_iso_au_std, sa * p_vmap.alpha_iso_au_std, rtol=1e-6)
    # predict_inputs batches and concatenates
    p_in = ens.predict_inputs(ls.inputs, batch_size=5, calibrated=False)
    np.testing.assert_allclose(p_in.dipole_au, p_vmap.dipole_au, atol=1e-5)
    # OOD for the training molecules: nothing unseen
    from densnet_core.ood import ood_reasons

    reasons = ood_reasons(ls.smiles, ls.numbers, np.zeros(b), np.zeros(b), ens.ood_criteria())
    assert reasons == [""] * b


@pytest.mark.slow
def test_killed_ensemble_resumes_without_retraining_finished_members(labels_dir, tmp_path):
    out = tmp_path / "ens"

    class Killed(Exception):
        pass

    def kill_member_1(report):  # called after the epoch's checkpoint is written
        if (out / "member-01" / "checkpoint" / "checkpoint.pt").exists():
            raise Killed

    # member-00 finishes, member-01 is killed after its first epoch
    with pytest.raises(Killed):
        train_ensemble(labels_dir, out, members=2, progress=kill_member_1, **ENS_KW)
    assert not (out / MANIFEST_FILE).exists()
    sha0 = (out / "member-00" / "model.safetensors").read_bytes()
    mtime0 = (out / "member-00" / "model_card.json").stat().st_mtime_ns
    epochs: list[int] = []
    res = train_ensemble(labels_dir, out, members=2, progress=lambda r: epochs.append(r.epoch),
                         **ENS_KW)  # fmt: skip
    assert [s["skipped"] for s in res.members] == [True, False]
    assert epochs == [2]  # member-01 resumed after epoch 1; member-00 not retrained
    assert (out / "member-00" / "model.safetensors").read_bytes() == sha0
    assert (out / "member-00" / "model_card.json").stat().st_mtime_ns == mtime0
    m = read_manifest(out)
    assert m["n_members"] == 2 and m["calibration"]["validation"]["n"] == 3
    # a third run does nothing but rewrite the manifest, with the same id
    res2 = train_ensemble(labels_dir, out, members=2, **ENS_KW)
    assert all(s["skipped"] for s in res2.members)
    assert res2.manifest["ensemble_id"] == m["ensemble_id"]


@pytest.mark.slow
def test_cli_train_ensemble(labels_dir, tmp_path):
    from typer.testing import CliRunner

    from densnet.cli import app

    out = tmp_path / "model"
    level = json.dumps(TINY_LEVEL.model_dump())
    args = ["train", str(labels_dir), "-o", str(out), "--preset", "small", "--epochs", "1"]
    args += ["--level", level, "--ensemble", "2", "--val-fraction", "0.25"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "member-01 epoch    1/1" in res.output
    assert "Spearman" in res.output and "ensemble" in res.output
    m = read_manifest(out)
    assert m["n_members"] == 2
    assert load_ensemble(out).ensemble_id == m["ensemble_id"]

    # --parallel-members 2: the same two members, trained at once in two spawned processes
    par = tmp_path / "parallel"
    args[args.index(str(out))] = str(par)
    res = CliRunner().invoke(app, [*args, "--parallel-members", "2"])
    assert res.exit_code == 0, res.output
    mp = read_manifest(par)
    assert mp["n_members"] == 2
    assert mp["validation_inchikeys"] == m["validation_inchikeys"]
    for a, b in zip(m["members"], mp["members"], strict=True):
        assert (a["dir"], a["seed"]) == (b["dir"], b["seed"])
        for key in ("loss", "dipole_mae_debye", "alpha_iso_mape_pct"):
            assert b["validation"][key] == pytest.approx(a["validation"][key], rel=1e-3), key
    assert mp["members"][0]["weights_sha1"] != mp["members"][1]["weights_sha1"]
    # a rerun finds both members finished and only rewrites the manifest
    res = CliRunner().invoke(app, [*args, "--parallel-members", "2"])
    assert res.exit_code == 0, res.output
    assert "member-00: finished already" in res.output
    assert read_manifest(par)["ensemble_id"] == mp["ensemble_id"]
