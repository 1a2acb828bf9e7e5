"""Fragment seeds (amons): capping, indivisible units, environment coverage, greedy pick."""

from __future__ import annotations

from collections import Counter

import pytest
from rdkit import Chem

from densnet_core import fragments as F


def _canon(smi: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smi))


def test_fragments_of_ethylbenzene_are_capped_real_molecules():
    frags = F.fragments_of(Chem.MolFromSmiles("CCc1ccccc1"), max_heavy_atoms=8, min_heavy_atoms=2)
    expected = {"CC", "c1ccccc1", "Cc1ccccc1", "CCc1ccccc1"}  # the ring is one unit
    assert set(frags) == {_canon(s) for s in expected}
    assert set(F.fragments_of(Chem.MolFromSmiles("CCc1ccccc1"), max_heavy_atoms=7)) == {
        _canon(s) for s in expected - {"CCc1ccccc1"}
    }


def test_rings_sulfonyl_and_nitro_are_never_cut():
    smi = "O=[N+]([O-])c1ccc(S(=O)(=O)Nc2ccc3ccccc3c2)cc1"
    frags = F.fragments_of(Chem.MolFromSmiles(smi), max_heavy_atoms=30)
    assert frags, "the molecule itself at least"
    for fsmi in frags:
        mol = Chem.MolFromSmiles(fsmi)
        assert mol is not None and Chem.GetFormalCharge(mol) == 0
        for atom in mol.GetAtoms():
            # no S(VI)-H / P(V)-H caps, no half nitro, no broken aromatic ring
            if atom.GetSymbol() == "S":
                assert atom.GetTotalNumHs() == 0
            if atom.GetIsAromatic():
                assert atom.IsInRing()
        n_nitro = len(mol.GetSubstructMatches(Chem.MolFromSmarts("[N+](=O)[O-]")))
        n_charged_n = sum(a.GetSymbol() == "N" and a.GetFormalCharge() == 1 for a in mol.GetAtoms())
        assert n_nitro == n_charged_n
        ring_sizes = sorted(len(r) for r in mol.GetRingInfo().AtomRings())
        assert all(s == 6 for s in ring_sizes)
        n_aromatic = sum(a.GetIsAromatic() for a in mol.GetAtoms())
        assert n_aromatic in (0, 6, 10, 16), fsmi  # whole benzene / naphthalene only


def test_environments_are_those_of_interior_atoms():
    frags, counts = F.library_fragments(["CCc1ccccc1"], max_heavy_atoms=8)
    by_smiles = {f.smiles: f for f in frags}
    whole = by_smiles[_canon("CCc1ccccc1")]
    assert whole.environments == set(counts)  # the molecule itself contains every environment
    toluene = by_smiles[_canon("Cc1ccccc1")]
    # the CH2 of ethylbenzene is a CH3 in toluene: its environment is not claimed
    assert len(toluene.environments) < len(whole.environments)
    assert sum(counts.values()) == 8


def test_select_fragments_covers_greedily_and_respects_exclusions():
    library = ["CCc1ccccc1", "CCOc1ccccc1", "OCCc1ccncc1"]
    frags, counts = F.library_fragments(library, max_heavy_atoms=9)
    picks = F.select_fragments(frags, counts, 50)
    gains = [g for _, g in picks]
    assert all(g > 0 for g in gains)
    covered = set().union(*(f.environments for f, _ in picks))
    reachable = set().union(*(f.environments for f in frags))
    assert covered == reachable  # stops only when nothing new is left
    # a fragment's gain only shrinks as coverage grows: gain per heavy atom never increases
    ratios = [g / f.n_heavy_atoms for f, g in picks]
    assert len(ratios) >= 3 and ratios == sorted(ratios, reverse=True)

    already = F.covered_environments(["CCc1ccccc1"])
    excluded = [picks[0][0].smiles]
    later = F.select_fragments(frags, counts, 50, covered=already, exclude_smiles=excluded)
    assert picks[0][0].smiles not in {f.smiles for f, _ in later}
    assert all(not (f.environments <= already) for f, _ in later)
    assert sum(g for _, g in later) < sum(gains)
    assert isinstance(counts, Counter)


@pytest.mark.parametrize("radius", [1, 2])
def test_claimed_environments_are_the_fragments_own(radius):
    """A fragment claims a parent atom's environment only if it holds it unchanged: the claimed
    keys are among the keys RDKit computes for the capped fragment itself (a cap within the
    environment would change a hydrogen count, and with it the key)."""
    parents = [
        "CCCCCCO",
        "O=C(O)c1ccc(NC(=O)CCl)cc1",
        "CN1CCN(c2ncc(-c3ccc(F)cc3)cn2)CC1",
        "O=S(=O)(Nc1ccccn1)c1ccc(Br)cc1",
    ]
    n_claimed = 0
    for smi in parents:
        for fsmi, claimed in F.fragments_of(
            Chem.MolFromSmiles(smi), max_heavy_atoms=10, radius=radius
        ).items():
            own = set(F.covered_environments([fsmi], radius=radius))
            assert claimed <= own, (smi, fsmi)
            n_claimed += len(claimed)
    assert n_claimed > 20


def test_radius_two_environments_need_a_larger_fragment():
    """In pentane, butane holds the radius-1 environments of a CH3 and of the CH2 next to it,
    but at radius 2 only the CH3's (that CH2 sees the far CH2, a CH3 in butane)."""
    pentane = Chem.MolFromSmiles("CCCCC")
    one = F.fragments_of(pentane, max_heavy_atoms=5, radius=1)
    two = F.fragments_of(pentane, max_heavy_atoms=5, radius=2)
    assert set(one) == set(two)  # the same fragments; only the environments they claim differ
    assert len(one[_canon("CCCC")]) == 2 and len(two[_canon("CCCC")]) == 1
    assert len(one[_canon("CCCCC")]) == len(two[_canon("CCCCC")]) == 3
    frags, counts = F.library_fragments(["CCCCC"], max_heavy_atoms=5, radius=2)
    assert sum(counts.values()) == 5
    assert {f.smiles for f in frags if f.environments} == {_canon("CCCC"), _canon("CCCCC")}
