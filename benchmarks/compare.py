"""Compare models on the molecules that none of them trained on.

Each ``benchmarks.accuracy --json`` file scores one model on *its own* held-out set (the seed
molecules outside its card's ``training_inchikeys``) and on the heterocycles. Two models
trained on different label snapshots or splits therefore hold out different molecules, and
their means are not comparable. This script reads several such files and recomputes every
model's metrics on the conformers present in all of them (matched by ``conformer_key``), set
by set, with the GFN2-xTB row wherever a file carries xTB numbers for those conformers.

Usage::

    python -m benchmarks.compare A.json B.json [C.json ...] [--name A --name B ...]
        [--per-molecule]

The numbers are those of :func:`densnet_core.metrics.observable_summary` (dipole MAE = mean
|mu - mu_ref| of the vectors, D; alpha_iso MAE bohr^3 and MAPE %) and the mean density NMAE
against the label fit (%), so they mean the same as in ``benchmarks.accuracy``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy import COLUMNS as ACCURACY_COLUMNS
from benchmarks.accuracy import _cell, _dipole_err
from densnet_core.losses import nan_mean
from densnet_core.metrics import observable_summary

SETS = ("held_out", "heterocycles")
#: The accuracy benchmark's columns but the exact-SCF NMAE (recomputed for some files only).
COLUMNS = tuple(c for c in ACCURACY_COLUMNS if c[0] != "nmae_scf_pct")


def _rows(payload: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    """conformer_key -> per-conformer record of one set of one accuracy JSON."""
    per = payload.get("sets", {}).get(key, {}).get("per_conformer") or []
    return {r["conformer_key"]: r for r in per}


def _array(records: Sequence[dict[str, Any]], field: str, shape: tuple[int, ...]) -> np.ndarray:
    """Stack ``field`` of ``records`` into (B, *shape); None entries become NaN."""
    out = np.full((len(records), *shape), np.nan)
    for i, r in enumerate(records):
        value = r.get(field)
        if value is not None:
            out[i] = np.reshape(np.asarray(value, dtype=float), shape)
    return out


def summarise(records: Sequence[dict[str, Any]], who: str = "model") -> dict[str, float]:
    """Observable and density metrics of ``who`` ("model" or "xtb") over ``records``."""
    dip_ref = _array(records, "dipole_ref_au", (3,))
    alpha_ref = _array(records, "alpha_ref_au", (3, 3))
    out = observable_summary(
        _array(records, f"{who}_dipole_au", (3,)),
        dip_ref,
        _array(records, f"{who}_alpha_au", (3, 3)),
        alpha_ref,
    )
    out["nmae_fit_pct"] = nan_mean([r.get(f"{who}_nmae_fit_pct", math.nan) for r in records])
    return out


def compare(payloads: Sequence[dict[str, Any]], key: str) -> tuple[list[str], list[dict]]:
    """The shared conformer keys of set ``key`` and each payload's metrics on them."""
    return _compare_tables([_rows(p, key) for p in payloads])


def _compare_tables(tables: Sequence[dict[str, dict[str, Any]]]) -> tuple[list[str], list[dict]]:
    """:func:`compare` on the per-conformer tables (:func:`_rows`) of one set."""
    shared = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    results = []
    for t in tables:
        recs = [t[k] for k in shared]
        res = {"model": summarise(recs, "model")}
        xtb = summarise(recs, "xtb")
        if xtb["n_dipole"] > 0:
            res["xtb"] = xtb
        results.append(res)
    return shared, results


def format_comparison(
    names: Sequence[str], payloads: Sequence[dict[str, Any]], *, per_molecule: bool = False
) -> str:
    """Plain-text tables, one per set, of every model on the conformers all of them hold out."""
    lines: list[str] = []
    w0, w = max(16, *(len(n) + 2 for n in names)), 13
    for key in SETS:
        tables = [_rows(p, key) for p in payloads]
        shared, results = _compare_tables(tables)
        counts = ", ".join(f"{n}: {len(t)}" for n, t in zip(names, tables, strict=True))
        lines.append(f"{key}: {len(shared)} conformers held out of every model ({counts})")
        if not shared:
            lines.append("")
            continue
        lines.append(f"  {'model':<{w0}s}" + "".join(f"{h:>{w}s}" for _, h, _ in COLUMNS))
        xtb_row = None
        for name, res in zip(names, results, strict=True):
            m = res["model"]
            lines.append(f"  {name:<{w0}s}" + "".join(_cell(m.get(c), f, w) for c, _, f in COLUMNS))
            xtb_row = xtb_row or res.get("xtb")
        if xtb_row is not None:
            lines.append(
                f"  {'GFN2-xTB':<{w0}s}"
                + "".join(_cell(xtb_row.get(c), f, w) for c, _, f in COLUMNS)
            )
        if per_molecule:
            lines.append(f"  {'conformer':<28s}" + "".join(f"{'Δμ ' + n[:8]:>12s}" for n in names))
            for k in shared:
                ref = np.asarray(tables[0][k]["dipole_ref_au"], dtype=float)
                errs = [_dipole_err(t[k]["model_dipole_au"], ref) for t in tables]
                lines.append(
                    f"  {tables[0][k]['name'][:27]:<28s}" + "".join(f"{e:12.3f}" for e in errs)
                )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, nargs="+", help="benchmarks.accuracy --json outputs")
    ap.add_argument(
        "--name", action="append", default=None, help="a column name per file (default: model_id)"
    )
    ap.add_argument("--per-molecule", action="store_true", help="also print every conformer")
    args = ap.parse_args(argv)
    payloads = [json.loads(p.read_text()) for p in args.json]
    names = args.name or [
        str(p.get("model_id", path.stem)) for p, path in zip(payloads, args.json, strict=True)
    ]
    if len(names) != len(payloads):
        print("error: give one --name per JSON file", file=sys.stderr)
        return 2
    print(format_comparison(names, payloads, per_molecule=args.per_molecule), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
