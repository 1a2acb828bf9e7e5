"""One-substituent neighbours: keeps seed rounds apart from a benchmark of unseen molecules.

A benchmark of "molecules the model never saw" means little if the training set holds the same
molecule with a methyl added or a chlorine swapped for a fluorine. This module decides whether
a candidate is a benchmark molecule, or one with a single ring substituent added, removed, or
replaced at the same ring atom. Molecules are compared on their heavy-atom graph (elements and
connectivity; bond orders, aromaticity, charges and hydrogens ignored), so an oxo form counts
as the parent with an oxygen added (benzoxazol-2-one is benzoxazole + O) and tautomers and
dihydro forms are the same molecule. Moving a substituent to another ring atom, changing a ring
atom (CH → N) or fusing a ring are not one-substituent edits.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rdkit import Chem


def graph_key(mol: Chem.Mol) -> str:
    """Canonical SMILES of the heavy-atom graph: all bonds single, no charges, no hydrogens.

    Parameters
    ----------
    mol : rdkit.Chem.Mol
        Molecule (hydrogens implicit); dummy atoms (atomic number 0) are kept as ``*``.

    Returns
    -------
    str
        Key equal for molecules with the same elements and connectivity.
    """
    g = Chem.RWMol(mol)
    for atom in g.GetAtoms():
        atom.SetIsAromatic(False)
        atom.SetFormalCharge(0)
        atom.SetNumExplicitHs(0)
        atom.SetNoImplicit(True)
    for bond in g.GetBonds():
        bond.SetBondType(Chem.BondType.SINGLE)
        bond.SetIsAromatic(False)
    return Chem.MolToSmiles(g)


def _ring_substituents(mol: Chem.Mol) -> Iterator[tuple[int, set[int]]]:
    """(ring atom, atom indices of one acyclic substituent on it), for every substituent."""
    rings = mol.GetRingInfo()
    for bond in mol.GetBonds():
        if rings.NumBondRings(bond.GetIdx()):
            continue
        for root, first in (
            (bond.GetBeginAtom(), bond.GetEndAtom()),
            (bond.GetEndAtom(), bond.GetBeginAtom()),
        ):
            if not rings.NumAtomRings(root.GetIdx()):
                continue
            branch, stack = {first.GetIdx()}, [first]
            while stack:
                for nb in stack.pop().GetNeighbors():
                    if nb.GetIdx() != root.GetIdx() and nb.GetIdx() not in branch:
                        branch.add(nb.GetIdx())
                        stack.append(nb)
            if not any(rings.NumAtomRings(i) for i in branch):
                yield root.GetIdx(), branch


@dataclass(frozen=True)
class OneEditKeys:
    """Graph keys of a molecule and of its one-substituent-removed forms.

    Attributes
    ----------
    key : str
        The molecule's own graph key.
    removed : frozenset[str]
        Keys with one ring substituent removed.
    sites : frozenset[str]
        The same with a dummy atom where the substituent was, so that two molecules sharing a
        site key differ by a substituent replaced at the same ring atom.
    """

    key: str
    removed: frozenset[str]
    sites: frozenset[str]

    @classmethod
    @functools.lru_cache(maxsize=4096)
    def from_smiles(cls, smiles: str) -> OneEditKeys:
        """Keys of ``smiles`` (cached: benchmark and training molecules are compared with many
        candidates)."""
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            raise ValueError(f"unparsable SMILES {smiles!r}")
        removed, sites = set(), set()
        for root, branch in _ring_substituents(mol):
            for mark in (False, True):
                rw = Chem.RWMol(mol)
                if mark:
                    rw.AddBond(root, rw.AddAtom(Chem.Atom(0)), Chem.BondType.SINGLE)
                for idx in sorted(branch, reverse=True):
                    rw.RemoveAtom(idx)
                (sites if mark else removed).add(graph_key(rw.GetMol()))
        return cls(graph_key(mol), frozenset(removed), frozenset(sites))

    def relation_to(self, other: OneEditKeys) -> str | None:
        """How ``other`` relates to this molecule: ``"same"``, ``"added"`` (this one is
        ``other`` plus a substituent), ``"removed"``, ``"replaced"``, or None (further apart)."""
        if self.key == other.key:
            return "same"
        if other.key in self.removed:
            return "added"
        if self.key in other.removed:
            return "removed"
        if self.sites & other.sites:
            return "replaced"
        return None


def benchmark_neighbours(
    smiles: str, benchmark: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Benchmark molecules within one substituent edit of ``smiles``.

    Parameters
    ----------
    smiles : str
        Candidate seed molecule (or a benchmark molecule, with the training molecules as
        ``benchmark``).
    benchmark : iterable of (name, SMILES)
        The molecules to compare with, in the order the result lists them.

    Returns
    -------
    list of (name, relation)
        ``relation`` is ``"same"``, ``"added"``, ``"removed"`` or ``"replaced"`` (the candidate
        is the benchmark molecule with a substituent added / removed / replaced at the same
        ring atom). Empty when the candidate is at least two edits from every one of them.
    """
    keys = OneEditKeys.from_smiles(smiles)
    found = []
    for name, bench_smiles in benchmark:
        relation = keys.relation_to(OneEditKeys.from_smiles(bench_smiles))
        if relation is not None:
            found.append((name, relation))
    return found
