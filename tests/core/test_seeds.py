"""Seed-set selection on RDKit's real NCI file."""

from __future__ import annotations

from pathlib import Path

import pytest
from rdkit import Chem

from densnet_core.inputs import NCI_FIRST_5K, read_records
from densnet_core.near_neighbours import OneEditKeys, benchmark_neighbours
from densnet_core.seeds import DRUG_FRAGMENT_SEEDS, FUNCTIONAL_GROUP_SEEDS, select_seed_set
from densnet_core.store import read_dataset


@pytest.fixture(scope="module")
def pool() -> list[tuple[str, str]]:
    return [(f"NCI-{r.name}", r.smiles) for r in read_records(NCI_FIRST_5K) if r.smiles]


def test_seed_set_is_filtered_unique_deterministic_and_diverse(pool):
    seeds = select_seed_set(pool, n_from_pool=40, max_heavy_atoms=10)
    n_fixed = len({Chem.CanonSmiles(s) for _, s in FUNCTIONAL_GROUP_SEEDS})
    sources = [s.source for s in seeds]
    assert sources[:n_fixed] == ["functional_groups"] * n_fixed
    assert sources[n_fixed : n_fixed + 40] == ["maxmin"] * 40
    assert set(sources[n_fixed + 40 :]) == {"drug_fragments"}
    smiles = [s.smiles for s in seeds]
    assert len(set(smiles)) == len(smiles)
    # the appended fragments leave the MaxMin picks as they were
    without = select_seed_set(pool, n_from_pool=40, max_heavy_atoms=10, append=())
    assert without == seeds[: n_fixed + 40]
    for s in seeds[n_fixed : n_fixed + 40]:
        mol = Chem.MolFromSmiles(s.smiles)
        assert mol.GetNumHeavyAtoms() <= 10
        assert {a.GetSymbol() for a in mol.GetAtoms()} <= {"C", "N", "O", "F", "P", "S", "Cl", "Br"}
        assert Chem.GetFormalCharge(mol) == 0 and "." not in s.smiles
    assert select_seed_set(pool, n_from_pool=40, max_heavy_atoms=10) == seeds
    # MaxMin picks are more diverse than the first 40 eligible molecules of the file
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)

    def mean_similarity(smis: list[str]) -> float:
        fps = [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in smis]
        sims = [DataStructs.TanimotoSimilarity(a, b) for i, a in enumerate(fps) for b in fps[:i]]
        return sum(sims) / len(sims)

    in_file_order = []
    for _, smi in pool:
        mol = Chem.MolFromSmiles(smi)
        if mol is not None and mol.GetNumHeavyAtoms() <= 10 and "." not in smi:
            in_file_order.append(Chem.MolToSmiles(mol))
    picked = [s.smiles for s in seeds[n_fixed : n_fixed + 40]]
    assert mean_similarity(picked) < 0.8 * mean_similarity(in_file_order[:40])


DATA = Path(__file__).resolve().parents[2] / "data"


def _benchmark() -> list[tuple[str, str]]:
    """(name, SMILES) of the unseen-heterocycle benchmark (``data/benchmarks/heterocycles.smi``)."""
    return [(r.name, r.smiles) for r in read_records(DATA / "benchmarks" / "heterocycles.smi")]


def _benchmark_inchikeys() -> set[str]:
    return {Chem.MolToInchiKey(Chem.MolFromSmiles(s)) for _, s in _benchmark()}


def test_drug_fragments_are_not_benchmark_heterocycles():
    """The unseen-heterocycle benchmark must stay unseen: no fragment is one of its molecules."""
    bench = _benchmark_inchikeys()
    assert len(bench) >= 16
    frags = {Chem.MolToInchiKey(Chem.MolFromSmiles(s)) for _, s in DRUG_FRAGMENT_SEEDS}
    assert len(frags) == len(DRUG_FRAGMENT_SEEDS)
    assert not frags & bench


def test_no_seed_round_holds_a_benchmark_heterocycle():
    """Every seed input (seed set, fragment rounds, the heteroaromatic round) is disjoint from the
    heterocycle benchmark by InChIKey, so "never seen in training" stays true as rounds grow."""
    bench = _benchmark_inchikeys()
    inputs = sorted((DATA / "seed").glob("*.csv")) + sorted((DATA / "seed").glob("*/*.csv"))
    inputs += sorted((DATA / "seed").glob("*/*.smi"))
    names = {p.parent.name if p.parent.name != "seed" else p.name for p in inputs}
    assert {"seed_set.csv", "fragments", "fragments-nci", "heteroaromatics"} <= names
    for path in inputs:
        records = [r for r in read_records(path) if r.smiles]
        assert records, path
        keys = {Chem.MolToInchiKey(Chem.MolFromSmiles(r.smiles)): r.name for r in records}
        assert not set(keys) & bench, (path, [keys[k] for k in set(keys) & bench])


#: Seed rounds picked after looking at the heterocycle benchmark's errors, and the fragment
#: rounds built since ``scripts/build_fragment_seeds.py`` applies the same rule. They must not
#: hold a benchmark molecule with one substituent added, removed or replaced (the earlier rounds
#: were picked blind to the benchmark and only have to avoid its molecules themselves).
TARGETED_ROUNDS = (
    "heteroaromatics/heteroaromatics.smi",
    "lactams/lactams.smi",
    "lactams2/lactams2.smi",
    "sulfonyl/sulfonyl.smi",
    "motifs/motifs.smi",
    "fragments-r2-nci/fragments.csv",
    "fragments-r2-chembl/fragments.csv",
    "fragments-nci3/fragments.csv",
    "fragments-r2-phos/fragments.csv",
    "fragments-r2-sulfur/fragments.csv",
)


@pytest.mark.parametrize(
    ("candidate", "reference", "relation"),
    [
        ("Cn1ccccc1=O", "Cn1ccccc1=O", "same"),
        ("O=c1cccc[nH]1", "Cn1ccccc1=O", "removed"),  # 2-pyridone: the N-methyl removed
        ("Cc1ccc(=O)[nH]n1", "O=c1cccn[nH]1", "added"),  # 6-methylpyridazin-3(2H)-one
        ("O=c1[nH]c2ccccc2o1", "c1ccc2ocnc2c1", "added"),  # benzoxazol-2-one: oxo on the graph
        ("Oc1ccccn1", "O=c1cccc[nH]1", "same"),  # tautomers
        ("Cc1ncccn1", "Clc1ncccn1", "replaced"),  # Cl → CH3 at C2
        ("Clc1cccs1", "NS(=O)(=O)c1cccs1", "replaced"),
        ("Nc1ccncn1", "Clc1ncccn1", None),  # a substituent moved and replaced
        ("Cc1cc(=O)[nH]c(=O)[nH]1", "O=c1[nH]cc(F)c(=O)[nH]1", None),  # F removed and CH3 added
        ("O=c1[nH]ncc2ccccc12", "O=c1[nH]cnc2ccccc12", None),  # ring isomer
        ("Cn1cccnc1=O", "Cn1ccccc1=O", None),  # aza-analogue (ring CH → N)
    ],
)
def test_one_substituent_relations(candidate, reference, relation):
    assert OneEditKeys.from_smiles(candidate).relation_to(OneEditKeys.from_smiles(reference)) == (
        relation
    )
    found = benchmark_neighbours(candidate, [("b", reference)])
    assert found == ([] if relation is None else [("b", relation)])


def test_targeted_seed_rounds_hold_no_benchmark_neighbour():
    bench = _benchmark()
    for round_file in TARGETED_ROUNDS:
        records = [r for r in read_records(DATA / "seed" / round_file) if r.smiles]
        assert len(records) >= 10, round_file
        near = {r.name: benchmark_neighbours(r.smiles, bench) for r in records}
        assert not any(near.values()), {k: v for k, v in near.items() if v}


def test_seed_labels_of_targeted_rounds_keep_the_rule():
    """The label store trained on holds no benchmark neighbour from a targeted round (labels of
    scaffolds taken out of a round live in ``data/seed/labels-benchmark-neighbours``)."""
    bench = _benchmark()
    labels = read_dataset(DATA / "seed" / "labels", "labels")
    round_names = {
        r.name for f in TARGETED_ROUNDS for r in read_records(DATA / "seed" / f) if r.smiles
    }
    targeted = labels[labels["name"].isin(round_names)]
    assert targeted["name"].str.startswith("sulfonyl-").sum() >= 25
    assert len(targeted) >= 100
    assert not [
        n
        for n, s in zip(targeted["name"], targeted["smiles"], strict=True)
        if benchmark_neighbours(s, bench)
    ]
    apart = read_dataset(DATA / "seed" / "labels-benchmark-neighbours", "labels")
    assert len(apart) == 5
    assert all(benchmark_neighbours(s, bench) for s in apart["smiles"])
