"""Energy network: forces are -dE/dR through both networks, invariance, fitting, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densnet_core.energy_train import (
    MDSample,
    load_md_model,
    save_md_model,
    split_by_conformer,
    train_energy,
)
from densnet_core.units import BOHR_PER_ANGSTROM
from tests.core._md_tiny import (
    WATER_A,
    one_torch_thread,  # noqa: F401 - autouse fixture
    tiny_potential,
)

WATER_Z = np.array([8, 1, 1])


@pytest.fixture(scope="module")
def pot():
    return tiny_potential((1, 8), seed=1)


def _random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def test_forces_are_minus_the_finite_difference_gradient(pot):
    rng = np.random.default_rng(0)
    pos = WATER_A * BOHR_PER_ANGSTROM + rng.normal(scale=0.05, size=(3, 3))
    res = pot.energy_and_forces(WATER_Z, pos)
    h = 1e-4
    fd = np.zeros_like(pos)
    for i in range(3):
        for k in range(3):
            p = pos.copy()
            p[i, k] += h
            ep = pot.energy_and_forces(WATER_Z, p)["energy_hartree"]
            p[i, k] -= 2 * h
            em = pot.energy_and_forces(WATER_Z, p)["energy_hartree"]
            fd[i, k] = -(ep - em) / (2 * h)
    f = res["forces_hartree_per_bohr"]
    assert np.abs(f).max() > 1e-4  # a non-trivial force field
    np.testing.assert_allclose(f, fd, atol=1e-8, rtol=1e-6)
    # translation invariance: the forces sum to zero
    np.testing.assert_allclose(f.sum(0), 0.0, atol=1e-10)


def test_energy_invariant_forces_and_dipole_equivariant(pot):
    pos = WATER_A * BOHR_PER_ANGSTROM
    rot = _random_rotation(3)
    a = pot.energy_and_forces(WATER_Z, pos)
    b = pot.energy_and_forces(WATER_Z, pos @ rot.T + np.array([1.0, -2.0, 0.5]))
    assert abs(a["energy_hartree"] - b["energy_hartree"]) < 1e-10
    np.testing.assert_allclose(
        a["forces_hartree_per_bohr"] @ rot.T, b["forces_hartree_per_bohr"], atol=1e-9
    )
    np.testing.assert_allclose(a["dipole_au"] @ rot.T, b["dipole_au"], atol=1e-8)
    assert abs(a["n_electrons"] - 10.0) < 1e-8


def test_reference_energies_least_squares(pot):
    em = tiny_potential((1, 8), seed=2).energy
    comps = [[8, 1, 1], [8, 8, 1, 1], [1, 1], [8, 1]]
    true = {1: -0.51, 8: -74.9}
    e = [sum(true[z] for z in c) for c in comps]
    sol = em.fit_reference_energies(comps, e)
    np.testing.assert_allclose(sol, [true[1], true[8]], atol=1e-10)
    # one composition (MD data): the mean energy is reproduced
    em.fit_reference_energies([[8, 1, 1]] * 3, [-76.0, -76.1, -76.2])
    assert (
        abs(float(em.e_ref_hartree @ torch.tensor([2.0, 1.0], dtype=torch.float64)) + 76.1) < 1e-10
    )


def test_save_load_round_trip_and_tamper(tmp_path, pot):
    save_md_model(pot, tmp_path / "m", card={"note": "test"})
    loaded, card = load_md_model(tmp_path / "m", dtype=torch.float64)
    pos = WATER_A * BOHR_PER_ANGSTROM
    a = pot.energy_and_forces(WATER_Z, pos)
    b = loaded.energy_and_forces(WATER_Z, pos)
    assert abs(a["energy_hartree"] - b["energy_hartree"]) < 1e-9
    np.testing.assert_allclose(
        a["forces_hartree_per_bohr"], b["forces_hartree_per_bohr"], atol=1e-7
    )
    assert card["note"] == "test" and card["model_id"].startswith("m-")
    assert loaded.energy.e_ref_hartree.dtype == torch.float64
    # float32 load keeps the reference energies in float64
    l32, _ = load_md_model(tmp_path / "m")
    assert l32.energy.e_ref_hartree.dtype == torch.float64
    assert abs(l32.energy_and_forces(WATER_Z, pos)["energy_hartree"] - a["energy_hartree"]) < 1e-4
    from densnet_core.modelio import ModelFileError

    w = tmp_path / "m" / "energy.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelFileError):
        load_md_model(tmp_path / "m")


def test_split_by_conformer_is_deterministic():
    keys = [f"k{i}" for i in range(20)]
    tr, va = split_by_conformer(keys, val_fraction=0.2, seed=0)
    assert len(va) == 4 and sorted(tr + va) == list(range(20))
    assert (tr, va) == split_by_conformer(keys, val_fraction=0.2, seed=0)


def _synthetic_samples(pot, n: int, seed: int) -> list[MDSample]:
    """Water geometries labelled with a harmonic bond model (energy Eh, forces Eh/bohr)."""
    rng = np.random.default_rng(seed)
    r0 = WATER_A * BOHR_PER_ANGSTROM
    out = []
    for i in range(n):
        pos = r0 + rng.normal(scale=0.05, size=(3, 3))
        e, f = 0.0, np.zeros((3, 3))
        for a, b in ((0, 1), (0, 2), (1, 2)):
            d = pos[a] - pos[b]
            r = np.linalg.norm(d)
            d0 = np.linalg.norm(r0[a] - r0[b])
            e += 0.2 * (r - d0) ** 2
            g = 0.4 * (r - d0) * d / r
            f[a] -= g
            f[b] += g
        inputs = pot.featurize(WATER_Z, pos)
        out.append(
            MDSample(
                conformer_key=f"s{i}",
                mol_id="water",
                numbers=WATER_Z,
                inputs=inputs,
                energy_hartree=-76.0 + e,
                forces_hartree_per_bohr=f,
                dipole_au=np.zeros(3),
                density=np.zeros(inputs.charge_ints.shape[0]),
            )
        )
    return out


def test_staged_energy_training_reduces_the_loss():
    from densnet_core.energy_train import evaluate_energy, prepare_energy_model

    base = tiny_potential((1, 8), seed=4, dtype=torch.float32)
    samples = _synthetic_samples(base, 8, seed=0)
    pot = prepare_energy_model(base.density, samples, level=base.level, preset="tiny", seed=0)
    before = evaluate_energy(pot, samples)
    hist = train_energy(pot, samples, [], epochs=4, batch_size=4, lr=5e-3)
    after = evaluate_energy(pot, samples)
    assert hist["epochs_run"] == 4
    assert after["force_mae_mev_per_angstrom"] < before["force_mae_mev_per_angstrom"]
    # the density model was frozen
    assert not any(p.requires_grad for p in pot.density.parameters())


class _Killed(Exception):
    pass


def test_energy_training_killed_then_resumed_matches_the_uninterrupted_run(tmp_path):
    """A run stopped after epoch 2 of 4 and started again on its checkpoint ends with the
    weights, best epoch and history of the run that was never stopped; other settings are
    refused; a finished checkpoint only restores the best weights."""
    from densnet_core.energy_train import prepare_energy_model

    base = tiny_potential((1, 8), seed=4, dtype=torch.float32)
    train, val = _synthetic_samples(base, 8, seed=0), _synthetic_samples(base, 4, seed=9)

    def fresh():
        return prepare_energy_model(base.density, train, level=base.level, preset="tiny", seed=0)

    kw = dict(epochs=4, batch_size=4, lr=5e-3, run_key="k")
    whole = fresh()
    ref = train_energy(whole, train, val, **kw)

    def kill_after_two(line: str) -> None:
        if line.startswith("energy epoch 2/"):
            raise _Killed

    ck = tmp_path / "energy.pt"
    with pytest.raises(_Killed):
        train_energy(fresh(), train, val, checkpoint=ck, progress=kill_after_two, **kw)
    # the kill came in epoch 2's progress line, before its checkpoint: epoch 1 is on disk
    assert torch.load(ck, weights_only=True)["epoch"] == 1
    with pytest.raises(ValueError, match="another run"):
        train_energy(fresh(), train, val, checkpoint=ck, **{**kw, "run_key": "other"})
    resumed = fresh()
    got = train_energy(resumed, train, val, checkpoint=ck, **kw)
    assert got["resumed_from"] == 1 and got["best_epoch"] == ref["best_epoch"]
    for a, b in zip(got["history"], ref["history"], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    again = fresh()
    done = train_energy(again, train, val, checkpoint=ck, **kw)
    assert done["resumed_from"] == 4 and len(done["history"]) == 4
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_density_stage_dipole_term_fits_the_label_dipoles():
    """``train_density(dipole_weight=...)`` fits label dipoles the density term alone does not
    see: targets = SAD prior densities, dipoles = fixed point charges (-0.8, 0.4, 0.4) e."""
    import dataclasses

    from densnet_core.energy_train import train_density
    from tests.core._md_tiny import TINY_DENSITY

    base = tiny_potential((1, 8), seed=4, dtype=torch.float32)
    samples = []
    for x in _synthetic_samples(base, 12, seed=1):
        pos, m = x.inputs.positions_bohr, x.inputs.prior_coeffs.shape[0]
        origin = x.inputs.origin_bohr
        mu = np.array([-0.8, 0.4, 0.4]) @ (pos - origin)  # e·bohr about the nuclear-charge centre
        samples.append(
            dataclasses.replace(
                x, density=x.inputs.prior_coeffs.copy(), dipole_au=mu, metric=np.eye(m)
            )
        )
    train, val = samples[:8], samples[8:]
    kw = dict(level=base.level, epochs=30, batch_size=4, lr=5e-3, seed=0,
              model_overrides=TINY_DENSITY)  # fmt: skip
    _, plain = train_density(train, val, **kw)
    _, with_dipole = train_density(train, val, dipole_weight=10.0, **kw)
    assert plain["val_dipole_mae_debye"] > 0.5  # the prior's dipole is ~0
    assert with_dipole["val_dipole_mae_debye"] < 0.5 * plain["val_dipole_mae_debye"]
    assert np.isfinite(with_dipole["val_density_coulomb"])


def test_labels_without_polarizability():
    from densnet_core import keys as K
    from densnet_core.energy_model import density_level
    from densnet_core.labelling import label_conformer
    from densnet_core.level import DEFAULT_LEVEL, LevelOfTheory

    # the default level's hash is what it was before the option existed (shipped prior file)
    assert DEFAULT_LEVEL.hash == "9677f23d94f237c8"
    md_level = LevelOfTheory(polarizability=False)
    assert md_level.hash != DEFAULT_LEVEL.hash and md_level.label.endswith(" no-alpha")
    assert density_level(md_level) == DEFAULT_LEVEL
    level = LevelOfTheory(xc="hf", basis="sto-3g", density_fit=False, polarizability=False)
    row = {
        K.NAME: "water",
        K.CONFORMER_KEY: "w",
        K.CHARGE: 0,
        K.MULTIPLICITY: 1,
        K.NUMBERS: [8, 1, 1],
        K.POSITIONS_ANGSTROM: WATER_A.tolist(),
        K.STATUS: "ok",
    }
    label = label_conformer(row, level, threads=1, with_fit_error=False)
    assert label[K.STATUS] == "ok", label[K.ERROR]
    assert label[K.POLARIZABILITY_AU] is None and label[K.RESPONSE_COEFFS] is None
    assert len(label[K.DENSITY_COEFFS]) > 0 and len(label[K.FORCES_HARTREE_PER_BOHR]) == 3
    assert label[K.LEVEL_HASH] == level.hash


def test_train_md_model_resumes_a_killed_run(tmp_path):
    """``train_md_model`` killed in the energy stage: run again, it reuses the density model it
    trained (no second density stage), continues the energy stage after its last checkpointed
    epoch, and writes the model; other settings on the same folder are refused."""
    from densnet_core.energy_train import train_md_model
    from tests.core._tiny_labels import TINY_LEVEL, make_tiny_labels

    labels = make_tiny_labels(tmp_path / "labels", n_conformers=2)  # 4 molecules x 3
    out = tmp_path / "md-model"
    kw = dict(level=TINY_LEVEL, energy_preset="tiny", density_epochs=2, energy_epochs=3,
              batch_size=4, val_fraction=0.25)  # fmt: skip
    lines: list[str] = []

    def kill_in_epoch_two(line: str) -> None:
        lines.append(line)
        if line.startswith("energy epoch 2/"):
            raise _Killed

    with pytest.raises(_Killed):
        train_md_model(labels, out, progress=kill_in_epoch_two, **kw)
    assert any(x.startswith("density epoch 2/") for x in lines)
    assert not (out / "model_card.json").exists()
    lines.clear()
    result = train_md_model(labels, out, progress=lines.append, **kw)
    assert not any(x.startswith("density epoch") for x in lines)
    assert any("stage 1 done before" in x for x in lines)
    assert any(x.startswith("energy: resuming after epoch 1/3") for x in lines)
    assert [x.split(":")[0] for x in lines if x.startswith("energy epoch")] == [
        "energy epoch 2/3",
        "energy epoch 3/3",
    ]
    assert result["metrics"]["staged"]["epochs_run"] == 3
    _, card = load_md_model(out)
    assert card["training"] == "staged" and card["n_val_configurations"] == result["n_val"]
    with pytest.raises(ValueError, match="another run"):
        train_md_model(labels, out, **{**kw, "energy_lr": 1e-2})
