"""Thermal training geometries for the MD models: GFN2-xTB Langevin MD (tblite) -> conformers.

    python scripts/sample_md.py ethanol -o data/md/ethanol
    python scripts/sample_md.py ethanethiol --smiles CCS -o data/md/ethanethiol

For every temperature (default 300, 400, 500 K) one GFN2-xTB Langevin trajectory (tblite's ASE
calculator, time step 0.5 fs, friction 0.02 / fs) starts from the lowest MMFF conformer,
equilibrates ``--equilibration-steps`` and then keeps a snapshot every ``--interval`` steps
(20 fs by default: well past the ~10 fs period of the fastest O-H / C-H stretches, so snapshots
are nearly uncorrelated). The MMFF minimum itself is the first row.

Writes ``<out>/conformers.parquet`` (a conformers table: ``force_field`` records the sampler and
temperature, ``mmff_energy_kcal`` holds the GFN2-xTB energy in kcal/mol relative to the first
row) and ``<out>/sampling.json`` (settings). Rows are shuffled with a fixed seed (the minimum
first), so a partly labelled set covers every temperature. Label the set with the project's
label flow, skipping the CPKS polarizability (MD needs energies, forces, dipoles and densities):

    densnet label data/md/ethanol/conformers.parquet -o data/md/ethanol/labels \\
        --level '{"polarizability": false}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from densnet_core import keys as K
from densnet_core import store
from densnet_core.conformers import conformer_key, generate_conformers

MOLECULES: dict[str, str] = {
    "ethanol": "CCO",
    "ethanethiol": "CCS",
    "resorcinol": "Oc1cccc(O)c1",
}
EV_PER_KCAL_MOL = 0.0433641043


def run_xtb_md(
    atoms,
    *,
    temperature_K: float,
    timestep_fs: float,
    friction_per_fs: float,
    equilibration_steps: int,
    n_samples: int,
    interval: int,
    seed: int,
) -> list[tuple[np.ndarray, float]]:
    """Snapshots (positions Å (N, 3), GFN2-xTB energy eV) of one Langevin trajectory."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from tblite.ase import TBLite

    atoms = atoms.copy()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_K,
        friction=friction_per_fs / units.fs,
        rng=rng,
    )
    dyn.run(equilibration_steps)
    out = []
    for _ in range(n_samples):
        dyn.run(interval)
        out.append((atoms.get_positions().copy(), float(atoms.get_potential_energy())))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("molecule", help=f"name; known: {sorted(MOLECULES)}")
    ap.add_argument("--smiles", help="SMILES (default: the known molecule's)")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--temperatures-K", type=float, nargs="+", default=[300.0, 400.0, 500.0])
    ap.add_argument("--samples-per-temperature", type=int, default=200)
    ap.add_argument("--interval", type=int, default=40, help="MD steps between snapshots")
    ap.add_argument("--equilibration-steps", type=int, default=1000)
    ap.add_argument("--timestep-fs", type=float, default=0.5)
    ap.add_argument("--friction-per-fs", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from ase import Atoms

    smiles = args.smiles or MOLECULES[args.molecule]
    base = generate_conformers(smiles, n_conformers=1)[0]
    if base[K.STATUS] != K.STATUS_OK:
        raise SystemExit(f"{smiles}: {base[K.STATUS]} {base[K.ERROR]}")
    numbers = [int(z) for z in base[K.NUMBERS]]
    pos0 = np.asarray(base[K.POSITIONS_ANGSTROM], dtype=float)
    atoms = Atoms(numbers=numbers, positions=pos0)

    t0 = time.perf_counter()
    snaps: list[tuple[np.ndarray, float, str]] = []
    for k, temp in enumerate(args.temperatures_K):
        for pos, e_ev in run_xtb_md(
            atoms,
            temperature_K=temp,
            timestep_fs=args.timestep_fs,
            friction_per_fs=args.friction_per_fs,
            equilibration_steps=args.equilibration_steps,
            n_samples=args.samples_per_temperature,
            interval=args.interval,
            seed=args.seed * 1000 + k,
        ):
            snaps.append((pos, e_ev, f"GFN2-xTB Langevin {temp:.0f} K"))
        print(f"{temp:.0f} K: {args.samples_per_temperature} snapshots, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip

    from tblite.ase import TBLite

    ref = atoms.copy()
    ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
    e_ref = float(ref.get_potential_energy())
    order = np.random.default_rng(args.seed).permutation(len(snaps))
    base[K.NAME] = args.molecule
    rows = [dict(base, **{K.CONFORMER_ID: 0, K.FORCE_FIELD: "MMFF94 minimum"})]
    rows[0][K.MMFF_ENERGY_KCAL] = 0.0
    for cid, i in enumerate(order, start=1):
        pos, e_ev, how = snaps[i]
        row = dict(base)
        row[K.POSITIONS_ANGSTROM] = pos.tolist()
        row[K.CONFORMER_ID] = cid
        row[K.FORCE_FIELD] = how
        row[K.MMFF_ENERGY_KCAL] = (e_ev - e_ref) / EV_PER_KCAL_MOL
        row[K.CONFORMER_KEY] = conformer_key(numbers, pos, row[K.CHARGE], row[K.MULTIPLICITY])
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    store.write_table(rows, args.out / "conformers.parquet", "conformers")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["smiles"] = smiles
    settings["n_rows"] = len(rows)
    (args.out / "sampling.json").write_text(json.dumps(settings, indent=2) + "\n")
    print(f"{len(rows)} rows -> {args.out / 'conformers.parquet'}")


if __name__ == "__main__":
    main()
