"""Active learning vs random picking at the same label budget (issue 7, items 3-4).

On the drug-like heterocycles outside the seed set (``data/benchmarks/heterocycles/labels``):

1. split the labelled heterocycle *molecules* into a fixed test half and a pool half (seeded);
2. start from an ensemble trained on the seed labels (``--init``, default
   ``runs/calibration-ensemble``; trained here if missing);
3. one round with a budget of B molecules, picked from the pool
   (a) by active learning (:func:`densnet_core.active_learning.select_uncertain_diverse`:
       the most uncertain, diverse among themselves) and
   (b) at random (``--random-seeds`` draws), and
   (c) no picks at all (control: the same fine-tuning on the seed labels only);
4. fine-tune every member of the ensemble with identical settings on the seed labels + the
   picks (:func:`densnet_core.active_learning.fine_tune_ensemble`; the seed labels are
   frozen as a link snapshot at the start, so every run sees the same seed data);
5. print test-set errors of the ensemble mean against the PySCF labels before and after:
   dipole MAE (D), alpha_iso MAPE (%), mean sigma of |mu| (D) and mean sigma_alpha /
   alpha_iso (calibrated when the fine-tuned ensembles keep validation molecules, raw member
   spreads otherwise); write ``<out>/results.json``.

The pool's labels are in the label store already, so "labelling" a pick is a lookup
(:func:`densnet_core.active_learning.copy_known_labels`): the benchmark costs no PySCF time.
Reruns reuse finished fine-tunings (resumable members).

Usage::

    python -m benchmarks.active_learning [--budget 2] [--random-seeds 3] [--epochs 20]
        [--init runs/calibration-ensemble] [--out runs/al-benchmark] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

METRICS = (
    ("dipole_mae_debye", "dipole MAE (D)", ".3f"),
    ("alpha_iso_mape_pct", "α_iso MAPE (%)", ".2f"),
    ("mean_std_dipole_debye", "mean σ|μ| (D)", ".3f"),
    ("mean_rel_std_alpha", "mean σα/α", ".4f"),
)


def split_molecules(mol_ids: list[str], *, seed: int) -> tuple[list[str], list[str]]:
    """(test, pool): the sorted molecules shuffled with ``seed``, the first half (rounded up)
    is the test set."""
    ids = sorted(set(mol_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = math.ceil(len(ids) / 2)
    test = sorted(ids[i] for i in order[:n_test])
    pool = sorted(ids[i] for i in order[n_test:])
    return test, pool


def _check_same_run(rdir: Path, picked: list[str], snapshot: Path, held: set[str]) -> None:
    """Refuse to reuse a run folder made for other picks or another held-out split (its
    label view and fine-tuned members would be stale); record them on first use."""
    ident = {
        "picked_mol_ids": sorted(picked),
        "held_out_mol_ids": sorted(held),
        "seed_snapshot_parts": sorted(p.name for p in snapshot.glob("part-*.parquet")),
    }
    path = rdir / "run.json"
    if path.is_file():
        if json.loads(path.read_text()) != ident:
            raise SystemExit(
                f"{rdir} was made for other picks or another held-out split (the label stores "
                "changed since); use a new --out"
            )
        return
    rdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ident, indent=1) + "\n")


def _fmt(x: float, spec: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed-labels", default="data/seed/labels")
    ap.add_argument("--heldout", default="data/benchmarks/heterocycles/labels")
    ap.add_argument("--init", default="runs/calibration-ensemble")
    ap.add_argument("--out", default="runs/al-benchmark")
    ap.add_argument("--budget", type=int, default=2)
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--min-molecules", type=int, default=6)
    ap.add_argument("--no-control", action="store_true", help="skip the no-pick control run")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from densnet_core import keys as K
    from densnet_core.active_learning import (
        copy_known_labels,
        evaluate_ensemble,
        fine_tune_ensemble,
        label_view,
        screen_pool,
        select_random,
        select_uncertain_diverse,
    )
    from densnet_core.calibration import load_labelled_set
    from densnet_core.dataset import NoUsableLabelsError, load_label_rows
    from densnet_core.ensemble import is_ensemble_dir, load_ensemble, train_ensemble

    t_wall, t_cpu = time.perf_counter(), time.process_time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    init = Path(args.init)
    if not is_ensemble_dir(init):
        init = out / "init-ensemble"
        print(f"{args.init} holds no ensemble; training one (3 members, small) into {init}")
        train_ensemble(
            args.seed_labels,
            init,
            members=3,
            epochs=60,
            preset="small",
            val_fraction=0.2,
            grid_samples=0,
            metric_cache_dir=out / "metric-cache",
        )
    ens0 = load_ensemble(init)
    level = ens0.level
    # molecules the initial ensemble trained on; its validation molecules were never trained
    # on, so they may be held out here (relevant when --heldout is the seed store itself)
    seen = set(ens0.manifest.get("training_inchikeys") or [])
    try:
        rows = load_label_rows(args.heldout, level=level)
    except NoUsableLabelsError as exc:
        print(f"no usable heterocycle labels: {exc}")
        return 2
    rows = rows[~rows[K.MOL_ID].isin(seen)]
    allowed = {int(z) for z in ens0.elements}
    rows = rows[[set(int(z) for z in n) <= allowed for n in rows[K.NUMBERS]]]
    mol_ids = sorted(set(rows[K.MOL_ID]))
    print(
        f"held-out labels: {len(rows)} conformers of {len(mol_ids)} molecules outside the "
        f"training set of {ens0.ensemble_id} ({args.heldout})"
    )
    if len(mol_ids) < args.min_molecules:
        print(
            f"refusing to run: {len(mol_ids)} labelled heterocycles < {args.min_molecules} "
            "(a test half and a pool half of at least 3 each are needed); wait for the "
            "labelling of data/benchmarks/heterocycles to go on, or pass --min-molecules"
        )
        return 2
    test_ids, pool_ids = split_molecules(mol_ids, seed=args.split_seed)
    if len(pool_ids) <= args.budget:
        print(f"refusing to run: the pool half has {len(pool_ids)} molecules <= budget")
        return 2
    names = dict(zip(rows[K.MOL_ID], rows[K.NAME], strict=True))
    print(f"test half ({len(test_ids)}): {', '.join(names[m] for m in test_ids)}")
    print(f"pool half ({len(pool_ids)}): {', '.join(names[m] for m in pool_ids)}")

    test = load_labelled_set(args.heldout, level=level, mol_ids=test_ids, elements=ens0.elements)
    pool_rows = rows[rows[K.MOL_ID].isin(set(pool_ids))].to_dict("records")
    screened = screen_pool(ens0, pool_rows)
    held = set(test_ids) | set(pool_ids)
    val_ids = [m for m in ens0.manifest.get("validation_inchikeys") or [] if m not in held]
    # without validation molecules the fine-tuned ensembles are not calibrated: compare raw
    # member spreads before and after then
    calibrated = bool(val_ids)
    before = evaluate_ensemble(ens0, test, calibrated=calibrated)

    runs: dict[str, Any] = {}
    al = select_uncertain_diverse(screened, args.budget, exclude_mol_ids=seen, seed=0)
    runs["active_learning"] = al
    for s in range(args.random_seeds):
        runs[f"random-{s}"] = select_random(screened, args.budget, exclude_mol_ids=seen, seed=s)
    if not args.no_control:
        runs["no_picks"] = al.iloc[0:0]
    print("\npool, most uncertain first (calibrated σ of the initial ensemble):")
    for r in screened.sort_values(K.DIPOLE_DEBYE_STD, ascending=False).itertuples():
        print(
            f"  {r.name:<28} σ|μ| {r.dipole_debye_std:.3f} D   σα {r.alpha_iso_au_std:.2f} "
            f"(α {r.alpha_iso_au:.1f}) au"
        )

    # one frozen snapshot of the seed labels (the store may still grow while this runs)
    # and without any held-out molecule (test or pool): no leak through the seed store
    seed_snapshot = label_view(
        out / "seed-labels-snapshot", [args.seed_labels], exclude_mol_ids=held
    )
    if len(val_ids) < len(ens0.manifest.get("validation_inchikeys") or []):
        print(
            f"note: {len(ens0.manifest['validation_inchikeys']) - len(val_ids)} validation "
            f"molecules of {ens0.ensemble_id} are held out here; fine-tuning validates on the "
            f"other {len(val_ids)}"
            + (
                " (none: no calibration after fine-tuning; the σ columns are raw member spreads)"
                if not val_ids
                else ""
            )
        )
    settings = dict(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        grid_samples=0,
        metric_cache_dir=out / "metric-cache",
        validation_mol_ids=val_ids,
    )
    results: dict[str, Any] = {}
    for name, picks in runs.items():
        t0, c0 = time.perf_counter(), time.process_time()
        rdir = out / name
        picked = list(picks[K.MOL_ID])
        labels = rdir / "labels"
        _check_same_run(rdir, picked, seed_snapshot, held)
        pick_rows = [r for r in pool_rows if r[K.MOL_ID] in set(picked)]
        n_copied = copy_known_labels(pick_rows, [args.heldout], labels, level)
        sources = [seed_snapshot] + ([labels] if picked else [])
        view = label_view(rdir / "train-labels", sources)
        fine_tune_ensemble(view, init, rdir / "ensemble", **settings)
        after = evaluate_ensemble(load_ensemble(rdir / "ensemble"), test, calibrated=calibrated)
        results[name] = {
            "picked": [names[m] for m in picked],
            "picked_mol_ids": picked,
            "labels_looked_up": n_copied,
            "after": after,
            "wall_seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
        }
        print(
            f"{name}: picked {results[name]['picked'] or '-'} (labels looked up in the store: "
            f"{n_copied}); fine-tuned in {results[name]['wall_seconds']:.0f} s wall, "
            f"{results[name]['cpu_seconds']:.0f} CPU-s; test dipole MAE "
            f"{after['dipole_mae_debye']:.3f} D, α MAPE {after['alpha_iso_mape_pct']:.2f} %",
            flush=True,
        )

    rand = [v["after"] for k, v in results.items() if k.startswith("random-")]
    header = "| run | picks | " + " | ".join(f"{t} before → after" for _, t, _ in METRICS) + " |"
    lines = [header, "|" + "---|" * (2 + len(METRICS))]

    def row(label: str, picks: str, after: dict[str, float], spread: dict | None = None) -> str:
        cells = []
        for key, _, spec in METRICS:
            a = _fmt(after[key], spec)
            if spread is not None:
                a += f" ± {_fmt(spread[key], spec)}"
            cells.append(f"{_fmt(before[key], spec)} → {a}")
        return f"| {label} | {picks} | " + " | ".join(cells) + " |"

    lines.append(
        row(
            "active learning",
            ", ".join(results["active_learning"]["picked"]),
            results["active_learning"]["after"],
        )
    )
    for k, v in results.items():
        if k.startswith("random-"):
            lines.append(row(k, ", ".join(v["picked"]), v["after"]))
    if rand:
        mean = {key: float(np.mean([r[key] for r in rand])) for key, _, _ in METRICS}
        sd = {
            key: float(np.std([r[key] for r in rand], ddof=1)) if len(rand) > 1 else math.nan
            for key, _, _ in METRICS
        }
        lines.append(row(f"random (mean ± sd, {len(rand)} seeds)", "", mean, sd))
    if "no_picks" in results:
        lines.append(row("no picks (control)", "-", results["no_picks"]["after"]))
    wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    print(
        f"\nOne round, budget {args.budget} molecules, {args.epochs} fine-tuning epochs "
        f"(lr {args.lr}), ensemble {ens0.ensemble_id} ({len(ens0.members)} members); test set: "
        f"{len(test)} heterocycle conformers. Labels of the picks were looked up in "
        f"{args.heldout} (computed before), not computed.\n"
    )
    print("\n".join(lines))
    verdict = {}
    if rand:
        for key, _, _ in METRICS[:2]:
            verdict[key] = bool(results["active_learning"]["after"][key] < mean[key])
        print(
            "\nactive learning beats the random mean on: "
            + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in verdict.items())
        )
    print(f"total: {wall:.0f} s wall, {cpu:.0f} CPU-s (this process)")
    payload = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "args": vars(args),
        "init_ensemble": ens0.ensemble_id,
        "n_heterocycle_molecules": len(mol_ids),
        "test": [names[m] for m in test_ids],
        "pool": [names[m] for m in pool_ids],
        "sigma_calibrated": calibrated,
        "before": before,
        "runs": results,
        "al_beats_random_mean": verdict,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "table": lines,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
