"""Speed of the conformer stage on the ChEMBL series shipped with RDKit (1,017 compounds).

    python benchmarks/conformers.py [--n-conformers 1] [--workers W] [--skip-cli]

Prints molecules per second for

* the library path: :func:`densnet_core.conformers.process_records` over a process pool
  (no Prefect), wall time and CPU time per molecule;
* the full command end to end: ``densnet conformers ...`` in a subprocess, wall time from
  start to exit (Python start-up, Prefect's temporary server, writing the table included);

plus the machine's core count, its load average, and the status counts. The machine load
matters: on a shared machine the numbers scale with the cores you actually get.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rdkit.RDConfig as RDConfig

CHEMBL = Path(RDConfig.RDContribDir) / "FreeWilson" / "data" / "CHEMBL2321810.smi"


def _cpu_seconds_children() -> float:
    r = os.times()
    return r.children_user + r.children_system


def library(n_conformers: int, workers: int) -> None:
    from densnet_core.conformers import process_records, status_counts
    from densnet_core.inputs import read_records

    records = read_records(CHEMBL)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    rows = process_records(records, workers=workers, n_conformers=n_conformers)
    wall = time.perf_counter() - t0
    cpu_parent = time.process_time() - cpu0
    cpu_workers = _cpu_seconds_children()  # pools have been joined: their CPU is counted
    n = len(records)
    print(
        f"library path   : {n} molecules in {wall:.1f} s = {n / wall:.1f} mol/s "
        f"({workers} worker processes)"
    )
    print(
        f"                 CPU per molecule: {1000 * (cpu_workers + cpu_parent) / n:.0f} ms "
        f"(workers {cpu_workers:.1f} s + parent {cpu_parent:.1f} s)"
    )
    print(f"                 status: {status_counts(rows)}")


def cli(n_conformers: int, workers: int) -> None:
    exe = shutil.which("densnet")
    cmd = [exe] if exe else [sys.executable, "-m", "densnet"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "chembl.parquet"
        cmd += [
            "conformers",
            str(CHEMBL),
            "-o",
            str(out),
            "--n-conformers",
            str(n_conformers),
            "--workers",
            str(workers),
        ]
        c0 = _cpu_seconds_children()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds_children() - c0
        if proc.returncode != 0:
            print(f"CLI failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            return
        import pandas as pd

        df = pd.read_parquet(out)
        n = df["record_index"].nunique()
    print(
        f"end to end (CLI): {n} molecules in {wall:.1f} s = {n / wall:.1f} mol/s "
        f"(command start to exit; CPU {cpu:.0f} s incl. Prefect server)"
    )
    for line in proc.stdout.strip().splitlines():
        print(f"                 | {line}")


def main() -> None:
    from densnet_core.settings import available_cores

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-conformers", type=int, default=1)
    ap.add_argument("--workers", type=int, default=available_cores())
    ap.add_argument("--skip-cli", action="store_true", help="library path only")
    ap.add_argument("--skip-library", action="store_true", help="CLI only")
    args = ap.parse_args()
    load = os.getloadavg()
    print(
        f"machine        : {os.cpu_count()} cores ({available_cores()} usable), "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    print(
        f"input          : {CHEMBL.name}, --n-conformers {args.n_conformers}, "
        f"--workers {args.workers}"
    )
    if not args.skip_library:
        library(args.n_conformers, args.workers)
    if not args.skip_cli:
        cli(args.n_conformers, args.workers)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
