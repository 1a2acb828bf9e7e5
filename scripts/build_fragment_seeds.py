"""Build fragment seeds ("amons") of a library: small molecules covering its atom environments.

    python scripts/build_fragment_seeds.py -o data/seed/fragments --n 40
    python scripts/build_fragment_seeds.py -o data/seed/fragments-nci --library nci \
        --prefix fragn --n 60
    python scripts/build_fragment_seeds.py -o data/seed/fragments-r2-nci --library nci \
        --radius 2 --max-heavy-atoms 8 --prefix fragr2n --n 30
    python scripts/build_fragment_seeds.py -o data/seed/fragments-r2-phos --library nci \
        --element P --radius 2 --prefix fragr2p --n 40 --queued QUEUED_CONFORMERS

reads the ChEMBL lead-optimization series shipped with RDKit (``--library nci``: RDKit's NCI
``first_5K.smi``; or any .smi path; ``--element P``: only its molecules that contain
phosphorus, for a round aimed at an element the labels have few of),
enumerates its capped fragments (``densnet_core.fragments``, <= ``--max-heavy-atoms``), drops
those already labelled (``--labels``) or in the heterocycle benchmark or one substituent away
from one (kept unseen), picks
greedily the ones that cover the most library atoms whose radius-1 environment no label has,
per heavy atom, and writes ``fragments.csv`` (name, smiles, n_heavy_atoms, n_parents,
gain_atoms). Embed and label them with the project's own flows (resumable)::

    densnet conformers data/seed/fragments/fragments.csv -o data/seed/fragments/conformers.parquet
    densnet label data/seed/fragments/conformers.parquet -o data/seed/labels
"""

from __future__ import annotations

import argparse
import csv
import glob
from pathlib import Path

import pandas as pd

from densnet_core import fragments as F
from densnet_core.inputs import CHEMBL_SERIES, NCI_FIRST_5K, read_records
from densnet_core.near_neighbours import benchmark_neighbours

LIBRARIES = {"chembl": CHEMBL_SERIES, "nci": NCI_FIRST_5K}


def _smi(path: str | Path) -> list[str]:
    """The SMILES of every readable record of an input file (``rdkit:`` paths allowed)."""
    return [r.smiles for r in read_records(path) if r.smiles and not r.error]


def _has_elements(smiles: str, symbols: list[str]) -> bool:
    """True if the molecule contains every element of ``symbols`` (True for an empty list)."""
    if not symbols:
        return True
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    present = {a.GetSymbol() for a in mol.GetAtoms()} if mol is not None else set()
    return set(symbols) <= present


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--library", default="chembl", help="chembl, nci or a .smi path")
    ap.add_argument("--labels", type=Path, default=Path("data/seed/labels"))
    ap.add_argument("--exclude", type=Path, default=Path("data/benchmarks/heterocycles.smi"))
    ap.add_argument(
        "--queued",
        type=Path,
        action="append",
        default=[],
        help="input file (e.g. an earlier round's conformers table) of molecules not yet "
        "labelled but queued: counted as covered and not picked again; repeatable",
    )
    ap.add_argument(
        "--element",
        action="append",
        default=[],
        help="keep only library molecules containing this element symbol (e.g. P); repeatable: "
        "all must be present",
    )
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--max-heavy-atoms", type=int, default=10)
    ap.add_argument(
        "--radius",
        type=int,
        default=1,
        help="environment radius in bonds (2 once the labels cover the radius-1 ones)",
    )
    ap.add_argument(
        "--prefix", default="frag", help="name prefix; use a new one per round (names are ids)"
    )
    args = ap.parse_args()

    library = LIBRARIES.get(args.library, args.library)
    library_smiles = [s for s in _smi(library) if _has_elements(s, args.element)]
    print(f"library molecules: {len(library_smiles)}")
    frags, counts = F.library_fragments(
        library_smiles, max_heavy_atoms=args.max_heavy_atoms, radius=args.radius
    )
    bench = (
        [(r.name, r.smiles) for r in read_records(args.exclude) if r.smiles and not r.error]
        if args.exclude.exists()
        else []
    )
    # keep the benchmark unseen: no benchmark molecule and no one-substituent neighbour of one
    frags = [f for f in frags if not benchmark_neighbours(f.smiles, bench)]
    parts = glob.glob(str(args.labels / "part-*.parquet"))
    labelled = pd.concat([pd.read_parquet(p, columns=["smiles"]) for p in parts]).smiles.tolist()
    labelled += [smi for path in args.queued for smi in _smi(path)]
    covered = F.covered_environments(labelled, radius=args.radius)
    exclude = labelled + [smi for _, smi in bench]
    picks = F.select_fragments(frags, counts, args.n, covered=covered, exclude_smiles=exclude)
    total = sum(counts.values())
    before = sum(v for k, v in counts.items() if k not in covered)
    gained = sum(g for _, g in picks)
    print(f"library atoms {total}; environment not in any label: {before}; picks cover {gained}")

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "fragments.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "smiles", "n_heavy_atoms", "n_parents", "gain_atoms"])
        for i, (frag, gain) in enumerate(picks):
            name = f"{args.prefix}-{i:03d}"
            w.writerow([name, frag.smiles, frag.n_heavy_atoms, frag.n_parents, gain])
            print(
                f"{name}  {frag.smiles:<28} heavy {frag.n_heavy_atoms:2d}  parents "
                f"{frag.n_parents:4d}  gain {gain}"
            )
    print(f"wrote {len(picks)} fragments to {args.out / 'fragments.csv'}")


if __name__ == "__main__":
    main()
