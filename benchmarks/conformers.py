"""Speed of the conformer stage on the ChEMBL series shipped with RDKit (1,017 compounds).

    python benchmarks/conformers.py [--n-conformers 1] [--workers W] [--mmff-max-iters N]
                                    [--skip-library] [--skip-cli] [--skip-prefect]

Prints molecules per second for

* the library path: :func:`densnet_core.conformers.conformers_table` (read, process pool,
  write; no Prefect), wall time and CPU time per molecule;
* the command end to end: ``densnet conformers ...`` in a subprocess, wall time from start to
  exit (Python start-up, worker start-up and writing the table included), with a fresh
  temporary ``PREFECT_HOME`` and no ``PREFECT_*`` variables, as a new user would run it;
* the same command with ``--prefect`` (Prefect's temporary server started and migrated from
  scratch, the flow and its task runs recorded);

plus the machine's core count and its load average next to every timing. On a shared
machine the numbers are upper bounds: they scale with the cores you actually get, which the
CPU-seconds column makes visible (wall ≈ CPU / cores on an idle machine).
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

from densnet_core.inputs import CHEMBL_SERIES, rdkit_data_path

CHEMBL = rdkit_data_path(CHEMBL_SERIES)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f}"


def _cpu_seconds_children() -> float:
    r = os.times()
    return r.children_user + r.children_system


def library(n_conformers: int, workers: int, mmff_max_iters: int | None) -> None:
    from densnet_core.conformers import conformers_table, shutdown_shared_pools

    options = {"n_conformers": n_conformers}
    if mmff_max_iters is not None:
        options["mmff_max_iters"] = mmff_max_iters
    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = time.process_time()
        c0 = _cpu_seconds_children()
        t0 = time.perf_counter()
        summary = conformers_table(CHEMBL, Path(tmp) / "lib.parquet", workers=workers, **options)
        wall = time.perf_counter() - t0
        shutdown_shared_pools()  # joined workers: their CPU time is counted below
        cpu_parent = time.process_time() - cpu0
        cpu_workers = _cpu_seconds_children() - c0
        import pandas as pd

        df = pd.read_parquet(Path(summary["output"]))
        converged = df["ff_converged"].dropna()
    n = summary["n_records"]
    print(
        f"library path    : {n} molecules in {wall:.1f} s = {n / wall:.1f} mol/s "
        f"({workers} worker processes; {load_before} before, {_load()} after)"
    )
    print(
        f"                  CPU {cpu_workers + cpu_parent:.1f} s = "
        f"{1000 * (cpu_workers + cpu_parent) / n:.0f} ms per molecule "
        f"(workers {cpu_workers:.1f} s + parent {cpu_parent:.1f} s)"
    )
    print(
        f"                  force field converged: {int(converged.sum())}/{len(converged)} "
        f"conformers; status: {summary['status_counts']}"
    )


def cli(n_conformers: int, workers: int, mmff_max_iters: int | None, prefect: bool) -> None:
    exe = shutil.which("densnet")
    cmd = [exe] if exe else [sys.executable, "-m", "densnet"]
    label = "CLI --prefect   " if prefect else "CLI (default)   "
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "chembl.parquet"
        cmd += ["conformers", str(CHEMBL), "-o", str(out), "--n-conformers", str(n_conformers)]
        cmd += ["--workers", str(workers)]
        if mmff_max_iters is not None:
            cmd += ["--mmff-max-iters", str(mmff_max_iters)]
        if prefect:
            cmd.append("--prefect")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env["PREFECT_HOME"] = str(Path(tmp) / "prefect-home")  # fresh: no server, no database
        load_before = _load()
        c0 = _cpu_seconds_children()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds_children() - c0
        if proc.returncode != 0:
            print(f"{label}: failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            return
        import pandas as pd

        n = pd.read_parquet(out)["record_index"].nunique()
    print(
        f"{label}: {n} molecules in {wall:.1f} s = {n / wall:.1f} mol/s end to end "
        f"(command start to exit, CPU {cpu:.0f} s; {load_before} before, {_load()} after)"
    )
    for line in proc.stdout.strip().splitlines():
        print(f"                  | {line}")


def main() -> None:
    from densnet_core.settings import available_cores

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-conformers", type=int, default=1)
    ap.add_argument("--workers", type=int, default=available_cores())
    ap.add_argument("--mmff-max-iters", type=int, default=None, help="default: the library's")
    ap.add_argument("--skip-library", action="store_true", help="no library-path timing")
    ap.add_argument("--skip-cli", action="store_true", help="no `densnet conformers` timing")
    ap.add_argument("--skip-prefect", action="store_true", help="no `--prefect` timing")
    args = ap.parse_args()
    print(
        f"machine         : {os.cpu_count()} cores ({available_cores()} usable), {_load()}\n"
        f"input           : {CHEMBL.name}, --n-conformers {args.n_conformers}, "
        f"--workers {args.workers}"
        + (f", --mmff-max-iters {args.mmff_max_iters}" if args.mmff_max_iters else "")
    )
    if not args.skip_library:
        library(args.n_conformers, args.workers, args.mmff_max_iters)
    if not args.skip_cli:
        cli(args.n_conformers, args.workers, args.mmff_max_iters, prefect=False)
    if not args.skip_prefect:
        cli(args.n_conformers, args.workers, args.mmff_max_iters, prefect=True)


if __name__ == "__main__":
    main()
