"""Build the seed set the default model is trained on: molecules and their conformers.

    python scripts/build_seed_set.py -o data/seed

writes ``seed_set.csv`` (name, smiles, source) and ``conformers.parquet`` (a conformers table:
for every molecule its ``--n-conformers`` lowest MMFF conformers plus ``--n-distorted`` copies
of the lowest one with Gaussian displacements, so the model also sees off-equilibrium
geometries). Label it with the project's own label flow (resumable):

    densnet label data/seed/conformers.parquet -o data/seed/labels

Rows are ordered round-robin (every molecule's first conformer, then every molecule's
distorted one, ...), so a partly labelled set still covers every molecule.

    python scripts/build_seed_set.py -o data/seed --append

keeps the rows of an existing ``conformers.parquet`` exactly as they are (their labels stay
valid: conformer keys are geometry hashes, and the conformer code has changed since the first
molecules were embedded) and adds conformers only for the molecules of the selection it does
not hold yet (by canonical SMILES), after the existing rows. This is how the
``drug_fragments`` block was added.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from rdkit import Chem

from densnet_core import keys as K
from densnet_core import store
from densnet_core.conformers import conformer_key, generate_conformers
from densnet_core.inputs import NCI_FIRST_5K, read_records
from densnet_core.seeds import select_seed_set


def _nci_pool() -> list[tuple[str, str]]:
    return [(f"NCI-{r.name}", r.smiles) for r in read_records(NCI_FIRST_5K) if r.smiles]


def distort(row: dict, *, sigma_angstrom: float, rng: np.random.Generator, cid: int) -> dict:
    """A copy of a conformer row with every atom displaced by N(0, sigma²) per axis (Å)."""
    pos = np.array([np.asarray(p, float) for p in row[K.POSITIONS_ANGSTROM]])
    pos = pos + rng.normal(scale=sigma_angstrom, size=pos.shape)
    out = dict(row)
    out[K.POSITIONS_ANGSTROM] = pos.tolist()
    out[K.CONFORMER_ID] = cid
    out[K.FORCE_FIELD] = f"distorted(sigma={sigma_angstrom} A)"
    out[K.MMFF_ENERGY_KCAL] = float("nan")
    out[K.CONFORMER_KEY] = conformer_key(row[K.NUMBERS], pos, row[K.CHARGE], row[K.MULTIPLICITY])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=Path("data/seed"))
    ap.add_argument("--n-from-pool", type=int, default=100)
    ap.add_argument("--max-heavy-atoms", type=int, default=10)
    ap.add_argument("--n-conformers", type=int, default=2)
    ap.add_argument("--n-distorted", type=int, default=1)
    ap.add_argument("--sigma-angstrom", type=float, default=0.08)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--append",
        action="store_true",
        help="keep an existing conformers.parquet and add only the molecules it lacks",
    )
    args = ap.parse_args()

    seeds = select_seed_set(
        _nci_pool(), n_from_pool=args.n_from_pool, max_heavy_atoms=args.max_heavy_atoms
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "seed_set.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "smiles", "source"])
        writer.writerows((s.name, s.smiles, s.source) for s in seeds)

    existing: list[dict] = []
    have: set[str] = set()
    if args.append and (args.out / "conformers.parquet").is_file():
        table = store.read_table(args.out / "conformers.parquet", "conformers")
        existing = table.to_dict("records")
        have = {Chem.CanonSmiles(s) for s in table[K.SMILES]}

    rng = np.random.default_rng(args.seed)
    per_molecule: list[list[dict]] = []
    for index, seed in enumerate(seeds):
        if seed.smiles in have:
            continue
        rows = generate_conformers(
            {"record_index": index, "name": seed.name, "smiles": seed.smiles},
            n_conformers=args.n_conformers,
        )
        ok = [r for r in rows if r[K.STATUS] == K.STATUS_OK]
        if ok:
            n = len(ok)
            rows = ok + [
                distort(ok[0], sigma_angstrom=args.sigma_angstrom, rng=rng, cid=n + k)
                for k in range(args.n_distorted)
            ]
            # lowest conformer, then distorted, then the other conformers
            rows = [rows[0], *rows[n:], *rows[1:n]]
        per_molecule.append(rows)
    ordered = list(existing)
    depth = max((len(r) for r in per_molecule), default=0)
    for k in range(depth):
        ordered.extend(rows[k] for rows in per_molecule if k < len(rows))
    path = store.write_table(ordered, args.out / "conformers.parquet", "conformers")
    counts: dict[str, int] = {}
    for row in ordered:
        counts[row[K.STATUS]] = counts.get(row[K.STATUS], 0) + 1
    print(
        f"{len(seeds)} molecules ({len(per_molecule)} new), {len(ordered)} conformer rows "
        f"{counts} -> {path}"
    )


if __name__ == "__main__":
    main()
