"""Out-of-distribution reasons: unseen elements, unseen ring systems, high ensemble spread."""

from __future__ import annotations

import numpy as np
import pytest

from densnet_core.ood import (
    OODCriteria,
    ood_flags,
    ood_reasons,
    ring_systems,
    training_ring_systems,
)


@pytest.mark.parametrize(
    ("smiles", "expected"),
    [
        ("CCO", []),
        ("c1ccccc1", ["c1ccccc1"]),
        ("Cc1ccccc1", ["c1ccccc1"]),  # substituents dropped
        ("c1cc[nH]c1", ["c1ccnc1"]),  # H dropped: pyrrole ...
        ("Cn1cccc1", ["c1ccnc1"]),  # ... and N-methylpyrrole are one system
        ("Clc1ccccn1", ["c1ccncc1"]),  # written from any atom order
        ("c1ccc2[nH]ccc2c1", ["c1ccc2nccc2c1"]),  # fused rings merged
        ("c1ccc(cc1)-c1ccncc1", ["c1ccccc1", "c1ccncc1"]),  # linked rings stay apart
        ("C1CC12CC2", ["C1CC12CC2"]),  # spiro merged
        ("O=C1CCCCC1", ["C1CCCCC1"]),  # exocyclic bond dropped
    ],
)
def test_ring_systems(smiles, expected):
    assert ring_systems(smiles) == expected


def test_ring_systems_canonical_and_invalid():
    assert ring_systems("n1ccccc1") == ring_systems("c1ccncc1")
    assert ring_systems("not a smiles") is None


CRIT = OODCriteria(
    training_elements=frozenset({1, 6, 7, 8}),
    training_ring_systems=frozenset(training_ring_systems(["c1ccncc1", "CCO", "Oc1ccccc1"])),
    max_std_dipole_debye=0.2,
    max_std_alpha_iso_au=1.5,
)


def test_ood_flags_unseen_element_ring_and_uncertainty_not_training_molecules():
    smiles = ["Cc1ccncc1", "CCO", "Clc1ccccc1", "c1ccc2ncccc2c1", "CCCO", "CCN", "c1ccoc1"]
    numbers = [
        [6, 6, 6, 6, 7, 6, 6] + [1] * 7,
        [6, 6, 8, 1, 1, 1, 1, 1, 1],
        [17, 6, 6, 6, 6, 6, 6, 1, 1, 1, 1, 1],
        [6] * 9 + [7] + [1] * 7,
        [6, 6, 6, 8] + [1] * 8,
        [6, 6, 7] + [1] * 7,
        [6, 6, 6, 6, 8, 1, 1, 1, 1],
    ]
    sd = np.array([0.1, 0.05, 0.1, 0.1, 0.5, 0.1, np.nan])
    sa = np.array([1.0, 0.2, 1.0, 1.0, 1.0, 3.0, np.nan])
    reasons = ood_reasons(smiles, numbers, sd, sa, CRIT)
    assert reasons[0] == "" and reasons[1] == ""  # training ring system / molecule
    assert reasons[2] == "element absent from training: Cl"  # benzene ring is known (phenol)
    assert reasons[3] == "ring system absent from training: c1ccc2ncccc2c1"
    assert reasons[4].startswith("high uncertainty: std |mu| 0.5 D > 0.2 D")
    assert "std alpha_iso 3 au > 1.5 au" in reasons[5]
    assert reasons[6] == "ring system absent from training: c1ccoc1"  # NaN std not checked
    assert ood_flags(reasons) == [False, False, True, True, True, True, True]


def test_given_ring_systems_are_used_and_missing_ones_found_from_the_smiles():
    """Ring systems the conformer stage recorded replace parsing the SMILES; None (a
    conformers table written before the column existed) falls back to the SMILES."""
    smiles = ["c1ccc2ncccc2c1", "c1ccc2ncccc2c1", "CCO"]
    numbers = [[6] * 9 + [7] + [1] * 7] * 2 + [[6, 6, 8] + [1] * 6]
    nan = np.full(3, np.nan)
    rings = [["c1ccncc1"], None, ["C1CC1"]]  # the first and last differ from their SMILES
    reasons = ood_reasons(smiles, numbers, nan, nan, CRIT, rings=rings)
    assert reasons == [
        "",
        "ring system absent from training: c1ccc2ncccc2c1",
        "ring system absent from training: C1CC1",
    ]
    with pytest.raises(ValueError, match="one entry per molecule"):
        ood_reasons(smiles, numbers, nan, nan, CRIT, rings=rings[:2])


def test_conformer_stage_ring_systems_equal_those_of_the_smiles():
    """The ring systems recorded from the processed molecule (salts stripped; SDF molecules
    with explicit hydrogens) equal what the SMILES gives, on real NCI records (salts, metals,
    odd valences) and on 3D SDF blocks written from them."""
    from pathlib import Path

    from rdkit import Chem, RDConfig
    from rdkit.Chem import AllChem

    from densnet_core import keys as K
    from densnet_core.conformers import _identity, _parse_smiles, keep_largest_fragment
    from densnet_core.ood import ring_systems_of_mol

    lines = (Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi").read_text().splitlines()
    compared = salts = 0
    for line in lines[:1500]:
        mol, _ = _parse_smiles(line.split()[0])
        if mol is None:
            continue
        mol, note = keep_largest_fragment(mol)
        salts += bool(note)
        row: dict = {}
        _identity(row, mol)
        assert row[K.RING_SYSTEMS] == ring_systems(row[K.SMILES]), row[K.SMILES]
        compared += 1
    assert compared > 1400 and salts > 20
    for seed, smi in enumerate(["CN1CCC(CC1)c1ccc2[nH]ccc2c1", "O=C(O)c1ccccc1C1CC12CC2"]):
        mol_h = Chem.AddHs(Chem.MolFromSmiles(smi))
        assert AllChem.EmbedMolecule(mol_h, randomSeed=seed) == 0
        block = Chem.MolFromMolBlock(Chem.MolToMolBlock(mol_h), removeHs=False)
        assert list(ring_systems_of_mol(block)) == ring_systems(smi)


def test_ood_from_manifest_dict_and_several_reasons():
    manifest = {
        "training_elements": [1, 6, 8],
        "training_ring_systems": ["c1ccccc1"],
        "calibration": {"ood_thresholds": {"dipole_debye_std": 0.3}},
    }
    (r,) = ood_reasons(["Brc1ccncc1"], [[35, 6, 6, 6, 6, 7, 6, 1, 1, 1, 1]], [1.0], [9.0], manifest)
    assert r.split("; ") == [
        "element absent from training: N, Br",
        "ring system absent from training: c1ccncc1",
        "high uncertainty: std |mu| 1 D > 0.3 D",
    ]  # no alpha threshold in this manifest: not checked
    with pytest.raises(ValueError):
        ood_reasons(["C"], [[6]], [0.1, 0.2], [0.1], manifest)


def test_size_reason_and_unknown_checks_skipped():
    crit = OODCriteria(training_elements=frozenset({1, 6}), max_heavy_atoms=3)
    reasons = ood_reasons(["CCCC", "CCC", "c1ccccc1"], [[6] * 4, [6] * 3, [6] * 6 + [1] * 6],
                          [np.nan] * 3, [np.nan] * 3, crit)  # fmt: skip
    assert reasons[0] == "4 heavy atoms > 3 seen in training"
    assert reasons[1] == ""
    # empty known ring systems: every ring is new; None: not checked
    assert (
        reasons[2]
        == "ring system absent from training: c1ccccc1; 6 heavy atoms > 3 seen in training"
    )
    unknown = OODCriteria(training_elements=frozenset({1, 6}), training_ring_systems=None)
    assert ood_reasons(["c1ccccc1"], [[6] * 6], [np.nan], [np.nan], unknown) == [""]


def test_criteria_from_a_model_card_and_an_old_manifest():
    card = {
        "elements_in_data": [1, 6, 7, 8],
        "training_elements": [1, 6, 8],
        "training_ring_systems": ["c1ccccc1"],
        "max_heavy_atoms_in_data": 12,
    }
    crit = OODCriteria.from_model_card(card, supported_elements=[1, 6, 7, 8, 9])
    assert crit.training_elements == {1, 6, 8} and crit.max_heavy_atoms == 12
    assert crit.training_ring_systems == {"c1ccccc1"} and crit.max_std_dipole_debye is None
    bare = OODCriteria.from_model_card({}, supported_elements=[1, 6])
    assert bare.training_elements == {1, 6}
    assert bare.training_ring_systems is None and bare.max_heavy_atoms is None
    old = OODCriteria.from_manifest({"training_elements": [1, 6]})
    assert old.training_ring_systems is None and old.max_heavy_atoms is None


def _label_rows(entries):
    """Minimal rows of the labels schema (only identity and status matter here)."""
    from densnet_core import keys as K
    from densnet_core import store

    names = store.SCHEMAS["labels"].names
    rows = []
    for mol_id, smiles, numbers, status in entries:
        row = dict.fromkeys(names)
        row.update({K.MOL_ID: mol_id, K.SMILES: smiles, K.NUMBERS: numbers, K.STATUS: status,
                    K.RECORD_INDEX: 0, K.CONFORMER_ID: 0, K.ERROR: ""})  # fmt: skip
        rows.append(row)
    return rows


def test_domain_from_the_label_store_named_by_an_old_card(tmp_path, caplog):
    from densnet_core import store
    from densnet_core.ood import complete_domain, domain_from_label_store

    labels = tmp_path / "data" / "labels"
    store.append_part(
        _label_rows([
            ("A", "c1ccncc1", [6, 6, 6, 6, 6, 7] + [1] * 5, "ok"),
            ("B", "CCO", [6, 6, 8] + [1] * 6, "ok"),
            ("C", "c1ccc2ccccc2c1", [6] * 10 + [1] * 8, "ok"),  # validation molecule
            ("D", "CCCCCCCCCCCC[Si]", [6] * 12 + [14], "scf_not_converged"),
        ]),
        labels,
        "labels",
    )  # fmt: skip
    got = domain_from_label_store(labels, ["A", "B", "D"])
    assert got["training_ring_systems"] == ["c1ccncc1"]
    assert got["max_heavy_atoms_in_data"] == 6 and got["training_elements"] == [1, 6, 7, 8]
    card = {"model_id": "m-1", "training_inchikeys": ["A", "B"],
            "training_settings": {"labels_dir": "data/labels"}}  # fmt: skip
    done = complete_domain(card, base_dirs=[tmp_path])  # relative to the repository root
    assert done["domain_source"] == f"label store {labels}"
    assert done["max_heavy_atoms_in_data"] == 6 and done["training_ring_systems"] == ["c1ccncc1"]
    assert "max_heavy_atoms_in_data" not in card  # not modified
    # recorded fields win; a missing store leaves the checks off and says so once
    assert (
        complete_domain({**card, "training_ring_systems": [], "max_heavy_atoms_in_data": 3})[
            "domain_source"
        ]
        == "recorded"
    )
    with caplog.at_level("WARNING", logger="densnet_core.ood"):
        lost = complete_domain({**card, "model_id": "m-2"}, base_dirs=[tmp_path / "nowhere"])
        complete_domain({**card, "model_id": "m-2"}, base_dirs=[tmp_path / "nowhere"])
    assert lost["domain_source"].startswith("incomplete: label store data/labels not found")
    assert "training_ring_systems" not in lost
    assert sum("ring-system and size" in r.message for r in caplog.records) == 1
