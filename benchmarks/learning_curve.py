"""Learning curve: how the held-out error falls with the number of training molecules.

Takes a trained reference model and its label store. For each fraction f it trains the same
recipe (``densnet_core.train.train``: preset, epochs, batch size, learning rate, seed) on a
random f of the reference's *training* molecules, nested (the molecules of a smaller
fraction are in every larger one), and validates on exactly the reference's *validation*
molecules, so every point is scored on the same molecules. The reference itself is the
point f = 1. Then it fits err = a N^-b through the dipole errors (least squares in log-log)
and says how many training molecules the fit needs for a target error.

Usage::

    python -m benchmarks.learning_curve --model models/densnet-default \\
        --labels data/seed/labels --work /tmp/lc --fractions 0.125 0.25 0.5 \\
        [--preset wide --epochs 400 --batch-size 4 --lr 2e-3 --seed 0] [--target-debye 0.1]

Each fraction writes ``WORK/labels-<f>`` (a label store holding only its molecules) and
``WORK/model-<f>``; rerunning resumes unfinished training and reuses finished runs. Training
costs about f times the reference's epoch time per epoch (CPU: ~3 s per epoch per 100
molecules of ~15 atoms for ``wide``). The curve says whether more labels of the same kind
are what the error needs, and roughly how many.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densnet_core import keys as K

#: fixed: the subsets of a reference model must not change between runs (resume, reuse)
SUBSET_SEED = 12345


def nested_subsets(
    training_ids: Sequence[str], fractions: Sequence[float], *, seed: int = SUBSET_SEED
) -> dict[float, list[str]]:
    """Random nested subsets of the training molecules, one per fraction.

    Parameters
    ----------
    training_ids
        Training molecule ids (InChIKeys) of the reference model; order does not matter.
    fractions
        Fractions in (0, 1].

    Returns
    -------
    dict
        fraction -> sorted ids; round(f * n) of them (at least 1), and every subset contains
        the subsets of the smaller fractions.
    """
    ids = sorted(set(training_ids))
    if not ids:
        raise ValueError("no training molecules")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    out = {}
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"fraction {f} is not in (0, 1]")
        out[float(f)] = sorted(order[: max(1, round(f * len(ids)))])
    return out


def power_law_fit(n: Sequence[float], err: Sequence[float]) -> tuple[float, float]:
    """(a, b) of err = a n^-b, least squares in log-log; needs two or more distinct n."""
    x, y = np.log(np.asarray(n, dtype=float)), np.log(np.asarray(err, dtype=float))
    if len(set(x.tolist())) < 2:
        raise ValueError("a power law needs two or more distinct training-set sizes")
    slope, intercept = np.polyfit(x, y, 1)
    return float(math.exp(intercept)), float(-slope)


def molecules_for(target: float, a: float, b: float) -> float:
    """Training molecules at which err = a n^-b reaches ``target`` (inf if b <= 0)."""
    return (a / target) ** (1.0 / b) if b > 0 else math.inf


def subset_store(labels_dir: Path, out: Path, mol_ids: set[str]) -> Path:
    """A label store (one part file + level.json) of the rows of ``mol_ids``; built once."""
    from densnet_core.store import append_part, read_dataset

    if out.exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    df = read_dataset(labels_dir, "labels")
    append_part(df[df[K.MOL_ID].isin(mol_ids)].reset_index(drop=True), tmp, "labels")
    level = labels_dir / "level.json"
    if level.is_file():
        shutil.copy(level, tmp / "level.json")
    tmp.rename(out)
    return out


def _point(card: dict[str, Any], fraction: float, model_dir: Path) -> dict[str, Any]:
    val = card["metrics"]["validation"]["model"]
    return {
        "fraction": fraction,
        "n_train_molecules": int(card["n_train_molecules"]),
        "n_val_molecules": int(card["n_val_molecules"]),
        "best_epoch": card.get("best_epoch"),
        "dipole_mae_debye": float(val["dipole_mae_debye"]),
        "density_nmae_pct": float(val.get("density_nmae_pct", math.nan)),
        "alpha_iso_mape_pct": float(val.get("alpha_iso_mape_pct", math.nan)),
        "model_dir": str(model_dir),
    }


def finished(model_dir: Path, epochs: int) -> bool:
    """Whether a training folder holds a model whose run reached ``epochs``."""
    from densnet_core.train import load_checkpoint

    if not (model_dir / "model_card.json").is_file():
        return False
    ck = load_checkpoint(model_dir)
    return ck is not None and int(ck["epoch"]) >= epochs


def run(args: argparse.Namespace) -> dict[str, Any]:
    from densnet_core.train import train

    ref_dir, labels, work = Path(args.model), Path(args.labels), Path(args.work)
    card = json.loads((ref_dir / "model_card.json").read_text())
    val_ids = sorted(card["validation_inchikeys"])
    subsets = nested_subsets(card["training_inchikeys"], [f for f in args.fractions if f < 1])
    points = []
    for f, ids in sorted(subsets.items()):
        store = subset_store(labels, work / f"labels-{f:g}", set(ids) | set(val_ids))
        out = work / f"model-{f:g}"
        print(f"fraction {f:g}: {len(ids)} training molecules -> {out}", flush=True)
        if not finished(out, args.epochs):
            train(
                store,
                out,
                preset=args.preset,
                epochs=args.epochs,
                patience=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=args.seed,
                validation_mol_ids=val_ids,
                metric_cache_dir=work / "metric-cache",
                progress=(lambda r: print(r, flush=True)) if args.verbose else None,
            )
        points.append(_point(json.loads((out / "model_card.json").read_text()), f, out))
    points.append(_point(card, 1.0, ref_dir))
    n = [p["n_train_molecules"] for p in points]
    a, b = power_law_fit(n, [p["dipole_mae_debye"] for p in points])
    return {
        "reference": str(ref_dir),
        "labels": str(labels),
        "recipe": {k: getattr(args, k) for k in ("preset", "epochs", "batch_size", "lr", "seed")},
        "points": points,
        "dipole_fit": {"a": a, "b": b, "target_debye": args.target_debye},
        "molecules_for_target": molecules_for(args.target_debye, a, b),
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"validation: the {result['points'][-1]['n_val_molecules']} validation molecules of "
        f"{result['reference']} (every point)",
        f"{'fraction':>8} {'train mols':>10} {'best ep':>7} {'μ MAE D':>8} {'NMAE %':>7} "
        f"{'α_iso MAPE %':>12}",
    ]
    for p in result["points"]:
        lines.append(
            f"{p['fraction']:>8.3g} {p['n_train_molecules']:>10d} {p['best_epoch']!s:>7} "
            f"{p['dipole_mae_debye']:>8.3f} {p['density_nmae_pct']:>7.2f} "
            f"{p['alpha_iso_mape_pct']:>12.2f}"
        )
    fit = result["dipole_fit"]
    lines.append(
        f"dipole MAE ≈ {fit['a']:.3g} N^-{fit['b']:.2f}; {fit['target_debye']:g} D at "
        f"N ≈ {result['molecules_for_target']:.0f} training molecules of the same kind "
        "(an extrapolation)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="reference model directory (its card)")
    p.add_argument("--labels", required=True, help="the label store it was trained on")
    p.add_argument("--work", required=True, help="folder for the subsets and their models")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5])
    p.add_argument("--preset", default="wide")
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-debye", type=float, default=0.10)
    p.add_argument("--json", help="also write the numbers here")
    p.add_argument("--verbose", action="store_true", help="print every epoch")
    args = p.parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"numbers saved to {args.json}")


if __name__ == "__main__":
    main(sys.argv[1:])
