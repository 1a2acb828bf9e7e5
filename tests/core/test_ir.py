"""IR spectra: synthetic dipoles, a harmonic triatomic against its normal modes, output files."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from densnet_core.ir import C_CM_PER_S, find_peaks, ir_spectrum, write_ir
from tests.core._md_tiny import one_torch_thread  # noqa: F401 - autouse fixture
from tests.core._toy_calc import SpringCalculator


def test_synthetic_dipole_peaks():
    dt = 0.5  # fs
    t = np.arange(40000) * dt * 1e-15  # s
    rng = np.random.default_rng(0)
    freqs = [1050.0, 1720.0, 3010.0]  # cm-1
    mu = np.zeros((t.size, 3))
    for k, f in enumerate(freqs):
        w = 2 * np.pi * f * C_CM_PER_S
        mu[:, k] += np.cos(w * t + rng.uniform(0, 2 * np.pi)) / f  # equal dmu/dt amplitudes
    mu += 1e-6 * rng.normal(size=mu.shape)
    wn, inten = ir_spectrum(mu, timestep_fs=dt, temperature_K=300.0)
    peaks = find_peaks(wn, inten, prominence=0.1)
    assert len(peaks) == 3
    np.testing.assert_allclose(peaks["wavenumber_cm1"], freqs, rtol=2e-3)
    # harmonic correction = FT of the dmu/dt ACF: equal amplitudes -> equal heights
    np.testing.assert_allclose(peaks["intensity"], 1.0, atol=0.1)
    _, raw = ir_spectrum(mu, timestep_fs=dt, temperature_K=300.0, quantum_correction="none")
    # Q = 1: each peak scaled by (1 - exp(-x)) / x, x = h c wn / kT
    x = 1.438776877 * np.array([3010.0, 1050.0]) / 300.0
    want = (-np.expm1(-x[0]) / x[0]) / (-np.expm1(-x[1]) / x[1])
    ratio = raw[np.argmin(abs(wn - 3010))] / raw[np.argmin(abs(wn - 1050))]
    assert ratio == pytest.approx(want, rel=0.1)


def test_harmonic_triatomic_md_reproduces_the_normal_modes(tmp_path):
    from ase.vibrations import Vibrations

    from densnet_core.md import MDSettings, read_timeseries, run_md

    r0 = np.array([[0.0, 0.0, 0.119], [0.0, 0.763, -0.477], [0.0, -0.763, -0.477]])
    q = np.array([-0.8, 0.4, 0.4])
    atoms = Atoms("OH2", positions=r0)
    atoms.calc = SpringCalculator(r0, k=10.0, charges=q)
    vib = Vibrations(atoms, name=str(tmp_path / "vib"), delta=0.001)
    vib.run()
    modes = np.sort(np.real(vib.get_frequencies()))[-3:]  # cm-1, the three vibrations

    # NVE from velocities with zero angular momentum: no rotational P/R side bands
    s = MDSettings(
        steps=3000, equilibration_steps=0, timestep_fs=0.5, temperature_K=30.0,
        trajectory_interval=1000, checkpoint_interval=10000,
    )  # fmt: skip
    run_md(Atoms("OH2", positions=r0), SpringCalculator(r0, 10.0, q), tmp_path / "md", settings=s)
    ts = read_timeseries(tmp_path / "md")
    prod = ts[ts["phase"] == "production"]
    wn, inten = ir_spectrum(
        np.stack(prod["dipole_au"].to_numpy()), timestep_fs=0.5, temperature_K=30.0
    )
    peaks = find_peaks(wn, inten, prominence=0.05)
    for f in modes:
        nearest = peaks["wavenumber_cm1"].to_numpy()[np.argmin(abs(peaks["wavenumber_cm1"] - f))]
        assert abs(nearest - f) / f < 0.02, (f, peaks)


def test_write_ir_files(tmp_path):
    wn = np.linspace(400, 4000, 2000)
    y = np.exp(-(((wn - 1700) / 15) ** 2)) + 0.5 * np.exp(-(((wn - 3000) / 15) ** 2))
    ref = {"frequencies_cm1": [1690.0, 3050.0], "intensities_km_mol": [100.0, 30.0]}
    out = write_ir(tmp_path, wn, y, reference=ref)
    import pandas as pd

    spec = pd.read_parquet(out["spectrum"])
    assert list(spec.columns) == ["wavenumber_cm1", "intensity"] and len(spec) == 2000
    assert (tmp_path / "ir_spectrum.png").stat().st_size > 10_000
    np.testing.assert_allclose(sorted(out["peaks"]["wavenumber_cm1"]), [1700, 3000], atol=3)


@pytest.mark.slow
def test_pyscf_harmonic_reference_water_hf():
    from densnet_core.ir import harmonic_ir_pyscf
    from densnet_core.level import LevelOfTheory

    level = LevelOfTheory(xc="hf", basis="sto-3g", density_fit=False)
    r0 = np.array([[0.0, 0.0, 0.119], [0.0, 0.763, -0.477], [0.0, -0.763, -0.477]])
    res = harmonic_ir_pyscf([8, 1, 1], r0, level=level, fmax_ev_per_angstrom=0.005)
    f = np.sort(res["frequencies_cm1"])
    assert f.shape == (3,)
    # HF/STO-3G water: ~2170 (bend), ~4140 and ~4391 cm-1 (stretches)
    np.testing.assert_allclose(f, [2170, 4140, 4391], rtol=0.03)
    assert np.all(res["intensities_km_mol"] > 0)
