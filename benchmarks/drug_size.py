"""Dipoles of drug-sized molecules: the model against GFN2-xTB and against PySCF.

The seed molecules have at most 11 heavy atoms; the compounds users screen have ~33 (the ChEMBL
FreeWilson series shipped in RDKit). This benchmark draws ``--n`` of them (``numpy`` seed
``--seed``), embeds each with the conformer stage (lowest MMFF conformer), predicts with every
``--model`` and computes:

- the GFN2-xTB dipole (tblite), always;
- with ``--pyscf``, the SCF dipole at the model's level of theory (B3LYP/def2-SVPD, density
  fitting; no forces, no CPKS) - the reference the model was trained to reproduce. Each SCF is
  cached as one JSON file per conformer key and level in ``--cache`` (written atomically), so an
  interrupted run continues where it stopped and a second run costs nothing.

Printed: one line per molecule (heavy atoms, |mu| of every method, the vector error of every
model against the reference) and the means: |mu|, mean |mu - mu_ref| of the dipole vectors
against PySCF (when there) and against xTB, and xTB's own error against PySCF.

Run: ``python -m benchmarks.drug_size [--model DIR ...] [--n 15] [--seed 0] [--pyscf]
[--max-pyscf K] [--threads T] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from densnet_core import keys as K
from densnet_core.inputs import CHEMBL_SERIES, read_records
from densnet_core.units import BOHR_PER_ANGSTROM, DEBYE_PER_AU

REPO = Path(__file__).resolve().parents[1]


def draw(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (name, SMILES) of the ChEMBL series, drawn without replacement (file order kept)."""
    rows = [(f"CHEMBL-{r.name}", r.smiles) for r in read_records(CHEMBL_SERIES) if r.smiles]
    pick = np.sort(
        np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    )
    return [rows[i] for i in pick]


def embed(molecules: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The lowest-energy conformer row of every molecule (failed rows kept, with their status)."""
    from densnet_core.conformers import generate_conformers

    out = []
    for index, (name, smi) in enumerate(molecules):
        rows = generate_conformers({"record_index": index, "name": name, "smiles": smi})
        out.append(rows[0])
    return out


def _positions_bohr(row: dict[str, Any]) -> np.ndarray:
    return np.array([np.asarray(p, float) for p in row[K.POSITIONS_ANGSTROM]]) * BOHR_PER_ANGSTROM


def pyscf_dipole_au(row: dict[str, Any], level: Any, cache: Path, threads: int) -> dict[str, Any]:
    """SCF dipole (e bohr, about the centre of nuclear charge) at ``level``, cached on disk."""
    from densnet_core.qm import build_mol, dipole_au, run_scf

    path = cache / f"{row[K.CONFORMER_KEY]}-{level.hash}.json"
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    mol = build_mol(
        row[K.NUMBERS],
        _positions_bohr(row),
        charge=int(row[K.CHARGE]),
        multiplicity=int(row[K.MULTIPLICITY]),
        basis=level.basis,
    )
    res = run_scf(mol, level, threads=threads)
    out = {
        "name": row[K.NAME],
        "converged": bool(res.converged),
        "dipole_au": dipole_au(res.mf).tolist() if res.converged else None,
        "n_ao": int(mol.nao),
        "wall_seconds": time.perf_counter() - t0,
    }
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", type=Path, help="model directory (repeatable)")
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pyscf", action="store_true", help="also the PySCF SCF dipole (cached)")
    ap.add_argument("--max-pyscf", type=int, default=None, help="at most K new SCFs this run")
    ap.add_argument("--cache", type=Path, default=REPO / "data" / "benchmarks" / "drug_size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from densnet_core.predict import Predictor, default_model_dir
    from densnet_core.xtb import xtb_dipole_au

    torch.set_num_threads(args.threads)
    model_dirs = args.model or [default_model_dir()]
    rows = embed(draw(args.n, args.seed))
    ok = [r for r in rows if r[K.STATUS] == K.STATUS_OK]
    for r in rows:
        if r[K.STATUS] != K.STATUS_OK:
            print(f"skipped {r[K.NAME]}: {r[K.STATUS]} {r[K.ERROR]}")
    preds: dict[str, list[np.ndarray]] = {}
    level = None
    for d in model_dirs:
        p = Predictor(d, threads=args.threads)
        level = level or p.info.level
        out = p.predict_rows(ok)
        preds[p.model_id] = [np.asarray(o[K.DIPOLE_AU], float) for o in out]
    xtb = [xtb_dipole_au(r[K.NUMBERS], _positions_bohr(r)) for r in ok]
    ref: list[np.ndarray | None] = [None] * len(ok)
    new_scf = 0
    if args.pyscf:
        for i, r in enumerate(ok):
            cached = (args.cache / f"{r[K.CONFORMER_KEY]}-{level.hash}.json").is_file()
            if not cached and args.max_pyscf is not None and new_scf >= args.max_pyscf:
                continue
            new_scf += not cached
            res = pyscf_dipole_au(r, level, args.cache, args.threads)
            print(
                f"  PySCF {r[K.NAME]}: {res['n_ao']} AOs, {res['wall_seconds']:.0f} s"
                f"{'' if cached else ' (new)'}{'' if res['converged'] else ' NOT CONVERGED'}"
            )
            if res["dipole_au"] is not None:
                ref[i] = np.asarray(res["dipole_au"], float)

    def norm(v: np.ndarray) -> float:
        return float(np.linalg.norm(v) * DEBYE_PER_AU)

    names = list(preds)
    print(f"\n{len(ok)} molecules; dipoles in D; err = |mu - mu_ref| of the dipole vectors")
    for k, n in enumerate(names):
        print(f"  model {k + 1} = {n}")
    head = f"{'name':20s} heavy  PySCF |mu|  xTB |mu|" + "".join(
        f" | m{k + 1} |mu| err-xTB err-PySCF" for k in range(len(names))
    )
    print(head)
    report: dict[str, Any] = {"molecules": [], "models": names}
    for i, r in enumerate(ok):
        pyscf = "-" if ref[i] is None else f"{norm(ref[i]):.2f}"
        line = f"{r[K.NAME]:20s} {r[K.N_HEAVY_ATOMS]:5d} {pyscf:>11s} {norm(xtb[i]):9.2f}"
        entry = {
            "name": r[K.NAME],
            "smiles": r[K.SMILES],
            "n_heavy_atoms": int(r[K.N_HEAVY_ATOMS]),
            "xtb_debye": norm(xtb[i]),
            "pyscf_debye": None if ref[i] is None else norm(ref[i]),
        }
        for n in names:
            mu = preds[n][i]
            e_ref = "-" if ref[i] is None else f"{norm(mu - ref[i]):.2f}"
            line += f" | {norm(mu):7.2f} {norm(mu - xtb[i]):7.2f} {e_ref:>9s}"
            entry[n] = {
                "debye": norm(mu),
                "err_xtb_debye": norm(mu - xtb[i]),
                "err_pyscf_debye": None if ref[i] is None else norm(mu - ref[i]),
            }
        report["molecules"].append(entry)
        print(line)
    have = [i for i in range(len(ok)) if ref[i] is not None]
    print(f"\nmean heavy atoms {np.mean([r[K.N_HEAVY_ATOMS] for r in ok]):.1f}")
    print(f"GFN2-xTB: mean |mu| {np.mean([norm(v) for v in xtb]):.2f} D", end="")
    if have:
        err = np.mean([norm(xtb[i] - ref[i]) for i in have])
        mu_ref = np.mean([norm(ref[i]) for i in have])
        print(f"; vs PySCF ({len(have)}): {err:.2f} D (PySCF mean |mu| {mu_ref:.2f} D)")
        report["xtb_err_pyscf_debye"] = float(err)
    else:
        print()
    for n in names:
        e_x = np.mean([norm(preds[n][i] - xtb[i]) for i in range(len(ok))])
        msg = f"{n}: mean |mu| {np.mean([norm(v) for v in preds[n]]):.2f} D; vs xTB {e_x:.2f} D"
        report[n] = {"err_xtb_debye": float(e_x)}
        if have:
            e_p = np.mean([norm(preds[n][i] - ref[i]) for i in have])
            msg += f"; vs PySCF ({len(have)}): {e_p:.2f} D"
            report[n]["err_pyscf_debye"] = float(e_p)
        print(msg)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
