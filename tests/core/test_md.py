"""MD driver: files, NVE energy conservation, resuming a killed run, input parsing, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from densnet_core.md import MDSettings, read_structure, read_timeseries, run_md
from tests.core._md_tiny import WATER_A, one_torch_thread  # noqa: F401 - autouse fixture
from tests.core._toy_calc import SpringCalculator


def _toy() -> tuple[Atoms, SpringCalculator]:
    atoms = Atoms("OH2", positions=WATER_A)
    return atoms, SpringCalculator(WATER_A, k=30.0, charges=np.array([-0.8, 0.4, 0.4]))


def test_files_and_nve_conservation_toy(tmp_path):
    atoms, calc = _toy()
    s = MDSettings(steps=400, equilibration_steps=100, timestep_fs=0.25, checkpoint_interval=50)
    summary = run_md(atoms, calc, tmp_path, settings=s)
    ts = read_timeseries(tmp_path)
    assert len(ts) == 501 and set(ts["phase"]) == {"equilibration", "production"}
    prod = ts[ts["phase"] == "production"]
    assert prod["time_fs"].iloc[0] == 0.0  # the last equilibrated state starts production
    e = prod["total_energy_ev"].to_numpy()
    # velocity Verlet: bounded oscillation of the total energy (< 1 % of E_kin), no drift
    assert np.ptp(e) < 1e-2 * prod["kinetic_energy_ev"].mean()
    assert len(ts["dipole_au"].iloc[0]) == 3
    import ase.io

    frames = ase.io.read(tmp_path / "trajectory.xyz", index=":")
    assert len(frames) == 51 and frames[-1].info["step"] == 500
    assert json.loads((tmp_path / "summary.json").read_text())["n_atoms"] == 3
    assert abs(summary["nve_drift_ev_per_atom_per_ps"]) < 1e-3


class _Killed(Exception):
    pass


def _killed_then_resumed(out: Path, s: MDSettings, kill_at: int) -> dict:
    """Run the toy MD in ``out``, kill it at step ``kill_at``, rerun: the resumed summary."""

    def kill(done: int, total: int, phase: str) -> None:
        if done == kill_at:
            raise _Killed

    atoms, calc = _toy()
    with pytest.raises(_Killed):
        run_md(atoms, calc, out, settings=s, progress=kill)
    atoms, calc = _toy()
    return run_md(atoms, calc, out, settings=s)


def test_killed_run_resumes_to_the_same_result(tmp_path):
    s = MDSettings(steps=120, equilibration_steps=60, timestep_fs=0.5, checkpoint_interval=25)
    atoms, calc = _toy()
    run_md(atoms, calc, tmp_path / "ref", settings=s)

    summary = _killed_then_resumed(tmp_path / "run", s, kill_at=137)
    assert summary["resumed"] and summary["steps_run_now"] == 180 - 125
    ref, got = read_timeseries(tmp_path / "ref"), read_timeseries(tmp_path / "run")
    assert list(got["step"]) == list(range(181))
    np.testing.assert_allclose(got["total_energy_ev"], ref["total_energy_ev"], rtol=0, atol=1e-12)
    ref_xyz = (tmp_path / "ref" / "trajectory.xyz").read_text()
    assert (tmp_path / "run" / "trajectory.xyz").read_text() == ref_xyz
    # other settings in the same folder are refused
    atoms, calc = _toy()
    with pytest.raises(ValueError, match="other MD settings"):
        run_md(atoms, calc, tmp_path / "run", settings=MDSettings(steps=10))


def test_nve_energy_is_the_canonical_mean(tmp_path):
    """The switch to NVE scales the momenta once: E = <E_pot>(late equilibration) + kT dof/2."""
    from ase import units

    s = MDSettings(steps=40, equilibration_steps=200, timestep_fs=0.5, checkpoint_interval=20)
    atoms, calc = _toy()
    summary = run_md(atoms, calc, tmp_path / "ref", settings=s)
    ts = read_timeseries(tmp_path / "ref")
    eq = ts[(ts["phase"] == "equilibration") & (ts["step"] >= 100)]
    target = eq["potential_energy_ev"].mean() + 0.5 * (3 * 3 - 3) * units.kB * s.temperature_K
    prod = ts[ts["phase"] == "production"]
    np.testing.assert_allclose(prod["total_energy_ev"].iloc[0], target, rtol=1e-9)
    start = summary["nve_start"]
    assert start["n_samples"] == 100 and start["velocity_scale"] != 1.0
    np.testing.assert_allclose(start["target_total_energy_ev"], target, rtol=1e-9)

    # killed right after the switch (checkpoint at the switch step): scaled once, not twice
    resumed = _killed_then_resumed(tmp_path / "run", s, kill_at=s.equilibration_steps + 1)
    got = read_timeseries(tmp_path / "run")
    np.testing.assert_allclose(got["total_energy_ev"], ts["total_energy_ev"], rtol=0, atol=1e-12)
    assert resumed["nve_start"] == start

    # "as_is" keeps the last Langevin state
    atoms, calc = _toy()
    plain = run_md(
        atoms,
        calc,
        tmp_path / "as_is",
        settings=MDSettings(**{**s.__dict__, "nve_energy": "as_is"}),
    )
    assert "nve_start" not in plain
    first = read_timeseries(tmp_path / "as_is")
    np.testing.assert_allclose(
        first["total_energy_ev"].iloc[199], ts["total_energy_ev"].iloc[199], rtol=0, atol=1e-12
    )
    with pytest.raises(ValueError, match="nve_energy"):
        MDSettings(nve_energy="nope")


def test_nve_with_the_densnet_potential(tmp_path):
    from densnet_core.calculator import DenSNetCalculator
    from tests.core._md_tiny import WATER_A, tiny_potential

    pot = tiny_potential((1, 8), seed=1)
    atoms = Atoms("OH2", positions=WATER_A)
    calc = DenSNetCalculator(model=pot, dtype="float64")
    s = MDSettings(steps=40, equilibration_steps=0, timestep_fs=0.25, temperature_K=100.0, seed=3)
    run_md(atoms, calc, tmp_path, settings=s)
    ts = read_timeseries(tmp_path)
    e = ts["total_energy_ev"].to_numpy()
    ekin = ts["kinetic_energy_ev"].to_numpy()
    # conservative forces (autograd through both networks): energy kept to ~1 % of E_kin
    assert np.ptp(e) < 0.01 * ekin.mean()


def test_read_structure(tmp_path):
    a = read_structure("CCO")
    assert sorted(a.get_chemical_symbols()) == sorted(["C", "C", "O"] + ["H"] * 6)
    import ase.io

    ase.io.write(tmp_path / "w.xyz", Atoms("OH2", positions=WATER_A))
    assert read_structure(tmp_path / "w.xyz").get_chemical_formula() == "H2O"
    from rdkit import Chem
    from rdkit.Chem import AllChem

    m = Chem.AddHs(Chem.MolFromSmiles("CO"))
    AllChem.EmbedMolecule(m, randomSeed=1)
    m.SetProp("_Name", "methanol")
    Chem.MolToMolFile(m, str(tmp_path / "m.sdf"))
    b = read_structure(tmp_path / "m.sdf")
    assert len(b) == 6 and b.info["name"] == "methanol"
    with pytest.raises(ValueError):
        read_structure("not_a_smiles((")


@pytest.mark.slow
def test_cli_md(tmp_path):
    from typer.testing import CliRunner

    from densnet.cli import app
    from densnet_core.energy_train import save_md_model
    from tests.core._md_tiny import tiny_potential

    save_md_model(tiny_potential((1, 8), seed=1), tmp_path / "model")
    out = tmp_path / "out"
    args = ["md", "O", "-o", str(out), "--model", str(tmp_path / "model"), "--steps", "70",
            "--equilibration-steps", "5", "--no-optimize"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    for name in ("trajectory.xyz", "timeseries.parquet", "checkpoint.json", "summary.json",
                 "ir_spectrum.parquet", "ir_spectrum.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert "steps/s" in res.output
    res2 = CliRunner().invoke(app, args)  # finished run: resumes, nothing left to do
    assert res2.exit_code == 0 and "resuming" in res2.output


def test_harmonic_reference_is_cached_per_molecule_and_charge(tmp_path: Path) -> None:
    """A cached PySCF reference is reused for the same atoms and charge, recomputed otherwise."""
    from densnet_core.md import REFERENCE_FILE, harmonic_reference_cached

    h2 = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]])
    cache = tmp_path / REFERENCE_FILE
    sentinel = {
        "numbers": [1, 1],
        "charge": 0,
        "frequencies_cm1": [1234.5],
        "intensities_km_mol": [0.0],
        "positions_angstrom": h2.get_positions().tolist(),
        "energy_hartree": -1.0,
    }
    cache.write_text(json.dumps(sentinel))
    ref = harmonic_reference_cached(tmp_path, h2)
    assert ref["frequencies_cm1"] == [1234.5] and ref["label"] == "PySCF harmonic"
    # the same cache for a cation is not this molecule: computed with PySCF and rewritten
    cache.write_text(json.dumps({**sentinel, "charge": 1}))
    ref = harmonic_reference_cached(tmp_path, h2)
    assert 4000.0 < ref["frequencies_cm1"][0] < 4700.0  # H2 stretch, B3LYP ~4360 cm^-1
    assert json.loads(cache.read_text())["charge"] == 0
