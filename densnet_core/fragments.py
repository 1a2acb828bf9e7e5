"""Small fragments of target molecules ("amons") that cover their local chemistry cheaply.

The density model sees a molecule through atom environments within its cutoff, so small
molecules that contain a library's local environments teach it those environments at a
fraction of the labelling cost of the library molecules themselves (PySCF time grows
steeply with size: median seed-label times on one core of this machine were 76 s at 4 heavy
atoms, 139 s at 6, 328 s at 8 and 348-463 s at 9-10, after the CPKS speed-up). This follows
the amon idea of Huang & von Lilienfeld (Nat. Chem. 2020):
train on the fragments of the molecules you want to predict.

Fragments are connected unions of indivisible *units* — a ring system (fused rings stay
together, so aromaticity is never cut), or a chain atom together with its multiply-bonded
or charged partners (C=O, C#N, S(=O)=O and nitro stay whole) — with every cut single bond
capped by a hydrogen. :func:`select_fragments` then picks, greedily, the fragments that
cover the most library atom environments (Morgan keys of radius 1, or 2 once radius 1 is
covered) not yet covered by the labelled molecules, per heavy atom of the fragment. A fragment
holds a parent atom's environment only if no atom within the radius was capped (a cap changes
that atom's hydrogen count, which the key includes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rdkit import Chem, RDLogger
from rdkit.Chem import rdFingerprintGenerator

from densnet_core.seeds import DEFAULT_ELEMENTS


@dataclass(frozen=True)
class Fragment:
    """A capped fragment: canonical ``smiles``, heavy-atom count, the library environments it
    contains (Morgan keys of parent atoms whose environment the fragment holds unchanged)
    and how many library molecules contain it."""

    smiles: str
    n_heavy_atoms: int
    environments: frozenset[int]
    n_parents: int


def _hypervalent(atom: Chem.Atom) -> bool:
    """S or P above its lowest valence (sulfonyl, sulfoxide, phosphate): never capped by H."""
    lowest = {"S": 2, "P": 3}.get(atom.GetSymbol())
    return lowest is not None and atom.GetTotalValence() > lowest


def _units(mol: Chem.Mol) -> list[frozenset[int]]:
    """Partition of the heavy atoms into units that a fragment takes whole."""
    parent = list(range(mol.GetNumAtoms()))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        ai, aj = mol.GetAtomWithIdx(i), mol.GetAtomWithIdx(j)
        keep = (
            bond.IsInRing()
            or _hypervalent(ai)
            or _hypervalent(aj)
            or bond.GetBondType() != Chem.BondType.SINGLE
            or mol.GetAtomWithIdx(i).GetFormalCharge() != 0
            or mol.GetAtomWithIdx(j).GetFormalCharge() != 0
        )
        if keep:
            union(i, j)
    groups: dict[int, set[int]] = {}
    for i in range(mol.GetNumAtoms()):
        groups.setdefault(find(i), set()).add(i)
    return [frozenset(g) for g in groups.values()]


def _capped_smiles(mol: Chem.Mol, atoms: frozenset[int]) -> str | None:
    """Canonical SMILES of ``atoms`` with every cut bond replaced by an H (None if invalid)."""
    rw = Chem.RWMol(mol)
    for idx in atoms:
        atom = rw.GetAtomWithIdx(idx)
        cut = sum(1 for nb in atom.GetNeighbors() if nb.GetIdx() not in atoms)
        if cut:
            atom.SetNumExplicitHs(atom.GetTotalNumHs() + cut)
            atom.SetNoImplicit(True)
    for idx in sorted(set(range(mol.GetNumAtoms())) - atoms, reverse=True):
        rw.RemoveAtom(idx)
    frag = rw.GetMol()
    try:
        Chem.SanitizeMol(frag)
    except Exception:
        return None
    if Chem.GetFormalCharge(frag) != 0 or any(a.GetNumRadicalElectrons() for a in frag.GetAtoms()):
        return None
    return Chem.MolToSmiles(frag)


def _environment_keys(mol: Chem.Mol, radius: int = 1) -> list[int]:
    """(N_atoms,) Morgan environment key of every heavy atom, at ``radius`` bonds (the largest
    distinct environment RDKit keeps for the atom)."""
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius)
    ao = rdFingerprintGenerator.AdditionalOutput()
    ao.AllocateAtomToBits()
    generator.GetSparseCountFingerprint(mol, additionalOutput=ao)
    return [int(bits[-1]) for bits in ao.GetAtomToBits()]


def fragments_of(
    mol: Chem.Mol, *, max_heavy_atoms: int = 7, min_heavy_atoms: int = 2, radius: int = 1
) -> dict[str, frozenset[int]]:
    """All capped fragments of one molecule.

    Parameters
    ----------
    mol
        An RDKit molecule (implicit hydrogens).
    max_heavy_atoms, min_heavy_atoms
        Size window of the fragments (heavy atoms).
    radius
        Environment radius (bonds): a fragment contains a parent atom's environment when
        every atom within ``radius + 1`` bonds of it is in the fragment (so that no atom the
        environment sees was capped).

    Returns
    -------
    dict[str, frozenset[int]]
        Canonical SMILES -> the parent's environment keys the fragment contains whole.
    """
    units = _units(mol)
    unit_of = {a: k for k, unit in enumerate(units) for a in unit}
    neighbours: list[set[int]] = [set() for _ in units]
    for bond in mol.GetBonds():
        ku, kv = unit_of[bond.GetBeginAtomIdx()], unit_of[bond.GetEndAtomIdx()]
        if ku != kv:
            neighbours[ku].add(kv)
            neighbours[kv].add(ku)
    keys = _environment_keys(mol, radius)
    distance = Chem.GetDistanceMatrix(mol)
    # an atom keeps its parent environment in a fragment when no atom within ``radius`` bonds
    # of it is capped (a cap changes that atom's hydrogen count, part of the Morgan invariant):
    # when every atom within ``radius + 1`` bonds is in the fragment
    ball = [
        frozenset(int(b) for b in (distance[a] <= radius + 1).nonzero()[0])
        for a in range(len(keys))
    ]
    sizes = [len(u) for u in units]
    seen: set[frozenset[int]] = set()
    frontier = [frozenset([k]) for k in range(len(units)) if sizes[k] <= max_heavy_atoms]
    out: dict[str, frozenset[int]] = {}
    while frontier:
        grown = []
        for combo in frontier:
            if combo in seen:
                continue
            seen.add(combo)
            atoms = frozenset().union(*(units[k] for k in combo))
            if len(atoms) >= min_heavy_atoms:
                smi = _capped_smiles(mol, atoms)
                if smi is not None:
                    interior = frozenset(keys[a] for a in atoms if ball[a] <= atoms)
                    out[smi] = out.get(smi, frozenset()) | interior
            size = len(atoms)
            for k in set().union(*(neighbours[c] for c in combo)) - combo:
                if size + sizes[k] <= max_heavy_atoms:
                    grown.append(combo | {k})
        frontier = grown
    return out


def library_fragments(
    smiles: Iterable[str],
    *,
    max_heavy_atoms: int = 7,
    min_heavy_atoms: int = 2,
    elements: Sequence[str] = DEFAULT_ELEMENTS,
    radius: int = 1,
) -> tuple[list[Fragment], Counter]:
    """Fragments of a library and how often each environment occurs in it.

    Returns
    -------
    (list[Fragment], Counter)
        The distinct fragments (made of ``elements`` only), and the library's count of
        every environment key of ``radius`` bonds (one count per atom).
    """
    allowed = set(elements)
    envs: dict[str, set[int]] = {}
    parents: Counter = Counter()
    counts: Counter = Counter()
    RDLogger.DisableLog("rdApp.*")
    try:
        for smi in smiles:
            mol = Chem.MolFromSmiles(smi)
            if mol is None:
                continue
            mol = max(Chem.GetMolFrags(mol, asMols=True), key=lambda m: m.GetNumHeavyAtoms())
            if any(a.GetSymbol() not in allowed for a in mol.GetAtoms()):
                continue
            counts.update(_environment_keys(mol, radius))
            frags = fragments_of(
                mol,
                max_heavy_atoms=max_heavy_atoms,
                min_heavy_atoms=min_heavy_atoms,
                radius=radius,
            )
            for fsmi, keys in frags.items():
                envs.setdefault(fsmi, set()).update(keys)
                parents[fsmi] += 1
    finally:
        RDLogger.EnableLog("rdApp.*")
    out = [
        Fragment(
            smiles=fsmi,
            n_heavy_atoms=Chem.MolFromSmiles(fsmi).GetNumHeavyAtoms(),
            environments=frozenset(keys),
            n_parents=parents[fsmi],
        )
        for fsmi, keys in envs.items()
    ]
    out.sort(key=lambda f: (f.n_heavy_atoms, f.smiles))
    return out, counts


def covered_environments(smiles: Iterable[str], *, radius: int = 1) -> set[int]:
    """Environment keys (``radius`` bonds) present in molecules (e.g. those already labelled)."""
    covered: set[int] = set()
    for smi in smiles:
        mol = Chem.MolFromSmiles(smi)
        if mol is not None:
            covered.update(_environment_keys(mol, radius))
    return covered


def select_fragments(
    fragments: Sequence[Fragment],
    environment_counts: Counter,
    n: int,
    *,
    covered: Iterable[int] = (),
    exclude_smiles: Iterable[str] = (),
) -> list[tuple[Fragment, int]]:
    """Greedy pick of fragments covering the most uncovered library atoms per heavy atom.

    The gain of a fragment is the number of library atoms whose environment it contains and
    no picked or labelled molecule does; the pick maximises gain / heavy atoms, a proxy of
    gain per labelling second. Stops early when nothing new is left to cover.

    Returns
    -------
    list[tuple[Fragment, int]]
        (fragment, its gain in library atoms) in pick order.
    """
    done = set(covered)
    excluded = set()
    for smi in exclude_smiles:
        mol = Chem.MolFromSmiles(smi)
        if mol is not None:
            excluded.add(Chem.MolToSmiles(mol))
    pool = [f for f in fragments if f.smiles not in excluded]
    picks: list[tuple[Fragment, int]] = []
    while len(picks) < n and pool:
        gains = [sum(environment_counts[k] for k in f.environments - done) for f in pool]
        best = max(range(len(pool)), key=lambda i: (gains[i] / pool[i].n_heavy_atoms, -i))
        if gains[best] == 0:
            break
        frag = pool.pop(best)
        picks.append((frag, gains[best]))
        done |= frag.environments
    return picks
