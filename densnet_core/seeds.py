"""Seed-set selection: a diverse, small, labelable set of molecules to train the density model.

MaxMin diversity picking (RDKit's ``MaxMinPicker`` on Morgan fingerprints, Tanimoto distance)
over a pool of real molecules, after filtering to small molecules made of supported elements,
plus a hand-picked list of functional groups the pool may lack, always included first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rdkit import Chem, RDLogger
from rdkit.Chem import rdFingerprintGenerator
from rdkit.SimDivFilters.rdSimDivPickers import MaxMinPicker

DEFAULT_ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F", "P", "S", "Cl", "Br")

# Functional groups a screening chemist expects covered, as small molecules (name, SMILES).
FUNCTIONAL_GROUP_SEEDS: tuple[tuple[str, str], ...] = (
    ("water", "O"),
    ("ammonia", "N"),
    ("methane", "C"),
    ("ethanol", "CCO"),
    ("ethanethiol", "CCS"),
    ("resorcinol", "Oc1cccc(O)c1"),
    ("formaldehyde", "C=O"),
    ("acetic_acid", "CC(=O)O"),
    ("acetamide", "CC(N)=O"),
    ("methyl_acetate", "COC(C)=O"),
    ("acetonitrile", "CC#N"),
    ("nitromethane", "C[N+](=O)[O-]"),
    ("dimethyl_sulfoxide", "CS(C)=O"),
    ("methanesulfonamide", "CS(N)(=O)=O"),
    ("fluorobenzene", "Fc1ccccc1"),
    ("chlorobenzene", "Clc1ccccc1"),
    ("bromobenzene", "Brc1ccccc1"),
    ("trifluoromethane", "FC(F)F"),
    ("pyridine", "c1ccncc1"),
    ("pyrimidine", "c1cncnc1"),
    ("imidazole", "c1c[nH]cn1"),
    ("pyrazole", "c1cn[nH]c1"),
    ("thiophene", "c1ccsc1"),
    ("furan", "c1ccoc1"),
    ("oxazole", "c1cocn1"),
    ("thiazole", "c1cscn1"),
    ("1,2,4-triazole", "c1nc[nH]n1"),
    ("tetrazole", "c1nnn[nH]1"),
    ("indole", "c1ccc2[nH]ccc2c1"),
    ("morpholine", "C1COCCN1"),
    ("piperazine", "C1CNCCN1"),
    ("urea", "NC(N)=O"),
    ("trimethyl_phosphate", "COP(=O)(OC)OC"),
    ("benzonitrile", "N#Cc1ccccc1"),
    ("phenol", "Oc1ccccc1"),
    ("aniline", "Nc1ccccc1"),
)

#: Drug-like fragments the NCI picks lack (aryl ethers, sulfones, aryl sulfonamides, anilides,
#: aryl acids/esters/amides, CF3-aryl, a biaryl), ≤ 11 heavy atoms. Appended *after* the MaxMin
#: picks, so adding them changed neither the picks nor the conformers of the earlier molecules.
#: None is one of the benchmark heterocycles (``data/benchmarks/heterocycles.smi``).
DRUG_FRAGMENT_SEEDS: tuple[tuple[str, str], ...] = (
    ("acetone", "CC(C)=O"),
    ("dimethyl_sulfone", "CS(C)(=O)=O"),
    ("N-methylacetamide", "CNC(C)=O"),
    ("N,N-dimethylformamide", "CN(C)C=O"),
    ("anisole", "COc1ccccc1"),
    ("2-methoxypyridine", "COc1ccccn1"),
    ("benzoic_acid", "OC(=O)c1ccccc1"),
    ("benzamide", "NC(=O)c1ccccc1"),
    ("4-hydroxybenzonitrile", "N#Cc1ccc(O)cc1"),
    ("N-(thiazol-2-yl)methanesulfonamide", "CS(=O)(=O)Nc1nccs1"),
    ("benzenesulfonamide", "NS(=O)(=O)c1ccccc1"),
    ("methyl_phenyl_sulfone", "CS(=O)(=O)c1ccccc1"),
    ("acetanilide", "CC(=O)Nc1ccccc1"),
    ("methyl_benzoate", "COC(=O)c1ccccc1"),
    ("trifluorotoluene", "FC(F)(F)c1ccccc1"),
    ("2,2'-bithiophene", "c1csc(-c2cccs2)c1"),
    ("N-phenylmethanesulfonamide", "CS(=O)(=O)Nc1ccccc1"),
)


@dataclass(frozen=True)
class SeedMolecule:
    """One seed molecule: ``name`` and canonical ``smiles``, and where it came from."""

    name: str
    smiles: str
    source: str


def morgan_fingerprints(smiles: Sequence[str], *, radius: int = 2, n_bits: int = 2048) -> list:
    """Morgan (ECFP-like) bit-vector fingerprints of SMILES strings.

    Parameters
    ----------
    smiles
        (S,) SMILES; each must parse (ValueError otherwise).
    radius, n_bits
        Morgan radius and fingerprint length (the seed set uses 2 and 2048).

    Returns
    -------
    list
        (S,) RDKit ``ExplicitBitVect``.
    """
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = []
    for smi in smiles:
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            raise ValueError(f"invalid SMILES {smi!r}")
        out.append(generator.GetFingerprint(mol))
    return out


def maxmin_pick(
    fingerprints: Sequence, n: int, *, first_picks: Sequence[int] = (), seed: int = 42
) -> list[int]:
    """MaxMin diversity picking (RDKit ``MaxMinPicker``, Tanimoto distance).

    Parameters
    ----------
    fingerprints
        (S,) bit vectors (:func:`morgan_fingerprints`).
    n
        Total number of picks, ``first_picks`` included (clipped to S).
    first_picks
        Indices picked first, in order; the rest maximise the minimum distance to them.
    seed
        Seed of the picker (ties); the pick is deterministic for given inputs and seed.

    Returns
    -------
    list[int]
        Indices into ``fingerprints``, ``first_picks`` first.
    """
    n = min(int(n), len(fingerprints))
    if n <= 0:
        return []
    if n <= len(first_picks):
        return [int(i) for i in list(first_picks)[:n]]
    picks = MaxMinPicker().LazyBitVectorPick(
        list(fingerprints), len(fingerprints), n, firstPicks=list(first_picks), seed=seed
    )
    return [int(i) for i in picks]


def _eligible(mol: Chem.Mol, *, max_heavy_atoms: int, elements: frozenset[str]) -> bool:
    if mol.GetNumHeavyAtoms() > max_heavy_atoms or len(Chem.GetMolFrags(mol)) != 1:
        return False
    if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        return False
    if Chem.GetFormalCharge(mol) != 0:
        return False
    return all(a.GetSymbol() in elements for a in mol.GetAtoms())


def select_seed_set(
    pool: Iterable[tuple[str, str]],
    *,
    n_from_pool: int,
    max_heavy_atoms: int = 12,
    elements: Sequence[str] = DEFAULT_ELEMENTS,
    include: Sequence[tuple[str, str]] = FUNCTIONAL_GROUP_SEEDS,
    append: Sequence[tuple[str, str]] = DRUG_FRAGMENT_SEEDS,
    seed: int = 42,
) -> list[SeedMolecule]:
    """Pick a diverse seed set.

    Parameters
    ----------
    pool
        (name, SMILES) pairs to pick from (e.g. RDKit's NCI ``first_5K.smi``).
    n_from_pool
        How many molecules to pick from the pool by MaxMin, on top of ``include``.
    max_heavy_atoms
        Larger pool molecules are skipped (labelling cost grows ~N^3).
    elements
        Only molecules made entirely of these elements are eligible.
    include
        (name, SMILES) pairs always included, first (functional groups the pool may lack).
    append
        (name, SMILES) pairs always included, last (source ``"drug_fragments"``); they take
        no part in the MaxMin pick, so they leave the picks unchanged. Not subject to
        ``max_heavy_atoms``; a SMILES already chosen is skipped.
    seed
        Seed of the MaxMin picker (the pick is deterministic for a given pool and seed).

    Returns
    -------
    list[SeedMolecule]
        ``include`` first, then the picks in MaxMin order, then ``append``; no canonical
        SMILES twice.
    """
    RDLogger.DisableLog("rdApp.*")
    allowed = frozenset(elements)
    chosen: list[SeedMolecule] = []
    seen: set[str] = set()
    for name, smi in include:
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            raise ValueError(f"included seed {name!r} has an invalid SMILES {smi!r}")
        can = Chem.MolToSmiles(mol)
        if can not in seen:
            seen.add(can)
            chosen.append(SeedMolecule(name=name, smiles=can, source="functional_groups"))

    candidates: list[tuple[str, str]] = []
    for name, smi in pool:
        mol = Chem.MolFromSmiles(smi)
        if mol is None or not _eligible(mol, max_heavy_atoms=max_heavy_atoms, elements=allowed):
            continue
        can = Chem.MolToSmiles(mol)
        if can in seen:
            continue
        seen.add(can)
        candidates.append((name, can))
    if n_from_pool > 0 and candidates:
        chosen.extend(_maxmin_picks(chosen, candidates, n_from_pool, seed))
    have = {m.smiles for m in chosen}
    for name, smi in append:
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            raise ValueError(f"appended seed {name!r} has an invalid SMILES {smi!r}")
        can = Chem.MolToSmiles(mol)
        if can not in have:
            have.add(can)
            chosen.append(SeedMolecule(name=name, smiles=can, source="drug_fragments"))
    return chosen


def _maxmin_picks(
    chosen: Sequence[SeedMolecule],
    candidates: Sequence[tuple[str, str]],
    n_from_pool: int,
    seed: int,
) -> list[SeedMolecule]:
    """``n_from_pool`` MaxMin picks from ``candidates`` that complement ``chosen``."""
    smiles_all = [m.smiles for m in chosen] + [s for _, s in candidates]
    fps = morgan_fingerprints(smiles_all)
    n_fixed = len(chosen)
    n = min(n_from_pool, len(candidates))
    # The included molecules are the first picks, so the MaxMin picks complement them.
    picks = maxmin_pick(fps, n_fixed + n, first_picks=list(range(n_fixed)), seed=seed)
    return [
        SeedMolecule(name=candidates[i - n_fixed][0], smiles=smiles_all[i], source="maxmin")
        for i in list(picks)[n_fixed:]
    ]
