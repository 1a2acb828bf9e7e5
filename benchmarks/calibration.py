"""Calibration of ensemble uncertainty against PySCF labels (issue 7).

Trains (or resumes, or reuses) a K-member ensemble on ``data/seed/labels``
(:func:`densnet_core.ensemble.train_ensemble`: different seeds, bootstrap resamples of the
training molecules, one shared validation split) and prints, for

(a) the validation molecules of the ensemble (no member trained on them), with the raw
    ensemble spread (the variance scale is fitted on this set, so its scaled coverage is
    optimistic and printed only as a check), and
(b) ``data/benchmarks/heterocycles/labels`` (drug-like heterocycles outside the seed set),
    with the calibrated spread (scale fitted on (a)),

Spearman rho(sigma, |error|) for |mu| (D) and alpha_iso (bohr^3), the ±2 sigma coverage, the
MAE, the OOD reasons of the heterocycles, the speed of the batched all-member prediction
(vmap vs loop), and writes ``<out>/calibration.png``. Goals: rho >= 0.4 (alpha), >= 0.3 (mu),
coverage >= 80 %.

Usage::

    python -m benchmarks.calibration [--out runs/calibration-ensemble] [--members 3]
        [--epochs 60] [--preset small] [--val-fraction 0.2] [--threads 1]
    python -m benchmarks.calibration --evaluate models/densnet-ensemble   # no training
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def evaluate_only(ensemble_dir: Path, heldout: str) -> None:
    """Calibration figures of an existing ensemble on a held-out label store (raw and scaled σ).

    The σ scale factors are the ones in the ensemble's manifest (fitted on its validation
    molecules); molecules the ensemble trained on are left out of ``heldout``.
    """
    from densnet_core.calibration import format_report, load_labelled_set
    from densnet_core.ensemble import calibrate_ensemble, load_ensemble

    ens = load_ensemble(ensemble_dir)
    held = load_labelled_set(
        heldout,
        level=ens.level,
        exclude_mol_ids=ens.manifest["training_inchikeys"],
        elements=ens.elements,
    )
    print(f"ensemble {ens.ensemble_id} ({len(ens.members)} members) on {heldout}")
    print(f"    σ scale factors (manifest): {json.dumps(ens.manifest['calibration']['scale'])}")
    for calibrated in (False, True):
        figs = calibrate_ensemble(ens, held, calibrated=calibrated)["metrics"]
        print(format_report(f"{heldout}, {'calibrated' if calibrated else 'raw'} σ", figs))


def main(argv: list[str] | None = None) -> None:
    """Train or load the ensemble and print the calibration figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", default="data/seed/labels")
    ap.add_argument("--heldout", default="data/benchmarks/heterocycles/labels")
    ap.add_argument("--out", default="runs/calibration-ensemble")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--patience", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-bootstrap", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--evaluate",
        metavar="ENSEMBLE_DIR",
        help="no training: evaluate this (already trained and calibrated) ensemble on --heldout",
    )
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from densnet_core.calibration import format_report, load_labelled_set
    from densnet_core.ensemble import load_ensemble, train_ensemble
    from densnet_core.ood import ood_reasons

    if args.evaluate:
        evaluate_only(Path(args.evaluate), args.heldout)
        return
    out = Path(args.out)
    t0 = time.perf_counter()

    def on_member(s: dict) -> None:
        m = (s.get("validation") or {}).get("model") or {}
        print(
            f"{s['name']}: {s['model_id']} {'(finished already)' if s['skipped'] else ''} "
            f"stopped={s['stopped']} best epoch {s['best_epoch']}; val dipole MAE "
            f"{m.get('dipole_mae_debye', float('nan')):.3f} D, alpha_iso MAPE "
            f"{m.get('alpha_iso_mape_pct', float('nan')):.2f} %  "
            f"[{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )

    res = train_ensemble(
        args.labels,
        out,
        members=args.members,
        bootstrap=not args.no_bootstrap,
        seed=args.seed,
        extra_labels={"heterocycles": args.heldout} if Path(args.heldout).is_dir() else None,
        on_member=on_member,
        epochs=args.epochs,
        preset=args.preset,
        val_fraction=args.val_fraction,
        patience=args.patience,
        grid_samples=0,
        metric_cache_dir=out / "metric-cache",
    )
    m = res.manifest
    cal = m.get("calibration") or {}
    print(
        f"\nensemble {m['ensemble_id']}: {m['n_members']} members, "
        f"{len(m['training_inchikeys'])} training molecules (union), "
        f"{len(m['validation_inchikeys'])} validation molecules, "
        f"{len(m['training_ring_systems'])} training ring systems; "
        f"train+calibrate {time.perf_counter() - t0:.0f} s"
    )
    if not cal:
        print("not calibrated (no validation molecules or one member)")
        return
    print(format_report("(a) validation molecules, raw σ", cal["validation"]))
    print(f"    σ scale factors (fitted on (a)): {json.dumps(cal['scale'])}")
    print(
        f"    ±2σ coverage on (a) with scaled σ: {json.dumps(cal['validation_scaled_coverage2'])}"
    )
    print(f"    OOD thresholds (q={cal['ood_quantile']}): {json.dumps(cal['ood_thresholds'])}")
    for name, figs in (cal.get("extra") or {}).items():
        if "error" in figs or not figs.get("n"):
            print(f"(b) {name}: no usable labels ({figs.get('error', 'none')})")
            continue
        print(format_report(f"(b) {name}, calibrated σ", figs))

    ens = load_ensemble(out)
    if Path(args.heldout).is_dir():
        held = load_labelled_set(
            args.heldout,
            level=ens.level,
            exclude_mol_ids=m["training_inchikeys"],
            elements=ens.elements,
        )
        pred = ens.predict_inputs(held.inputs)
        reasons = ood_reasons(
            held.smiles, held.numbers, pred.dipole_debye_std, pred.alpha_iso_au_std, ens.manifest
        )
        print("\nheterocycles, per conformer:")
        for i, name in enumerate(held.names):
            print(
                f"  {name:<28} |mu| {pred.dipole_debye[i]:6.3f} ± {pred.dipole_debye_std[i]:.3f} "
                f"(ref {held.dipole_debye[i]:6.3f}) D   alpha_iso {pred.alpha_iso_au[i]:7.2f} ± "
                f"{pred.alpha_iso_au_std[i]:.2f} (ref {held.alpha_iso_au[i]:7.2f}) au   "
                f"ood: {reasons[i] or '-'}"
            )

    # speed of the all-member prediction: vmap vs a loop over members, same collated batch
    val = load_labelled_set(args.labels, level=ens.level, elements=ens.elements)
    inputs = (val.inputs * (64 // max(1, len(val)) + 1))[:64]
    batch = ens.collate(inputs, dtype=torch.float32)
    timings = {}
    for mode in ("loop", "vmap"):
        e = load_ensemble(out, mode=mode)
        e.predict_batch(batch)
        t = time.perf_counter()
        for _ in range(3):
            e.predict_batch(batch)
        timings[mode] = (time.perf_counter() - t) / 3
    print(
        f"\nall-member prediction, 64 molecules, {args.members} members, {args.threads} thread(s): "
        + ", ".join(f"{k} {v:.3f} s ({64 / v:.0f} mol/s)" for k, v in timings.items())
    )
    print(f"plot: {out / 'calibration.png'}")


if __name__ == "__main__":
    main()
