"""MD benchmark: held-out energy/force errors, MD speed, ethanol IR peaks vs PySCF harmonic.

    python -m benchmarks.md --model models/densnet-md-ethanol        # errors + speed
    python -m benchmarks.md --model ... --ir-steps 4000 --reference   # + IR peak table

1. Energy and force MAE of the MD model on its held-out configurations (the conformer keys in
   its model card) from the label store (``--labels``), against the goals of issue 5
   (force MAE <= 43 meV/Å = 1 kcal/mol/Å).
2. MD speed: steps per second of NVE on ethanol with :class:`DenSNetCalculator` (one torch
   thread), and the NVE drift (meV/atom/ps; goal < 1).
3. With ``--ir-steps``: an NVE run at 300 K, its IR spectrum and the O-H, C-H and C-O stretch
   peaks; with ``--reference`` (expensive: PySCF optimisation, Hessian, dipole derivatives;
   ``--reference-no-intensities`` skips the derivatives) the PySCF harmonic frequencies of
   the same bands and the relative deviation (goal: within 2 %).

Prints plain-text tables; ``--json OUT`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

BANDS = {  # (name, low, high) cm^-1 windows of the ethanol stretches
    "O-H stretch": (3300.0, 4000.0),
    "C-H stretch": (2750.0, 3250.0),
    "C-O stretch": (950.0, 1150.0),
}


def _band_peak(wn: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    sel = (wn >= lo) & (wn <= hi)
    if not sel.any() or np.max(y[sel]) <= 0:
        return float("nan")
    return float(wn[sel][np.argmax(y[sel])])


def _ref_band(freq: np.ndarray, inten: np.ndarray, lo: float, hi: float) -> float:
    sel = (freq >= lo) & (freq <= hi)
    if not sel.any():
        return float("nan")
    if np.all(np.isnan(inten[sel])):
        return float(np.max(freq[sel]))
    return float(freq[sel][np.nanargmax(inten[sel])])


def _spectrum_peaks(
    wn: np.ndarray, y: np.ndarray, lo: float, hi: float, prominence: float = 0.1
) -> np.ndarray:
    """(n,) wavenumbers of the local maxima in [lo, hi] with a prominence >= ``prominence``
    times the band's maximum (cm^-1)."""
    from scipy.signal import find_peaks

    sel = (wn >= lo) & (wn <= hi)
    if not sel.any() or np.max(y[sel]) <= 0:
        return np.zeros(0)
    idx, _ = find_peaks(y[sel], prominence=prominence * float(np.max(y[sel])))
    return wn[sel][idx]


def _mode_table(
    freq: np.ndarray,
    inten: np.ndarray,
    wn: np.ndarray,
    y: np.ndarray,
    model_freq: np.ndarray | None,
    min_rel_intensity: float = 0.1,
) -> list[dict]:
    """Each IR-visible PySCF harmonic stretch mode against the nearest ML-MD spectrum peak.

    Modes of a band with intensity >= ``min_rel_intensity`` times the band's strongest mode;
    ML-MD peaks from :func:`_spectrum_peaks`; ``model_harmonic_cm1``: the model's own
    harmonic frequency of the same mode index (ASE finite-difference Hessian on the model).
    """
    rows = []
    for band, (lo, hi) in BANDS.items():
        sel = np.flatnonzero((freq >= lo) & (freq <= hi))
        if not len(sel):
            continue
        peaks = _spectrum_peaks(wn, y, lo, hi)
        strongest = np.nanmax(inten[sel])
        for k in sel:
            if not inten[k] >= min_rel_intensity * strongest:
                continue
            near = float(peaks[np.argmin(np.abs(peaks - freq[k]))]) if len(peaks) else np.nan
            mh = float(model_freq[k]) if model_freq is not None else np.nan
            rows.append(
                {
                    "band": band,
                    "pyscf_harmonic_cm1": float(freq[k]),
                    "pyscf_intensity_km_mol": float(inten[k]),
                    "ml_md_peak_cm1": near,
                    "ml_md_deviation_pct": 100 * (near - freq[k]) / freq[k],
                    "model_harmonic_cm1": mh,
                    "model_harmonic_deviation_pct": 100 * (mh - freq[k]) / freq[k],
                }
            )
    return rows


def _model_harmonic(atoms, calc) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic frequencies (cm^-1) and IR intensities (km/mol) of the model at its minimum:
    BFGS to fmax 1e-3 eV/Å, then ``ase.vibrations.Infrared`` (the dipole from the density)."""
    import tempfile

    from ase.optimize import BFGS
    from ase.vibrations import Infrared

    a = atoms.copy()
    a.calc = calc
    BFGS(a, logfile=None).run(fmax=1e-3, steps=1000)
    with tempfile.TemporaryDirectory() as tmp:
        ir = Infrared(a, name=f"{tmp}/ir", delta=0.005, nfree=4)
        ir.run()
        freq = np.real(ir.get_frequencies())
        inten = np.asarray(ir.intensities, dtype=float) * 42.255  # (D/Å)^2/amu -> km/mol
    return freq, inten


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="MD model directory")
    ap.add_argument("--labels", type=Path, default=Path("data/md/ethanol/labels"))
    ap.add_argument("--smiles", default="CCO")
    ap.add_argument("--speed-steps", type=int, default=100)
    ap.add_argument("--ir-steps", type=int, default=0)
    ap.add_argument("--temperature-K", type=float, default=300.0)
    ap.add_argument("--equilibration-steps", type=int, default=2000, help="Langevin, IR run")
    ap.add_argument("--seed", type=int, default=0, help="seed of the IR run")
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--reference-no-intensities", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("/tmp/densnet-md-bench"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from densnet_core.calculator import DenSNetCalculator
    from densnet_core.energy_train import evaluate_energy, load_md_model, load_md_samples
    from densnet_core.md import (
        MDSettings,
        MDUnstableError,
        read_structure,
        read_timeseries,
        run_md,
    )

    report: dict = {"model": str(args.model)}
    pot, card = load_md_model(args.model)
    report["model_id"] = card.get("model_id")

    # 1. held-out errors
    try:
        samples = load_md_samples(args.labels, level=pot.level)
        val_keys = set(card.get("validation_conformer_keys", []))
        held = [s for s in samples if s.conformer_key in val_keys]
        trained_n = int(card.get("n_train_configurations", 0))
        report["n_labels"] = len(samples)
        report["n_held_out"] = len(held)
        errs = evaluate_energy(pot, held) if held else {}
        report["held_out"] = errs
        print(f"labels: {len(samples)} ok; model trained on {trained_n}, held out {len(held)}")
        if errs:
            print("held-out configurations (vs PySCF):")
            e_mae, e_atom = errs["energy_mae_mev"], errs["energy_mae_mev_per_atom"]
            f_mae, f_kcal = errs["force_mae_mev_per_angstrom"], errs["force_mae_kcal_mol_angstrom"]
            print(f"  energy MAE  {e_mae:8.2f} meV  ({e_atom:.2f} meV/atom)")
            print(f"  force MAE   {f_mae:8.2f} meV/Å  ({f_kcal:.3f} kcal/mol/Å; goal <= 43 meV/Å)")
            print(f"  dipole MAE  {errs['dipole_mae_debye']:8.4f} D")
    except Exception as exc:  # the label store is optional for the speed part
        print(f"held-out errors skipped: {type(exc).__name__}: {exc}")

    # 2. speed and drift
    atoms = read_structure(args.smiles)
    calc = DenSNetCalculator(model=args.model)
    from ase.optimize import BFGS

    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=200)
    s = MDSettings(
        steps=args.speed_steps, equilibration_steps=0, temperature_K=args.temperature_K,
        checkpoint_interval=10**9, seed=1,
    )  # fmt: skip
    import shutil

    shutil.rmtree(args.out / "speed", ignore_errors=True)
    try:
        summ = run_md(atoms, calc, args.out / "speed", settings=s)
    except MDUnstableError as exc:
        print(f"MD speed run failed: {exc}")
        report["md_error"] = str(exc)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
        return
    report["md_steps_per_second"] = summ["steps_per_second"]
    report["nve_drift_mev_per_atom_per_ps"] = 1000 * summ["nve_drift_ev_per_atom_per_ps"]
    print(f"MD: {summ['steps_per_second']:.2f} steps/s ({len(atoms)} atoms, 1 thread); "
          f"NVE drift {report['nve_drift_mev_per_atom_per_ps']:.3f} meV/atom/ps over "
          f"{args.speed_steps} steps")  # fmt: skip

    # 3. IR
    if args.ir_steps:
        from densnet_core.ir import harmonic_ir_pyscf, ir_spectrum, write_ir
        from densnet_core.md import harmonic_reference_cached

        t0 = time.perf_counter()
        s = MDSettings(
            steps=args.ir_steps,
            equilibration_steps=args.equilibration_steps,
            temperature_K=args.temperature_K,
            seed=args.seed,
        )
        run_md(atoms, calc, args.out / "ir", settings=s)
        ts = read_timeseries(args.out / "ir")
        prod = ts[ts["phase"] == "production"]
        wn, y = ir_spectrum(np.stack(prod["dipole_au"].to_numpy()), timestep_fs=s.timestep_fs,
                            temperature_K=args.temperature_K)  # fmt: skip
        ref = None
        if args.reference and args.reference_no_intensities:
            ref = harmonic_ir_pyscf(
                atoms.get_atomic_numbers(), atoms.get_positions(), intensities=False, progress=print
            )
        elif args.reference:  # computed once per --out folder (ir_reference.json)
            ref = harmonic_reference_cached(args.out, atoms, print)
        write_ir(
            args.out / "ir",
            wn,
            y,
            reference=None if ref is None else {**ref, "label": "PySCF harmonic"},
        )
        print(f"IR run: {time.perf_counter() - t0:.0f} s; spectrum in {args.out / 'ir'}")
        print(f"{'band':<12} {'ML-MD':>8} {'PySCF harm.':>12} {'dev %':>7}")
        rows = []
        for name, (lo, hi) in BANDS.items():
            ml = _band_peak(wn, y, lo, hi)
            qm = float("nan")
            if ref is not None:
                qm = _ref_band(
                    np.asarray(ref["frequencies_cm1"]),
                    np.asarray(ref["intensities_km_mol"]),
                    lo,
                    hi,
                )
            dev = 100 * (ml - qm) / qm if np.isfinite(qm) else float("nan")
            rows.append(
                {"band": name, "ml_md_cm1": ml, "pyscf_harmonic_cm1": qm, "deviation_pct": dev}
            )
            print(f"{name:<12} {ml:8.0f} {qm:12.0f} {dev:7.2f}")
        report["ir_peaks"] = rows
        summ_ir = json.loads((args.out / "ir" / "summary.json").read_text())
        report["ir_run"] = {
            "mean_temperature_K": summ_ir["mean_temperature_K"],
            "production_ps": args.ir_steps * s.timestep_fs / 1000,
            "nve_drift_mev_per_atom_per_ps": 1000 * summ_ir["nve_drift_ev_per_atom_per_ps"],
            "nve_start": summ_ir.get("nve_start"),
        }
        print(f"production <T> {summ_ir['mean_temperature_K']:.0f} K over "
              f"{report['ir_run']['production_ps']:.1f} ps")  # fmt: skip
        if ref is not None and "intensities_km_mol" in ref:
            mf, mi = _model_harmonic(atoms, calc)
            n = len(ref["frequencies_cm1"])
            mf = mf[-n:] if len(mf) >= n else None  # drop the 6 zero modes of the model
            modes = _mode_table(
                np.asarray(ref["frequencies_cm1"]),
                np.asarray(ref["intensities_km_mol"]),
                wn,
                y,
                mf,
            )
            print("IR-visible stretch modes (>= 10 % of the band's strongest PySCF intensity) "
                  "vs the nearest ML-MD peak and the model's own harmonic frequency")  # fmt: skip
            print(f"{'band':<12} {'PySCF':>7} {'km/mol':>7} {'ML-MD':>7} {'dev %':>6} "
                  f"{'model harm.':>11} {'dev %':>6}")  # fmt: skip
            for r in modes:
                print(f"{r['band']:<12} {r['pyscf_harmonic_cm1']:7.0f} "
                      f"{r['pyscf_intensity_km_mol']:7.1f} {r['ml_md_peak_cm1']:7.0f} "
                      f"{r['ml_md_deviation_pct']:6.2f} {r['model_harmonic_cm1']:11.0f} "
                      f"{r['model_harmonic_deviation_pct']:6.2f}")  # fmt: skip
            report["ir_modes"] = modes
            if mf is not None:
                report["model_harmonic"] = {
                    "frequencies_cm1": mf.tolist(),
                    "intensities_km_mol": mi[-n:].tolist(),
                }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
