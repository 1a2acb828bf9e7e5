"""Throughput of ``densnet predict`` on the ChEMBL FreeWilson series (1,017 compounds), 3D input.

Outside the timing, made once and kept in ``--work``: the series embedded by the conformer stage
(ETKDG + MMFF) into a conformers table, the same geometries written as an SDF (3D, hydrogens
explicit), and untrained model directories of the "default" and "small" presets for the default
aux basis (random heads: the same compute as a trained model). Then, per preset:

(a) the library path in this process: ``Predictor.predict_rows`` on all rows with one torch
    thread, split into featurisation, collation (batching; the radius graph on its own), the
    network (``node_features``) and the heads + electron-count projection + observables,
    plus the Parquet write; then :func:`densnet_core.predict.predict_rows_parallel` with the
    rows split over forked worker processes (1 thread each) and, with ``--threads-test``, one
    process with 2 intra-op threads;
(b) the command end to end, start-up included: ``python -m densnet predict`` on the conformers
    table and on the SDF (Python start, imports, model build, conformer stage for the SDF,
    prediction, Parquet), no Prefect; ``--prefect-cli`` adds the ``--prefect`` run.

Every timing prints wall seconds *and* CPU seconds (this process plus its reaped children) with
the load average: on a shared machine wall time is an upper bound, CPU time is what the work
costs. Last: the imports of the default CLI path (``python -X importtime``: no Prefect), and
PySCF's cost for the same observables — the seed labels' recorded wall time per label, and a
fresh SCF + CPKS polarizability of a small molecule (``--pyscf-molecule``; ``none`` skips it).

``--model DIR`` (repeatable) times the given model or ensemble directories instead of the
untrained presets, e.g. the committed default model and an ensemble (``densnet train --ensemble``):
an ensemble runs all K members in one vmapped pass per batch, and every row gets its spreads and
out-of-distribution verdict (the forward split, which times one network's parts, is skipped
for ensembles).

Run: ``python -m benchmarks.throughput [--work DIR] [--presets default small] [--model DIR ...]
[--no-cli] [--prefect-cli] [--threads-test] [--pyscf-molecule ethanol|pyridine|none]``
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# ---- timing helpers ------------------------------------------------------------------------
def _cpu() -> float:
    """CPU seconds of this process and its reaped children (user + system)."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _load() -> float:
    return os.getloadavg()[0]


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds incl. children) of ``fn()``."""
    c0, t0 = _cpu(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, _cpu() - c0


RESULTS: list[tuple[str, str, int, float, float, float]] = []


def report(preset: str, what: str, n: int, wall: float, cpu: float) -> None:
    """Print one measurement and keep it for the closing table."""
    load = _load()
    RESULTS.append((preset, what, n, wall, cpu, load))
    print(
        f"  {what}: {n} rows in {wall:.2f} s wall = {n / wall:.1f} mol/s; "
        f"{cpu:.2f} CPU-s = {n / max(cpu, 1e-9):.1f} mol per CPU-s (load {load:.1f})",
        flush=True,
    )


# ---- inputs (made once, not timed) -----------------------------------------------------------
def conformers_table(work: Path) -> Path:
    """The series' conformers table (conformer stage: ETKDG + MMFF)."""
    from densnet_core import store
    from densnet_core.conformers import process_records
    from densnet_core.inputs import CHEMBL_SERIES, read_records
    from densnet_core.settings import available_cores

    out = work / "chembl-conformers.parquet"
    if out.exists():
        return out
    t0 = time.perf_counter()
    records = read_records(CHEMBL_SERIES)
    rows = process_records(records, workers=available_cores())
    store.write_table(rows, out, "conformers")
    print(f"embedded {len(records)} records in {time.perf_counter() - t0:.1f} s (not timed)")
    return out


def sdf_file(work: Path, conformers: Path) -> Path:
    """The conformers table's geometries as a 3D SDF (title = name), made once.

    Each ok row's input SMILES is parsed again and given explicit hydrogens, which reproduces
    the conformer stage's atom order for single-fragment inputs (checked atom by atom); its
    coordinates are then those of the table. Rows that fail the check, and failed rows, are
    embedded afresh (ETKDG, seeded) so the SDF keeps one record per input record.
    """
    import numpy as np
    from rdkit import Chem
    from rdkit.Chem import AllChem
    from rdkit.Geometry import Point3D

    from densnet_core.predict import read_conformer_rows

    out = work / "chembl-3d.sdf"
    if out.exists():
        return out
    import pyarrow.parquet as pq

    smiles = pq.read_table(conformers, columns=["input_smiles"]).column(0).to_pylist()
    rows = read_conformer_rows(conformers)
    n_kept = 0
    with Chem.SDWriter(str(out)) as writer:
        for row, smi in zip(rows, smiles, strict=True):
            mol = Chem.MolFromSmiles(smi or row["smiles"] or "")
            if mol is None:
                continue
            mol = Chem.AddHs(mol)
            numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
            if row["status"] == "ok" and numbers == np.asarray(row["numbers"]).tolist():
                conf = Chem.Conformer(mol.GetNumAtoms())
                for i, (x, y, z) in enumerate(np.asarray(row["positions_angstrom"])):
                    conf.SetAtomPosition(i, Point3D(float(x), float(y), float(z)))
                conf.Set3D(True)
                mol.AddConformer(conf, assignId=True)
                n_kept += 1
            elif AllChem.EmbedMolecule(mol, randomSeed=42) != 0:
                continue
            mol.SetProp("_Name", str(row["name"]))
            writer.write(mol)
    print(f"wrote {out.name}: {n_kept} of {len(rows)} records with the table's coordinates")
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


# ---- (a) the library path --------------------------------------------------------------------
def forward_split(predictor: Any, rows: list[dict], batch_size: int) -> dict[str, float]:
    """Seconds per molecule of the parts of the forward pass, on the first size-sorted batches.

    ``radius_graph``: neighbour lists; ``collate_rest``: the rest of the batching;
    ``network``: ``model.node_features`` (embedding + interaction blocks); ``heads_obs``: the
    per-element heads, the electron-count projection and the observables (dipole, alpha).
    """
    import numpy as np
    import torch

    from densnet_core.graph import radius_graph
    from densnet_core.units import BOHR_PER_ANGSTROM

    ok = [
        r for r in rows if r["status"] == "ok" and set(r["numbers"]) <= predictor.supported_elements
    ]
    mols = [
        predictor.featurizer(r["numbers"], np.asarray(r["positions_angstrom"]) * BOHR_PER_ANGSTROM)
        for r in ok[: 4 * batch_size]
    ]
    mols.sort(key=lambda m: len(m.numbers))
    model = predictor.model
    t = dict.fromkeys(("radius_graph", "collate_rest", "network", "heads_obs"), 0.0)
    with torch.inference_mode():
        for start in range(0, len(mols), batch_size):
            chunk = mols[start : start + batch_size]
            t0 = time.perf_counter()
            batch = model.collate(chunk, dtype=torch.float32)
            t1 = time.perf_counter()
            radius_graph(batch["positions_bohr"], batch["batch"], model.cutoff_bohr)
            t2 = time.perf_counter()
            model.node_features(batch)
            t3 = time.perf_counter()
            model(batch)
            t4 = time.perf_counter()
            t["radius_graph"] += t2 - t1
            t["collate_rest"] += (t1 - t0) - (t2 - t1)
            t["network"] += t3 - t2
            t["heads_obs"] += (t4 - t3) - (t3 - t2)
    return {k: 1e3 * v / len(mols) for k, v in t.items()}


def _thread_run(path: Path, rows: list[dict], batch_size: int) -> None:
    """1 process x 2 intra-op threads (in a child: thread counts are process-global)."""
    code = (
        "import pickle, sys, time, torch\n"
        "from densnet_core.predict import Predictor\n"
        "torch.set_num_threads(2)\n"
        "rows = pickle.load(sys.stdin.buffer)\n"
        f"p = Predictor({str(path)!r}, batch_size={batch_size}, threads=2)\n"
        "p.predict_rows(rows[:64]); t0 = time.process_time(); w0 = time.perf_counter()\n"
        "p.predict_rows(rows)\n"
        "print(time.perf_counter() - w0, time.process_time() - t0)\n"
    )
    import pickle

    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(rows),
        capture_output=True,
        cwd=REPO,
        timeout=3600,
    )
    if proc.returncode != 0:
        print(f"  1 process x 2 threads failed: {proc.stderr.decode()[-1000:]}")
        return
    wall, cpu = map(float, proc.stdout.split())
    report("", "library, 1 process x 2 intra-op threads", len(rows), wall, cpu)


def library_path(
    preset: str, path: Path, rows: list[dict], batch_size: int, workers: int, threads_test: bool
) -> None:
    """(a) Predictor in this process: serial split, forward split, Parquet, forked workers."""
    import torch

    from densnet_core import store
    from densnet_core.predict import Predictor, predict_rows_parallel

    torch.set_num_threads(1)
    p, wall, cpu = timed(lambda: Predictor(path, batch_size=batch_size, threads=1))
    print(f"  model load (build + weights + element tables): {wall:.2f} s wall, {cpu:.2f} CPU-s")
    p.predict_rows(rows[:batch_size])  # warm-up
    p.timings = dict.fromkeys(p.timings, 0.0)
    out, wall, cpu = timed(lambda: p.predict_rows(rows))
    report(preset, "library, 1 process x 1 thread", len(rows), wall, cpu)
    n_ok = sum(o["status"] == "ok" for o in out)
    n_ood = sum(o["status"] == "ok" and o.get("ood") is True for o in out)
    split = ", ".join(f"{k} {1e3 * v / len(rows):.2f}" for k, v in p.timings.items())
    print(f"    per molecule (ms, wall): {split}; {n_ok} ok, {n_ood} of them ood")
    if getattr(p, "ensemble", None) is None:
        fs = forward_split(p, rows, batch_size)
        print(
            "    forward split (ms/molecule): " + ", ".join(f"{k} {v:.2f}" for k, v in fs.items())
        )
    else:
        print(f"    ensemble of {len(p.ensemble.members)} members, mode {p.ensemble.mode}")
    with tempfile.TemporaryDirectory(prefix="pred-") as tmp:  # never inside a model folder
        _, wall, cpu = timed(lambda: store.write_table(out, Path(tmp) / "p.parquet", "predictions"))
    print(f"    Parquet write of {len(out)} rows: {wall:.2f} s wall, {cpu:.2f} CPU-s")

    p.timings = dict.fromkeys(p.timings, 0.0)
    _, wall, cpu = timed(lambda: predict_rows_parallel(p, rows, workers=workers))
    report(preset, f"library, {workers} forked processes x 1 thread", len(rows), wall, cpu)
    if threads_test:
        _thread_run(path, rows, batch_size)


# ---- (b) the command end to end --------------------------------------------------------------
def cli_end_to_end(
    preset: str, path: Path, input_path: Path, work: Path, n: int, *, prefect: bool = False
) -> None:
    """``python -m densnet predict`` (start-up included) in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-", dir=work)
    out = work / f"pred-{path.name}-{input_path.suffix.lstrip('.')}.parquet"
    cmd = [sys.executable, "-m", "densnet", "predict", str(input_path), "-o", str(out)]
    cmd += ["--model", str(path)] + (["--prefect"] if prefect else [])
    proc, wall, cpu = timed(
        lambda: subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=3600)
    )
    kind = "SDF" if input_path.suffix == ".sdf" else "conformers table"
    what = f"CLI end to end, {kind}" + (", --prefect" if prefect else "")
    if proc.returncode != 0:
        print(f"  {what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-2000:]}")
        return
    report(preset, what, n, wall, cpu)
    for line in proc.stdout.strip().splitlines()[:2]:
        print(f"    | {line}")


def default_path_imports(path: Path, conformers: Path, work: Path) -> None:
    """Top-level imports of ``densnet predict`` (default path) by ``python -X importtime``."""
    out = work / "importtime.parquet"
    cmd = [sys.executable, "-X", "importtime", "-m", "densnet", "predict", str(conformers)]
    cmd += ["-o", str(out), "--model", str(path), "--workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600)
    cumulative: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = line.split("|")
        if name.startswith("  "):
            continue  # only modules imported at the top level (their cumulative time)
        top = name.strip().split(".")[0]
        try:
            cumulative[top] = cumulative.get(top, 0.0) + float(cum) / 1e6
        except ValueError:
            continue
    ranked = sorted(cumulative.items(), key=lambda kv: -kv[1])[:8]
    print(
        "imports of the default path (python -X importtime, top-level packages, s wall): "
        + ", ".join(f"{k} {v:.2f}" for k, v in ranked)
        + f"; prefect imported: {'prefect' in cumulative} (load {_load():.1f})"
    )


# ---- PySCF for comparison --------------------------------------------------------------------
def pyscf_comparison(molecule: str, threads: int) -> None:
    """Seconds per molecule of PySCF: recorded seed labels, and one fresh SCF + CPKS."""
    import numpy as np

    from densnet_core import store

    labels = REPO / "data" / "seed" / "labels"
    if labels.exists():
        df = store.read_table(labels, "labels")
        ok = df[df["status"] == "ok"]
        if len(ok):
            n_atoms = ok["numbers"].apply(len).to_numpy()
            wall = ok["wall_seconds"].to_numpy(dtype=float)
            big = wall[n_atoms >= 20]
            print(
                f"PySCF seed labels (B3LYP/def2-SVPD: SCF, forces, CPKS, fits; recorded): "
                f"{len(ok)} labels, median {np.median(wall):.0f} s per molecule "
                f"(mean {n_atoms.mean():.0f} atoms); >= 20 atoms: "
                + (f"median {np.median(big):.0f} s ({len(big)} labels)" if len(big) else "none")
            )
    if molecule == "none":
        return
    from benchmarks.qm_timings import MOLECULES, geometry
    from densnet_core import qm
    from densnet_core.level import DEFAULT_LEVEL

    numbers, xyz = geometry(MOLECULES[molecule])
    c0, t0 = _cpu(), time.perf_counter()
    with qm.pyscf_threads(threads):
        mol = qm.build_mol(numbers, xyz, basis=DEFAULT_LEVEL.basis)
        scf = qm.run_scf(mol, DEFAULT_LEVEL)
        t_scf = time.perf_counter() - t0
        qm.dipole_au(scf.mf)
        qm.polarizability_au(scf.mf)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    RESULTS.append(("PySCF", f"{molecule} SCF + dipole + CPKS alpha", 1, wall, cpu, _load()))
    print(
        f"PySCF {molecule} ({len(numbers)} atoms, {threads} threads): SCF {t_scf:.1f} s + "
        f"dipole + CPKS polarizability {wall - t_scf:.1f} s = {wall:.1f} s wall, {cpu:.1f} CPU-s "
        f"per molecule = {1 / wall:.4f} mol/s (load {_load():.1f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "densnet-bench")
    ap.add_argument("--presets", nargs="*", default=["default", "small"])
    ap.add_argument(
        "--model",
        type=Path,
        action="append",
        default=None,
        help="a model or ensemble directory to time instead of the presets (repeatable)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="default: usable cores")
    ap.add_argument("--no-cli", action="store_true", help="skip the end-to-end runs")
    ap.add_argument("--prefect-cli", action="store_true", help="also time --prefect")
    ap.add_argument("--threads-test", action="store_true", help="also 1 process x 2 threads")
    ap.add_argument("--pyscf-molecule", default="ethanol", help="ethanol, pyridine or none")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from densnet_core.predict import read_conformer_rows
    from densnet_core.settings import available_cores

    cores = available_cores()
    workers = args.workers or cores
    conformers = conformers_table(args.work)
    sdf = sdf_file(args.work, conformers)
    rows = read_conformer_rows(conformers)
    ok = [r for r in rows if r["status"] == "ok"]
    elements = sorted({int(z) for r in ok for z in r["numbers"]})
    if 35 in elements:  # jkfit Br has l = 5, 6 shells: the presets (lmax_sh 4) cannot build it
        elements.remove(35)
    n_atoms = sum(len(r["numbers"]) for r in ok) / max(len(ok), 1)
    print(
        f"{len(rows)} conformer rows ({len(ok)} ok, mean {n_atoms:.1f} atoms), elements "
        f"{elements}; {cores} usable cores, {workers} workers, load average {_load():.1f}; "
        f"batch size {args.batch_size}"
    )
    if args.model:
        models = [(p.resolve().name, p.resolve()) for p in args.model]
    else:
        models = [(pr, model_dir(args.work, pr, elements)) for pr in args.presets]
    for preset, path in models:
        print(f"model {preset!r} ({path}):", flush=True)
        library_path(preset, path, rows, args.batch_size, workers, args.threads_test)
        if not args.no_cli:
            cli_end_to_end(preset, path, conformers, args.work, len(rows))
            cli_end_to_end(preset, path, sdf, args.work, len(rows))
            if args.prefect_cli and path == models[0][1]:
                cli_end_to_end(preset, path, conformers, args.work, len(rows), prefect=True)
    if not args.no_cli and models:
        default_path_imports(models[0][1], conformers, args.work)
    pyscf_comparison(args.pyscf_molecule, cores)

    print(f"\n{'model':24s} {'what':48s} {'mol/s':>8s} {'wall_s':>7s} {'cpu_s':>7s} {'load':>5s}")
    for preset, what, n, wall, cpu, load in RESULTS:
        print(f"{preset:24s} {what:48s} {n / wall:8.2f} {wall:7.2f} {cpu:7.2f} {load:5.1f}")


if __name__ == "__main__":
    main()
