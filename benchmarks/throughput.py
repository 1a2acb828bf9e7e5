"""Throughput of ``densnet predict`` on the ChEMBL FreeWilson series (1,017 compounds), 3D input.

Outside the timing: the series is embedded once (ETKDG + MMFF, the conformer stage) into a
conformers table, and untrained model directories are built for the default aux basis
(def2-universal-jkfit) with the "default" and "small" presets (random heads: the same compute
as a trained model). Then, per preset:

(a) the library path: ``Predictor.predict_rows`` on all rows — 1 torch thread, 2 threads, and
    2 processes x 1 thread — with the time split into featurisation, collation (incl. the
    radius graph) and the forward pass;
(b) the full CLI end to end on the conformers table (``python -m densnet predict``: Python and
    Prefect start-up, its temporary server, model load, prediction, Parquet write).

Run: ``python benchmarks/throughput.py [--work DIR] [--presets default small]
[--pyscf-seconds S]`` (S: PySCF seconds per molecule for the same observables, e.g. from
``benchmarks/qm_timings.py``, printed for comparison).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SERIES = "FreeWilson/data/CHEMBL2321810.smi"


def conformers_table(work: Path) -> Path:
    """The series' conformers table (made once, reused by later runs)."""
    from rdkit import RDConfig

    from densnet_core import store
    from densnet_core.conformers import process_records
    from densnet_core.inputs import read_records

    out = work / "chembl-conformers.parquet"
    if out.exists():
        return out
    t0 = time.perf_counter()
    records = read_records(os.path.join(RDConfig.RDContribDir, SERIES))
    rows = process_records(records, workers=os.cpu_count() or 1)
    store.write_table(rows, out, "conformers")
    print(f"embedded {len(records)} records in {time.perf_counter() - t0:.1f} s (not timed below)")
    return out


def model_dir(work: Path, preset: str, elements: list[int]) -> Path:
    """An untrained model directory for ``preset`` (built once)."""
    import torch

    from densnet_core.level import DEFAULT_LEVEL
    from densnet_core.model import DensityModel
    from densnet_core.modelio import save_model

    path = work / f"bench-{preset}"
    if not (path / "model.safetensors").exists():
        torch.manual_seed(0)
        model = DensityModel.for_aux_basis(DEFAULT_LEVEL.fit_auxbasis, elements, preset=preset)
        save_model(model, path, level=DEFAULT_LEVEL, card={"note": "benchmark (untrained)"})
    return path


def _predict_part(args: tuple[str, list[dict], int]) -> tuple[int, float]:
    from densnet_core.predict import Predictor

    path, rows, batch_size = args
    p = Predictor(path, batch_size=batch_size, threads=1)
    t0 = time.perf_counter()
    p.predict_rows(rows)
    return len(rows), time.perf_counter() - t0


def library_path(path: Path, rows: list[dict], batch_size: int) -> None:
    """(a) Predictor.predict_rows: 1 thread, 2 threads, 2 processes x 1 thread."""
    import torch

    from densnet_core.predict import Predictor

    for threads in (1, 2):
        t0 = time.perf_counter()
        p = Predictor(path, batch_size=batch_size, threads=threads)
        load = time.perf_counter() - t0
        p.predict_rows(rows[:batch_size])  # warm-up
        p.timings = dict.fromkeys(p.timings, 0.0)
        t0 = time.perf_counter()
        out = p.predict_rows(rows)
        wall = time.perf_counter() - t0
        n_ok = sum(o["status"] == "ok" for o in out)
        split = ", ".join(f"{k} {v:.2f} s" for k, v in p.timings.items())
        print(
            f"  library, {torch.get_num_threads()} thread(s): {len(rows)} rows ({n_ok} ok) in "
            f"{wall:.2f} s = {len(rows) / wall:.1f} mol/s (model load {load:.1f} s; {split})"
        )
    torch.set_num_threads(1)
    half = len(rows) // 2
    parts = [(str(path), rows[:half], batch_size), (str(path), rows[half:], batch_size)]
    import multiprocessing

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_predict_part, [(str(path), rows[:8], batch_size)] * 2))  # start-up
        t0 = time.perf_counter()
        res = list(pool.map(_predict_part, parts))
        wall = time.perf_counter() - t0
    print(
        f"  library, 2 processes x 1 thread: {len(rows) / wall:.1f} mol/s "
        f"(incl. each process loading the model; per process: "
        + ", ".join(f"{n / s:.1f} mol/s" for n, s in res)
        + ")"
    )


def cli_end_to_end(path: Path, conformers: Path, work: Path, n_rows: int) -> None:
    """(b) ``python -m densnet predict`` on the conformers table, start-up included."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-", dir=work)
    out = work / f"pred-{path.name}.parquet"
    cmd = [sys.executable, "-m", "densnet", "predict", str(conformers), "-o", str(out)]
    cmd += ["--model", str(path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"  CLI failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-2000:]}")
        return
    print(f"  CLI end to end: {n_rows} rows in {wall:.1f} s = {n_rows / wall:.1f} mol/s")
    for line in proc.stdout.strip().splitlines():
        print(f"    | {line}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "densnet-bench")
    ap.add_argument("--presets", nargs="*", default=["default", "small"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pyscf-seconds", type=float, default=None)
    ap.add_argument("--no-cli", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from densnet_core.settings import available_cores
    from flows.screen import conformer_table_rows

    conformers = conformers_table(args.work)
    rows = conformer_table_rows(conformers)
    ok = [r for r in rows if r["status"] == "ok"]
    elements = sorted({int(z) for r in ok for z in r["numbers"]})
    if 35 in elements:  # jkfit Br has l = 5, 6 shells: the presets (lmax_sh 4) cannot build it
        elements.remove(35)
        n_br = sum(35 in r["numbers"] for r in ok)
        print(f"Br left out of the models ({n_br} molecules become unsupported_element)")
    n_atoms = sum(len(r["numbers"]) for r in ok) / max(len(ok), 1)
    print(
        f"{len(rows)} conformer rows ({len(ok)} ok, mean {n_atoms:.1f} atoms), elements "
        f"{elements}; {available_cores()} usable cores, load average "
        f"{os.getloadavg()[0]:.1f}; batch size {args.batch_size}"
    )
    for preset in args.presets:
        path = model_dir(args.work, preset, elements)
        print(f"preset {preset!r} ({path}):")
        library_path(path, rows, args.batch_size)
        if not args.no_cli:
            cli_end_to_end(path, conformers, args.work, len(rows))
    if args.pyscf_seconds:
        print(
            f"PySCF (B3LYP/def2-SVPD, dipole + CPKS polarizability): {args.pyscf_seconds:.0f} s "
            f"per molecule = {1 / args.pyscf_seconds:.4f} mol/s on this machine"
        )


if __name__ == "__main__":
    main()
