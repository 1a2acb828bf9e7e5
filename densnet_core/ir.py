"""IR spectra: from an MD dipole time series, and the PySCF harmonic reference.

MD spectrum (:func:`ir_spectrum`)
---------------------------------
1. mu(t) (T, 3), any unit; dmu/dt by central differences (``numpy.gradient``; at 3,700 cm^-1
   and a 0.5 fs step this damps the amplitude by 2 % and does not move peaks).
2. Autocorrelation C(k) = <dmu(0) . dmu(k dt)>, averaged over time origins (FFT, zero padded,
   unbiased: divided by T - k), up to ``max_lag_fs``.
3. Hann window on the lags (w(k) = cos^2(pi k / 2L)), zero padding (``pad_factor``), real FFT:
   I(w) = C(0) + 2 sum_k w(k) C(k) cos(w k dt).
4. Quantum correction. The classical absorption alpha(w) n(w) ∝ w^2 FT[<mu mu>_cl](w) =
   FT[<dmu dmu>_cl](w). With the *harmonic* quantum correction factor
   Q(w) = beta hbar w / (1 - exp(-beta hbar w)) applied to the classical correlation function,
   the quantum absorption cross-section is exactly that, so ``quantum_correction="harmonic"``
   (default) returns FT[<dmu dmu>](w) as it is. ``"none"`` treats the classical correlation
   function as the quantum one (Q = 1): I(w) (1 - exp(-beta hbar w)) / (beta hbar w), which
   at 300 K scales a 3,000 cm^-1 band by 0.07 against 0.2 for a 1,000 cm^-1 band.
5. Intensities are normalised to a maximum of 1 above ``min_wavenumber_cm1``.

Peaks: :func:`find_peaks` (``scipy.signal.find_peaks`` with a prominence threshold relative to
the maximum).

Harmonic reference (:func:`harmonic_ir_pyscf`)
----------------------------------------------
At the project's level of theory: geometry optimised with ASE's BFGS on PySCF forces (the SCF
of :mod:`densnet_core.qm`), the analytic Hessian (``mf.Hessian()``), harmonic analysis
(``pyscf.hessian.thermo.harmonic_analysis``: mass weighting, translations and rotations
projected out), and dipole derivatives along each normal mode by central finite differences of
the SCF dipole (``pyscf.prop.infrared`` is not part of PySCF 2.14): 2 SCFs per mode. IR
intensities in km/mol: 42.2561 |d mu / d Q|^2 with mu in D and Q the mass-weighted normal
coordinate in amu^1/2 Å (:data:`KM_PER_MOL_PER_D2_A2_AMU`). Expensive (minutes per SCF on a
busy two-core machine).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from densnet_core.units import ANGSTROM_PER_BOHR, BOHR_PER_ANGSTROM

__all__ = [
    "HBAR_C_OVER_K_CM_K",
    "find_peaks",
    "harmonic_ir_pyscf",
    "ir_spectrum",
    "lorentzian_spectrum",
    "plot_ir",
    "write_ir",
]

C_CM_PER_S = 2.99792458e10
#: h c / k_B in cm·K (second radiation constant): beta hbar w = 1.438777 * wavenumber / T
HBAR_C_OVER_K_CM_K = 1.438776877
#: IR intensity N_A pi / (3 c^2) |d mu / d Q|^2 in km/mol for |d mu / d Q| = 1 D/(Å amu^1/2)
KM_PER_MOL_PER_D2_A2_AMU = 42.2561
DEBYE_PER_E_ANGSTROM = 4.80320471


def ir_spectrum(
    dipole: np.ndarray,
    *,
    timestep_fs: float,
    temperature_K: float = 300.0,
    max_lag_fs: float | None = 2000.0,
    pad_factor: int = 8,
    quantum_correction: str = "harmonic",
    min_wavenumber_cm1: float = 400.0,
    max_wavenumber_cm1: float = 4500.0,
) -> tuple[np.ndarray, np.ndarray]:
    """IR absorption spectrum from a dipole time series (autocorrelation of dmu/dt).

    Parameters
    ----------
    dipole
        (T, 3) dipole vectors at equal time steps, any unit (e·bohr in the MD time series).
    timestep_fs
        Time between samples, fs.
    temperature_K
        Temperature of the run, K (quantum correction only).
    max_lag_fs
        Longest lag of the autocorrelation, fs (None: half the series). Sets the resolution
        (~ 1 / (c max_lag): 2 ps -> ~17 cm^-1 before the window).
    pad_factor
        Zero padding of the windowed correlation (a finer frequency grid, not more resolution).
    quantum_correction
        ``"harmonic"`` (default) or ``"none"`` (see the module docstring).
    min_wavenumber_cm1, max_wavenumber_cm1
        Range returned (and normalised over).

    Returns
    -------
    wavenumber_cm1
        (K,) cm^-1, increasing.
    intensity
        (K,) arbitrary units, maximum 1 in the range.
    """
    mu = np.asarray(dipole, dtype=np.float64)
    if mu.ndim == 1:
        mu = mu[:, None]
    n = mu.shape[0]
    if n < 8:
        raise ValueError(f"need at least 8 dipole samples, got {n}")
    dt = float(timestep_fs)
    mdot = np.gradient(mu - mu.mean(0), dt, axis=0)
    mdot -= mdot.mean(0)
    n_lag = n // 2 if max_lag_fs is None else min(n - 1, max(2, round(max_lag_fs / dt)))
    nfft = 1 << math.ceil(math.log2(2 * n))
    spec = np.fft.rfft(mdot, n=nfft, axis=0)
    acf = np.fft.irfft((spec * spec.conj()).real.sum(1), n=nfft)[:n_lag]
    acf /= n - np.arange(n_lag)
    k = np.arange(n_lag)
    window = np.cos(0.5 * np.pi * k / n_lag) ** 2
    c = acf * window
    npad = max(pad_factor * 2 * n_lag, 2 * n_lag)
    sym = np.zeros(npad)
    sym[:n_lag] = c
    sym[npad - n_lag + 1 :] = c[1:][::-1]
    intensity = np.fft.rfft(sym).real
    freq_per_fs = np.fft.rfftfreq(npad, d=dt)
    wn = freq_per_fs * 1e15 / C_CM_PER_S
    if quantum_correction == "none":
        x = HBAR_C_OVER_K_CM_K * np.maximum(wn, 1e-12) / float(temperature_K)
        intensity = intensity * -np.expm1(-x) / x
    elif quantum_correction != "harmonic":
        raise ValueError(
            f"quantum_correction must be 'harmonic' or 'none', not {quantum_correction!r}"
        )
    sel = (wn >= min_wavenumber_cm1) & (wn <= max_wavenumber_cm1)
    wn, intensity = wn[sel], intensity[sel]
    top = float(np.max(intensity)) if intensity.size else 0.0
    if top > 0:
        intensity = intensity / top
    return wn, intensity


def find_peaks(
    wavenumber_cm1: np.ndarray,
    intensity: np.ndarray,
    *,
    prominence: float = 0.02,
    max_peaks: int = 20,
) -> pd.DataFrame:
    """Peaks of a spectrum.

    Parameters
    ----------
    wavenumber_cm1, intensity
        (K,) the spectrum.
    prominence
        Minimum prominence relative to the maximum intensity.
    max_peaks
        Keep at most this many (most intense).

    Returns
    -------
    pandas.DataFrame
        ``wavenumber_cm1``, ``intensity`` (the spectrum's value), sorted by wavenumber.
    """
    from scipy.signal import find_peaks as _fp

    y = np.asarray(intensity, dtype=float)
    if y.size == 0:
        return pd.DataFrame({"wavenumber_cm1": [], "intensity": []})
    idx, _ = _fp(y, prominence=prominence * float(np.max(y)))
    idx = idx[np.argsort(y[idx])[::-1][:max_peaks]]
    idx = np.sort(idx)
    return pd.DataFrame({"wavenumber_cm1": np.asarray(wavenumber_cm1)[idx], "intensity": y[idx]})


def lorentzian_spectrum(
    frequencies_cm1: Sequence[float],
    intensities: Sequence[float],
    wavenumber_cm1: np.ndarray,
    *,
    fwhm_cm1: float = 20.0,
) -> np.ndarray:
    """Stick spectrum broadened with Lorentzians (FWHM ``fwhm_cm1``), normalised to max 1."""
    x = np.asarray(wavenumber_cm1, dtype=float)[:, None]
    f = np.asarray(frequencies_cm1, dtype=float)[None, :]
    a = np.asarray(intensities, dtype=float)[None, :]
    g = 0.5 * fwhm_cm1
    y = (a * g**2 / ((x - f) ** 2 + g**2)).sum(1)
    return y / y.max() if y.size and y.max() > 0 else y


def plot_ir(
    path: str | os.PathLike[str],
    wavenumber_cm1: np.ndarray,
    intensity: np.ndarray,
    peaks: pd.DataFrame,
    *,
    title: str = "IR spectrum (DenSNet MD)",
    reference: dict[str, Any] | None = None,
) -> Path:
    """PNG of the spectrum with labelled peaks (and the harmonic reference, if given).

    ``reference``: ``{"frequencies_cm1": (K,), "intensities_km_mol": (K,), "label": str}``,
    drawn as Lorentzian-broadened curve (20 cm^-1) plus sticks on the same axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from densnet_core.store import atomic_file

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=120)
    ax.plot(wavenumber_cm1, intensity, color="C0", lw=1.2, label="DenSNet MD (dμ/dt ACF)")
    for wn, y in zip(peaks["wavenumber_cm1"], peaks["intensity"], strict=True):
        ax.annotate(
            f"{wn:.0f}",
            (wn, y),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=7,
            color="C0",
        )
    if reference is not None:
        f = np.asarray(reference["frequencies_cm1"], dtype=float)
        a = np.asarray(reference["intensities_km_mol"], dtype=float)
        keep = f > 0
        f, a = f[keep], a[keep]
        if a.size and a.max() > 0:
            curve = lorentzian_spectrum(f, a, wavenumber_cm1)
            ax.plot(
                wavenumber_cm1,
                -curve,
                color="C3",
                lw=1.0,
                label=reference.get("label", "PySCF harmonic") + " (mirrored)",
            )
            ax.vlines(f, 0, -a / a.max(), color="C3", lw=0.6, alpha=0.6)
            for fi, ai in zip(f, a / a.max(), strict=True):
                if ai > 0.05:
                    ax.annotate(
                        f"{fi:.0f}",
                        (fi, -ai),
                        xytext=(0, -9),
                        textcoords="offset points",
                        ha="center",
                        fontsize=7,
                        color="C3",
                    )
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlim(float(np.max(wavenumber_cm1)), float(np.min(wavenumber_cm1)))
    ax.set_xlabel("wavenumber / cm$^{-1}$")
    ax.set_ylabel("intensity (normalised)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return path


def write_ir(
    out_dir: str | os.PathLike[str],
    wavenumber_cm1: np.ndarray,
    intensity: np.ndarray,
    *,
    title: str = "IR spectrum (DenSNet MD)",
    reference: dict[str, Any] | None = None,
    prominence: float = 0.02,
) -> dict[str, Any]:
    """Write ``ir_spectrum.parquet`` (``wavenumber_cm1``, ``intensity``), ``ir_peaks.parquet``
    and ``ir_spectrum.png`` to ``out_dir`` (atomically); returns paths and the peak table."""
    import pyarrow as pa

    from densnet_core.store import write_parquet_atomic

    out_dir = Path(out_dir)
    peaks = find_peaks(wavenumber_cm1, intensity, prominence=prominence)
    meta = {b"schema_version": b"1", b"table": b"ir_spectrum"}
    tbl = pa.table(
        {
            "wavenumber_cm1": np.asarray(wavenumber_cm1, dtype=float),
            "intensity": np.asarray(intensity, dtype=float),
        }
    ).replace_schema_metadata(meta)
    write_parquet_atomic(tbl, out_dir / "ir_spectrum.parquet")
    ptbl = pa.Table.from_pandas(peaks, preserve_index=False).replace_schema_metadata(
        {b"schema_version": b"1", b"table": b"ir_peaks"}
    )
    write_parquet_atomic(ptbl, out_dir / "ir_peaks.parquet")
    png = plot_ir(
        out_dir / "ir_spectrum.png",
        wavenumber_cm1,
        intensity,
        peaks,
        title=title,
        reference=reference,
    )
    return {
        "spectrum": str(out_dir / "ir_spectrum.parquet"),
        "peaks_file": str(out_dir / "ir_peaks.parquet"),
        "png": str(png),
        "peaks": peaks,
    }


# ------------------------------------------------------------------------------------------
# PySCF harmonic reference
# ------------------------------------------------------------------------------------------
def _scf(numbers: Sequence[int], pos_bohr: np.ndarray, level: Any, charge: int) -> Any:
    from densnet_core import qm

    mol = qm.build_mol(numbers, pos_bohr, charge=charge, basis=level.basis)
    res = qm.run_scf(mol, level)
    if not res.converged:
        raise RuntimeError("PySCF SCF did not converge for the harmonic reference")
    return res.mf


def harmonic_ir_pyscf(
    numbers: Sequence[int],
    positions_angstrom: np.ndarray,
    *,
    level: Any = None,
    charge: int = 0,
    optimize: bool = True,
    fmax_ev_per_angstrom: float = 0.01,
    max_opt_steps: int = 60,
    intensities: bool = True,
    fd_step: float = 0.01,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Harmonic frequencies and IR intensities with PySCF at ``level``.

    Parameters
    ----------
    numbers
        (N,) atomic numbers.
    positions_angstrom
        (N, 3) starting geometry, Å.
    level
        :class:`~densnet_core.level.LevelOfTheory` (default: the project's default level).
    charge
        Total charge, e (closed shell).
    optimize
        Optimise the geometry first (ASE BFGS on PySCF forces to ``fmax_ev_per_angstrom``).
    intensities
        Also compute the IR intensities (2 SCFs per mode).
    fd_step
        Displacement along the normalised Cartesian mode vector, Å (mass-weighted mode
        converted back), for the dipole derivatives.
    progress
        Called with status lines.

    Returns
    -------
    dict
        ``frequencies_cm1`` (K,) real modes (imaginary ones negative), ``intensities_km_mol``
        (K,) (NaN without ``intensities``), ``positions_angstrom`` (N, 3) the geometry used,
        ``energy_hartree``.
    """
    from ase import Atoms
    from ase.calculators.calculator import Calculator, all_changes
    from ase.optimize import BFGS
    from pyscf.hessian import thermo

    from densnet_core import qm
    from densnet_core.level import DEFAULT_LEVEL
    from densnet_core.units import EV_PER_HARTREE

    level = level or DEFAULT_LEVEL
    say = progress or (lambda _m: None)
    numbers = [int(z) for z in numbers]
    pos = np.asarray(positions_angstrom, dtype=float)

    class _PySCF(Calculator):
        implemented_properties = ("energy", "forces")

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            mf = _scf(numbers, self.atoms.get_positions() * BOHR_PER_ANGSTROM, level, charge)
            self.results["energy"] = float(mf.e_tot) * EV_PER_HARTREE
            f = qm.forces_hartree_per_bohr(mf)
            self.results["forces"] = f * EV_PER_HARTREE / ANGSTROM_PER_BOHR

    if optimize:
        atoms = Atoms(numbers=numbers, positions=pos)
        atoms.calc = _PySCF()
        opt = BFGS(atoms, logfile=None)
        for k, _ in enumerate(opt.irun(fmax=fmax_ev_per_angstrom, steps=max_opt_steps)):
            say(f"PySCF optimisation step {k}: fmax {np.abs(atoms.get_forces()).max():.4f} eV/Å")
        pos = atoms.get_positions()
    mf = _scf(numbers, pos * BOHR_PER_ANGSTROM, level, charge)
    say("PySCF Hessian")
    hess = mf.Hessian().kernel()  # (N, N, 3, 3) Eh/bohr^2
    res = thermo.harmonic_analysis(mf.mol, hess)
    freq = np.asarray(res["freq_wavenumber"])
    # imaginary frequencies come back complex: report them as negative numbers
    freq = np.where(np.iscomplex(freq), -np.abs(freq), np.real(freq)).astype(float)
    modes = np.asarray(res["norm_mode"]).real  # (K, N, 3) Cartesian displacement per unit Q
    ints = np.full(freq.shape, np.nan)
    if intensities:
        masses = mf.mol.atom_mass_list(isotope_avg=True)
        origin = qm.centre_of_nuclear_charge_bohr(mf.mol)
        for k in range(len(freq)):
            # mass-weighted normal coordinate Q (amu^1/2 Å): x = Q * L_k / sqrt(m)
            lk = modes[k] * np.sqrt(masses)[:, None]
            lk /= np.linalg.norm(lk)
            disp = lk / np.sqrt(masses)[:, None]  # Å per unit Q (amu^1/2 Å)
            step = fd_step / np.abs(disp).max()
            mus = []
            for sgn in (1.0, -1.0):
                p = pos + sgn * step * disp
                mfk = _scf(numbers, p * BOHR_PER_ANGSTROM, level, charge)
                mus.append(qm.dipole_au(mfk, origin_bohr=origin))
            dmu = (mus[0] - mus[1]) / (2 * step) * ANGSTROM_PER_BOHR  # e·Å per (amu^1/2 Å)
            ints[k] = KM_PER_MOL_PER_D2_A2_AMU * float(np.sum((dmu * DEBYE_PER_E_ANGSTROM) ** 2))
            say(f"mode {k + 1}/{len(freq)} {freq[k]:.0f} cm-1: {ints[k]:.1f} km/mol")
    return {
        "frequencies_cm1": freq,
        "intensities_km_mol": ints,
        "positions_angstrom": pos,
        "energy_hartree": float(mf.e_tot),
    }
