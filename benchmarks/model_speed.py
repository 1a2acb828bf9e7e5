"""Forward-pass throughput of the density network on drug-like molecules (CPU).

Embeds ChEMBL molecules from RDKit's FreeWilson example (``CHEMBL2321810.smi``, ~40-55 atoms
with hydrogens) with ETKDG, and times forward passes of batches of 64 molecules for every preset,
float32, with and without the response head. Collation (radius graph, index maps) is included
in the per-batch time; model construction ("start-up") is reported separately, and so is the
throughput for a 1,000-molecule job with start-up included.

Run: ``python benchmarks/model_speed.py [--threads 2] [--batches 5] [--aux def2-universal-jfit]``
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from densnet_core.graph import MoleculeInput
from densnet_core.model import PRESETS, DensityModel
from densnet_core.units import BOHR_PER_ANGSTROM


def load_molecules(n: int, seed: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to ``n`` RDKit-embedded ChEMBL molecules as (numbers, positions_bohr)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from densnet_core.inputs import CHEMBL_SERIES, read_records

    out = []
    for record in read_records(CHEMBL_SERIES):
        mol = Chem.MolFromSmiles(record.smiles or "")
        if mol is None:
            continue
        mol = Chem.AddHs(mol)
        if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
            continue
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        pos = mol.GetConformer().GetPositions() * BOHR_PER_ANGSTROM
        out.append((numbers, pos))
        if len(out) >= n:
            break
    return out


def element_irreps_pyscf(z: int, aux_basis: str) -> str:
    """The element's aux irreps straight from PySCF (shell order, parity (-1)^l)."""
    from pyscf import df, gto

    mol = gto.M(atom=f"{z} 0 0 0", basis="sto-3g" if z <= 36 else "def2-svp", spin=z % 2)
    aux = df.addons.make_auxmol(mol, aux_basis)
    return "+".join(
        f"1x{aux.bas_angular(i)}{'e' if aux.bas_angular(i) % 2 == 0 else 'o'}"
        for i in range(aux.nbas)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=5, help="timed batches per setting")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--aux", default="def2-universal-jfit")
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    mols = load_molecules(args.batch_size)
    t_embed = time.perf_counter() - t0
    elements = sorted({int(z) for numbers, _ in mols for z in numbers})
    irreps = {z: element_irreps_pyscf(z, args.aux) for z in elements}
    n_atoms = np.mean([len(n) for n, _ in mols])
    n_heavy = np.mean([(n > 1).sum() for n, _ in mols])
    load = os.getloadavg()[0]
    print(
        f"load average {load:.1f} on {os.cpu_count()} CPUs (other processes slow this down; "
        "cpu_ms = this process's CPU time per batch, summed over its threads)"
    )
    print(
        f"{len(mols)} molecules (embedded in {t_embed:.1f} s), mean {n_atoms:.1f} atoms, "
        f"{n_heavy:.1f} heavy; elements {elements}; aux basis {args.aux}; "
        f"torch threads {torch.get_num_threads()}"
    )
    inputs = [MoleculeInput(numbers=n, positions_bohr=p) for n, p in mols]
    print(
        f"{'preset':8s} {'response':8s} {'params':>8s} {'startup_s':>9s} {'edges/atom':>10s} "
        f"{'collate_ms':>10s} {'batch_ms':>8s} {'cpu_ms':>7s} {'mol/s':>7s} "
        f"{'mol/s(1000 incl. startup)':>26s}"
    )
    for preset in args.presets:
        for response in (False, True):
            torch.manual_seed(0)
            t0 = time.perf_counter()
            model = DensityModel.from_preset(
                preset, irreps_by_element=irreps, aux_basis=args.aux, response=response
            ).eval()
            t_start = time.perf_counter() - t0
            n_par = sum(p.numel() for p in model.parameters())
            with torch.inference_mode():
                batch = model.collate(inputs)  # warm-up
                model(batch)
                t_col, t_all, t_cpu = 0.0, 0.0, 0.0
                for _ in range(args.batches):
                    c0 = time.process_time()
                    t0 = time.perf_counter()
                    batch = model.collate(inputs)
                    t1 = time.perf_counter()
                    model(batch)
                    t2 = time.perf_counter()
                    t_col += t1 - t0
                    t_all += t2 - t0
                    t_cpu += time.process_time() - c0
            per_batch = t_all / args.batches
            rate = len(inputs) / per_batch
            rate_1000 = 1000 / (t_start + 1000 / rate)
            epa = batch["edge_index"].shape[1] / batch["numbers"].shape[0]
            print(
                f"{preset:8s} {response!s:8s} {n_par:8d} {t_start:9.2f} {epa:10.1f} "
                f"{1e3 * t_col / args.batches:10.1f} {1e3 * per_batch:8.1f} "
                f"{1e3 * t_cpu / args.batches:7.1f} {rate:7.1f} "
                f"{rate_1000:26.1f}"
            )


if __name__ == "__main__":
    main()
