"""The conformer stage library: real RDKit, real values (no Prefect here)."""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolAlign

from densnet_core import keys as K
from densnet_core import store
from densnet_core.conformers import (
    FF_CONVERGED,
    conformer_key,
    conformers_table,
    pool_batch_size,
    process_batch,
    process_records,
    status_counts,
)
from densnet_core.inputs import InputRecord, read_records


def rec(smiles: str, i: int = 0, name: str = "m") -> InputRecord:
    return InputRecord(record_index=i, name=name, smiles=smiles)


def one(smiles: str, **options: object) -> dict:
    rows = process_batch([rec(smiles)], **options)
    assert len(rows) == 1
    return rows[0]


def test_ok_row_has_every_column_and_sane_geometry() -> None:
    row = one("CCO")
    assert set(store.SCHEMAS["conformers"].names) <= set(row)
    assert row[K.STATUS] == "ok" and row[K.ERROR] == ""
    assert row[K.MOL_ID] == "LFQSCWFLJHTTHZ-UHFFFAOYSA-N"
    assert row[K.SMILES] == "CCO" and row[K.INPUT_SMILES] == "CCO"
    assert sorted(row[K.NUMBERS]) == [1] * 6 + [6, 6, 8]
    pos = np.array(row[K.POSITIONS_ANGSTROM])
    assert pos.shape == (9, 3)
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    d_co = np.linalg.norm(pos[1] - pos[2])  # C-O bond
    assert 1.38 < d_co < 1.46
    assert row[K.FORCE_FIELD] == "MMFF94" and math.isfinite(row[K.MMFF_ENERGY_KCAL])
    assert row[FF_CONVERGED] is True
    assert row[K.N_HEAVY_ATOMS] == 3 and mol.GetNumAtoms() == 9
    assert row[K.CONFORMER_KEY] == conformer_key(row[K.NUMBERS], pos, 0, 1)


@pytest.mark.parametrize(
    ("smiles", "reason"),
    [
        ("C1CC", "unclosed ring"),
        ("CC)C", "extra close parentheses"),
        ("C(C)(C)(C)(C)C", "Explicit valence"),
        ("c1cccc1", "kekulize"),
        ("", "empty SMILES"),
    ],
)
def test_unparsable_smiles(smiles: str, reason: str) -> None:
    row = one(smiles)
    assert row[K.STATUS] == "invalid_smiles"
    assert row[K.ERROR].startswith(f"could not parse SMILES {smiles!r}: ")
    assert reason in row[K.ERROR]
    assert row[K.NUMBERS] == [] and row[K.POSITIONS_ANGSTROM] == []
    assert row[K.MOL_ID].startswith("record-") and len(row[K.MOL_ID]) == 21
    assert row[K.SMILES] == smiles and math.isnan(row[K.MMFF_ENERGY_KCAL])


def test_salt_counterion_stripped() -> None:
    row = one("CC(=O)[O-].[Na+]")
    assert row[K.STATUS] == "ok"
    assert row[K.SMILES] == "CC(=O)[O-]" and row[K.CHARGE] == -1
    assert row[K.FRAGMENT_NOTE] == "kept largest fragment; removed: [Na+]"
    assert 11 not in row[K.NUMBERS] and len(row[K.NUMBERS]) == 7


def test_metal_in_counterion_is_not_a_problem() -> None:
    row = one("[Pt+2].[O-]C(=O)c1ccccc1.[O-]C(=O)c1ccccc1")
    assert row[K.STATUS] == "ok" and row[K.CHARGE] == -1
    assert row[K.FRAGMENT_NOTE] == "kept largest fragment; removed: [Pt+2], O=C([O-])c1ccccc1"


@pytest.mark.parametrize(
    ("smiles", "elements"),
    [
        ("[Pt](Cl)(Cl)(N)N", "Pt"),
        ("C[Si](C)(C)C", "Si"),
        ("C[As](C)c1ccc([Se]C)cc1", "As, Se"),
        ("[Na+].[Cl-]", "Na"),  # no organic fragment: the first of equals is kept
    ],
)
def test_unsupported_elements(smiles: str, elements: str) -> None:
    row = one(smiles)
    assert row[K.STATUS] == "unsupported_element"
    assert row[K.ERROR] == (f"unsupported element(s): {elements} (supported: H C N O F P S Cl Br)")
    assert row[K.NUMBERS] == []


def test_ferrocene_like_salt_keeps_an_organic_fragment() -> None:
    row = one("[CH-]1C=CC=C1.[CH-]1C=CC=C1.[Fe+2]")
    assert row[K.STATUS] == "ok" and row[K.CHARGE] == -1
    assert "[Fe+2]" in row[K.FRAGMENT_NOTE]


def test_elements_are_configurable() -> None:
    row = one("C[Si](C)(C)C", supported_elements=("H", "C", "Si"))
    assert row[K.STATUS] == "ok" and 14 in row[K.NUMBERS]
    assert row[K.FORCE_FIELD] in ("MMFF94", "UFF")
    row = one("CCO", supported_elements=("H", "C"))
    assert row[K.STATUS] == "unsupported_element" and "O (supported: H C)" in row[K.ERROR]


def test_radical_multiplicity() -> None:
    row = one("[CH3]")
    assert row[K.STATUS] == "ok" and row[K.MULTIPLICITY] == 2 and row[K.CHARGE] == 0
    assert row[K.NUMBERS] == [6, 1, 1, 1]
    assert one("[CH2]")[K.MULTIPLICITY] == 3


def test_too_large() -> None:
    row = one("C" * 200)
    assert row[K.STATUS] == "too_large"
    assert row[K.ERROR] == "200 heavy atoms (limit 100)"
    assert row[K.N_HEAVY_ATOMS] == 200 and row[K.NUMBERS] == []
    assert one("C" * 20, max_heavy_atoms=10)[K.STATUS] == "too_large"


def test_stereo_flags() -> None:
    row = one("CC(O)CC")
    assert row[K.STATUS] == "ok"
    assert row[K.STEREO_NOTE] == "1 unassigned stereocentre embedded at random: atom 1"
    assert one("C[C@H](O)CC")[K.STEREO_NOTE] == ""
    two = one("CC(O)C(N)CC=CC")[K.STEREO_NOTE]
    assert two.startswith("2 unassigned stereocentres embedded at random: atoms 1, 3")
    assert "1 unassigned double bond embedded at random" in two
    assert one("C/C=C/C")[K.STEREO_NOTE] == ""


def test_assigned_stereo_is_respected() -> None:
    for smiles in ("C[C@H](O)CC", "C[C@@H](O)CC"):
        row = one(smiles)
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        conf = Chem.Conformer(mol.GetNumAtoms())
        for i, xyz in enumerate(row[K.POSITIONS_ANGSTROM]):
            conf.SetAtomPosition(i, xyz)
        mol.RemoveAllConformers()
        mol.AddConformer(conf, assignId=True)
        Chem.AssignStereochemistryFrom3D(mol)
        assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


@pytest.mark.slow
def test_impossible_stereo_is_an_error_not_a_wrong_geometry() -> None:
    # 2,3-disubstituted norbornane with bridgehead configurations that cannot close the bridge
    bad = one("CC(=O)OC[C@@H]1[C@H]2CC[C@@H](C2)[C@@H]1COC(C)=O")
    assert bad[K.STATUS] == "embedding_failed"
    assert bad[K.NUMBERS] == []
    assert "geometrically possible?" in bad[K.ERROR]
    good = one("CC(=O)OC[C@@H]1[C@H]2CC[C@H](C2)[C@@H]1COC(C)=O")
    assert good[K.STATUS] == "ok"


def test_multiple_conformers_sorted_and_pruned() -> None:
    threshold = 0.5
    rows = process_batch([rec("CCCCCO")], n_conformers=5, rms_prune_angstrom=threshold)
    assert 2 <= len(rows) <= 5
    assert [r[K.CONFORMER_ID] for r in rows] == list(range(len(rows)))
    energies = [r[K.MMFF_ENERGY_KCAL] for r in rows]
    assert energies == sorted(energies)
    assert len({r[K.CONFORMER_KEY] for r in rows}) == len(rows)
    mols = []
    for r in rows:
        m = Chem.RemoveHs(_mol_from_row("CCCCCO", r))
        mols.append(m)
    for a, b in combinations(mols, 2):
        assert rdMolAlign.GetBestRMS(Chem.Mol(a), Chem.Mol(b)) >= threshold


def _mol_from_row(smiles: str, row: dict) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, xyz in enumerate(row[K.POSITIONS_ANGSTROM]):
        conf.SetAtomPosition(i, xyz)
    mol.AddConformer(conf, assignId=True)
    return mol


def test_conformer_key_invariants() -> None:
    numbers = [8, 1, 1]
    pos = [[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]]
    neg_zero = [[-0.0, 0.0, -0.0], [0.95720000001, -0.0, 0.0], [-0.24, 0.92659999, -0.00001]]
    key = conformer_key(numbers, pos, 0, 1)
    assert len(key) == 20 and int(key, 16) >= 0
    assert conformer_key(numbers, neg_zero, 0, 1) == key
    assert conformer_key(numbers, np.array(pos), 0, 1) == key
    assert conformer_key(numbers, pos, 1, 2) != key
    assert conformer_key(numbers, [[0.001, 0, 0], *pos[1:]], 0, 1) != key


def test_order_preserved_and_deterministic_under_reordering() -> None:
    smiles = ["CCO", "C1CC", "c1ccccc1O", "C[Si](C)(C)C", "CC(=O)Nc1ccccc1", "CCN"]
    records = [rec(s, i, f"n{i}") for i, s in enumerate(smiles)]
    rows = process_batch(records)
    assert [r[K.RECORD_INDEX] for r in rows] == list(range(len(smiles)))
    assert [r[K.NAME] for r in rows] == [f"n{i}" for i in range(len(smiles))]
    reversed_rows = process_batch(
        [rec(s, i, f"n{i}") for i, s in reversed(list(enumerate(smiles)))]
    )
    by_index = {r[K.RECORD_INDEX]: r for r in reversed_rows}
    for r in rows:
        assert by_index[r[K.RECORD_INDEX]][K.CONFORMER_KEY] == r[K.CONFORMER_KEY]
    assert status_counts(rows) == {"ok": 4, "invalid_smiles": 1, "unsupported_element": 1}


def test_unexpected_exception_becomes_an_error_row() -> None:
    rows = process_batch([rec("CCO", 0), rec("CCN", 1)], n_conformers="many")
    assert [r[K.STATUS] for r in rows] == ["embedding_failed"] * 2
    assert rows[0][K.ERROR].startswith("ValueError: ")


def test_invalid_input_record_error_is_kept() -> None:
    error = "line 2 is not valid UTF-8"
    bad = InputRecord(record_index=0, name="x", smiles="CC\ufffdN", error=error)
    row = process_batch([bad])[0]
    assert row[K.STATUS] == "invalid_input" and row[K.ERROR] == "line 2 is not valid UTF-8"


def test_bad_files_end_to_end(tmp_path: Path) -> None:
    p = tmp_path / "bad.smi"
    p.write_bytes(b"CCO ok\r\nC1CC broken\r\nCC\xffN notutf8\r\n[CH3] radical\r\nCCO ok\r\n")
    records = read_records(p)
    rows = process_batch(records)
    assert [r[K.STATUS] for r in rows] == [
        "ok",
        "invalid_smiles",
        "invalid_input",
        "ok",
        "ok",
    ]
    assert [r[K.NAME] for r in rows] == ["ok", "broken", "notutf8", "radical", "ok"]
    assert rows[0][K.CONFORMER_KEY] == rows[4][K.CONFORMER_KEY]  # same molecule, same seed


# --- SDF -------------------------------------------------------------------------------------
def _embedded(smiles: str, seed: int = 7) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    return mol


def _sdf(tmp_path: Path, *mols: Chem.Mol, names: list[str] | None = None) -> Path:
    p = tmp_path / "in.sdf"
    with Chem.SDWriter(str(p)) as w:
        for i, m in enumerate(mols):
            m.SetProp("_Name", names[i] if names else f"mol{i}")
            w.write(m)
    return p


def test_sdf_3d_coordinates_preserved_exactly(tmp_path: Path) -> None:
    mol = _embedded("OCC(=O)N")
    p = _sdf(tmp_path, mol)
    expected = Chem.MolFromMolFile(str(p), removeHs=False).GetConformer().GetPositions()
    row = process_batch(read_records(p))[0]
    assert row[K.STATUS] == "ok" and row[K.NAME] == "mol0"
    assert np.array_equal(np.array(row[K.POSITIONS_ANGSTROM]), expected)
    assert row[K.NUMBERS] == [a.GetAtomicNum() for a in mol.GetAtoms()]
    assert row[K.FORCE_FIELD] == "none" and math.isfinite(row[K.MMFF_ENERGY_KCAL])
    assert row[K.MOL_ID] == Chem.MolToInchiKey(Chem.MolFromSmiles("OCC(=O)N"))
    assert "coordinates used as given; MMFF94 single-point energy" in row[K.INPUT_NOTE]
    # the prediction path's option: the same row without the single point
    bare = process_batch(read_records(p), sdf_energy=False)[0]
    assert math.isnan(bare[K.MMFF_ENERGY_KCAL]) and "MMFF94" not in bare[K.INPUT_NOTE]
    assert {k: v for k, v in bare.items() if k not in (K.MMFF_ENERGY_KCAL, K.INPUT_NOTE)} == {
        k: v for k, v in row.items() if k not in (K.MMFF_ENERGY_KCAL, K.INPUT_NOTE)
    }


def test_sdf_without_hydrogens_gets_them_with_coordinates(tmp_path: Path) -> None:
    heavy = Chem.RemoveHs(_embedded("CCO"))
    p = _sdf(tmp_path, heavy)
    row = process_batch(read_records(p))[0]
    assert row[K.STATUS] == "ok" and len(row[K.NUMBERS]) == 9
    pos = np.array(row[K.POSITIONS_ANGSTROM])
    assert np.allclose(pos[:3], np.round(heavy.GetConformer().GetPositions(), 4))
    assert "added 6 hydrogens" in row[K.INPUT_NOTE]


def test_sdf_without_coordinates(tmp_path: Path) -> None:
    flat = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    flat.AddConformer(Chem.Conformer(flat.GetNumAtoms()), assignId=True)  # all zeros
    twod = Chem.MolFromSmiles("C[C@H](O)CC")
    AllChem.Compute2DCoords(twod)
    p = _sdf(tmp_path, flat, twod, names=["zeros", "drawing"])
    rows = process_batch(read_records(p))
    assert rows[0][K.STATUS] == "invalid_input"
    assert rows[0][K.ERROR] == "SDF record has no coordinates (all atoms at the origin)"
    assert rows[1][K.STATUS] == "ok" and rows[1][K.FORCE_FIELD] == "MMFF94"
    assert "SDF record is 2D; embedded from its connectivity" in rows[1][K.INPUT_NOTE]
    assert rows[1][K.MOL_ID] == Chem.MolToInchiKey(Chem.MolFromSmiles("C[C@H](O)CC"))
    assert np.ptp(np.array(rows[1][K.POSITIONS_ANGSTROM])[:, 2]) > 0.5


# --- tables ----------------------------------------------------------------------------------
def test_store_round_trip_and_passthrough(tmp_path: Path) -> None:
    records = [rec(s, i, f"n{i}") for i, s in enumerate(["CCO", "C1CC", "CCCCO"])]
    rows = process_batch(records, n_conformers=2)
    path = store.write_table(rows, tmp_path / "conf.parquet", "conformers")
    df = store.read_table(path, "conformers")
    assert len(df) == len(rows)
    assert list(df[K.STATUS]) == [r[K.STATUS] for r in rows]
    assert df[K.POSITIONS_ANGSTROM].iloc[0].shape == (9,)  # object column of row arrays
    np.testing.assert_array_equal(
        np.stack(df[K.POSITIONS_ANGSTROM].iloc[0]), np.array(rows[0][K.POSITIONS_ANGSTROM])
    )
    # a conformers table as input: rows pass straight through
    again = read_records(path)
    assert [r.name for r in again] == ["n0", "n1", "n2"]
    rows2 = process_batch(again)
    assert [r[K.CONFORMER_KEY] for r in rows2] == [r[K.CONFORMER_KEY] for r in rows]
    assert [r[K.STATUS] for r in rows2] == [r[K.STATUS] for r in rows]


def test_empty_table_has_the_schema(tmp_path: Path) -> None:
    path = store.write_table(process_batch([]), tmp_path / "empty.parquet", "conformers")
    df = store.read_table(path, "conformers")
    assert len(df) == 0 and set(store.SCHEMAS["conformers"].names) <= set(df.columns)


# --- force-field convergence -----------------------------------------------------------------
def test_optimised_geometry_is_a_converged_mmff94_minimum() -> None:
    smiles = "CC(=O)Nc1ccc(O)cc1OCCN(C)C"
    row = one(smiles)
    assert row[K.FORCE_FIELD] == "MMFF94" and row[FF_CONVERGED] is True
    mol = _mol_from_row(smiles, row)
    props = AllChem.MMFFGetMoleculeProperties(mol)
    ff = AllChem.MMFFGetMoleculeForceField(mol, props)
    assert ff.CalcEnergy() == pytest.approx(row[K.MMFF_ENERGY_KCAL], abs=1e-3)
    assert np.abs(np.array(ff.CalcGrad())).max() < 0.05  # kcal/mol/Å: at a minimum
    assert ff.Minimize(maxIts=1000) == 0
    assert ff.CalcEnergy() == pytest.approx(row[K.MMFF_ENERGY_KCAL], abs=1e-3)


def test_unconverged_optimisation_is_reported() -> None:
    row = one("CC(=O)Nc1ccc(O)cc1OCCN(C)C", mmff_max_iters=3)
    assert row[K.STATUS] == "ok" and row[FF_CONVERGED] is False
    uff = one("C[Si](C)(C)C", supported_elements=("H", "C", "Si"))
    assert isinstance(uff[FF_CONVERGED], bool)
    assert one("C1CC")[FF_CONVERGED] is None


def test_sdf_3d_rows_are_not_optimised(tmp_path: Path) -> None:
    p = _sdf(tmp_path, _embedded("OCC(=O)N"))
    assert process_batch(read_records(p))[0][FF_CONVERGED] is None


# --- process pool and whole-file path --------------------------------------------------------
MIXED = ["CCO", "C1CC", "CC(=O)[O-].[Na+]", "[CH3]", "C[Si](C)(C)C", "C" * 120, "CC(O)CC"]


def test_pool_matches_in_process_and_keeps_order() -> None:
    records = [rec(s, i, f"n{i}") for i, s in enumerate(MIXED * 3)]
    serial = process_batch(records, n_conformers=2)
    done: list[int] = []
    pooled = process_records(
        records, workers=2, batch_size=2, on_progress=done.append, n_conformers=2
    )
    assert sum(done) == len(records) and len(done) == math.ceil(len(records) / 2)
    assert [r[K.RECORD_INDEX] for r in pooled] == [r[K.RECORD_INDEX] for r in serial]
    assert [r[K.CONFORMER_KEY] for r in pooled] == [r[K.CONFORMER_KEY] for r in serial]
    assert [r[K.STATUS] for r in pooled] == [r[K.STATUS] for r in serial]


def test_single_worker_pool_matches_in_process() -> None:
    """``use_pool=True`` with one worker (the 3D-SDF predict path) gives the in-process rows."""
    records = [rec(s, i, f"n{i}") for i, s in enumerate(MIXED)]
    serial = process_batch(records, n_conformers=1)
    done: list[int] = []
    pooled = process_records(
        records, workers=1, use_pool=True, batch_size=3, on_progress=done.append, n_conformers=1
    )
    assert sum(done) == len(records)
    assert [r[K.RECORD_INDEX] for r in pooled] == [r[K.RECORD_INDEX] for r in serial]
    assert [r[K.STATUS] for r in pooled] == [r[K.STATUS] for r in serial]
    assert [r[K.CONFORMER_KEY] for r in pooled] == [r[K.CONFORMER_KEY] for r in serial]
    for a, b in zip(pooled, serial, strict=True):
        if a[K.STATUS] == "ok":
            np.testing.assert_allclose(a[K.POSITIONS_ANGSTROM], b[K.POSITIONS_ANGSTROM], atol=1e-6)


def test_pool_batch_size() -> None:
    assert pool_batch_size(1017, 2) == 16
    assert pool_batch_size(10, 2) == 1
    assert pool_batch_size(0, 2) == 1


def test_conformers_table_writes_every_record(tmp_path: Path) -> None:
    src = tmp_path / "in.smi"
    src.write_text("".join(f"{s} n{i}\n" for i, s in enumerate(MIXED)))
    seen: list[tuple[int, int]] = []
    summary = conformers_table(
        src,
        tmp_path / "out.parquet",
        workers=2,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    assert summary["n_records"] == len(MIXED) and summary["workers"] == 2
    assert summary["status_counts"] == {
        "ok": 4,
        "invalid_smiles": 1,
        "unsupported_element": 1,
        "too_large": 1,
    }
    assert seen[0] == (0, len(MIXED)) and seen[-1] == (len(MIXED), len(MIXED))
    df = store.read_table(summary["output"], "conformers")
    assert list(df[K.RECORD_INDEX]) == list(range(len(MIXED)))
    assert list(df[K.NAME]) == [f"n{i}" for i in range(len(MIXED))]
    assert df.loc[2, K.FRAGMENT_NOTE] == "kept largest fragment; removed: [Na+]"
    assert df.loc[2, K.CHARGE] == -1 and df.loc[3, K.MULTIPLICITY] == 2
    assert df.loc[6, K.STEREO_NOTE].startswith("1 unassigned stereocentre")
    assert list(df[FF_CONVERGED]) == [True, None, True, True, None, None, True]


def test_etkdg_params_skip_macrocycle_terms_only_without_large_rings() -> None:
    """Switching the macrocycle options off changes nothing for ordinary molecules."""
    from rdkit.Chem import rdDistGeom

    from densnet_core.conformers import etkdg_v3_params

    for smiles in ["CC(=O)Nc1ccc(O)cc1", "C1CCC2(CC1)OCCO2", "O=C1CCCCCN1", "Clc1ccc2[nH]ccc2c1"]:
        mol = Chem.MolFromSmiles(smiles)
        params = etkdg_v3_params(mol, 7)
        assert not params.useMacrocycleTorsions and not params.useMacrocycle14config
        plain = rdDistGeom.ETKDGv3()
        plain.randomSeed = 7
        plain.numThreads = 1
        a, b = Chem.Mol(mol), Chem.Mol(mol)
        assert rdDistGeom.EmbedMolecule(a, params) == 0
        assert rdDistGeom.EmbedMolecule(b, plain) == 0
        np.testing.assert_array_equal(
            a.GetConformer().GetPositions(), b.GetConformer().GetPositions()
        )
    # an 8-membered ring and a 14-membered macrocyclic lactone keep ETKDGv3's options
    for smiles in ["C1CCCCCCC1", "O=C1CCCCCCCCCCCCO1"]:
        params = etkdg_v3_params(Chem.MolFromSmiles(smiles), 7)
        assert params.useMacrocycleTorsions and params.useMacrocycle14config
        params = etkdg_v3_params(Chem.MolFromSmiles(smiles, sanitize=False), 7)
        assert params.useMacrocycleTorsions and params.useMacrocycle14config


def test_conformers_table_filtered_in_pandas_is_still_an_input(tmp_path: Path) -> None:
    """A conformers table subset with pandas (which drops densnet's Parquet metadata) is
    recognised, read back with the declared types, and accepted as input."""
    rows = process_records([rec(s, i, f"m{i}") for i, s in enumerate(["CCO", "c1ccncc1", "CC#N"])])
    full = store.write_table(rows, tmp_path / "all.parquet", "conformers")
    subset = store.read_table(full, "conformers").iloc[[0, 2]]  # index 0, 2: not a range
    plain = tmp_path / "subset.parquet"
    subset.to_parquet(plain)
    assert store.table_name(plain) == "conformers"
    back = store.read_table(plain, "conformers")
    assert (
        list(back.columns[: len(store.SCHEMAS["conformers"])]) == store.SCHEMAS["conformers"].names
    )
    assert back[K.NAME].tolist() == ["m0", "m2"]
    np.testing.assert_array_equal(
        np.stack(back[K.POSITIONS_ANGSTROM].iloc[1]), np.stack(rows[2][K.POSITIONS_ANGSTROM])
    )
    assert [r.name for r in read_records(plain)] == ["m0", "m2"]
    with pytest.raises(store.SchemaError, match="not 'labels'"):
        store.read_table(plain, "labels")


def test_conformer_pool_forks_only_when_safe(tmp_path: Path) -> None:
    """Forked workers (no other thread, no torch: the command line before its torch import)
    give the same rows as spawned ones; a process with torch or another thread spawns."""
    import json
    import subprocess
    import sys

    sdf = tmp_path / "in.sdf"
    with Chem.SDWriter(str(sdf)) as w:
        for i, smi in enumerate(["CCO", "c1ccc(O)cc1F", "CC(=O)Nc1ccccc1", "OC(=O)c1ccncc1"]):
            mol = Chem.AddHs(Chem.MolFromSmiles(smi))
            AllChem.EmbedMolecule(mol, randomSeed=i)
            mol.SetProp("_Name", f"m{i}")
            w.write(mol)
    code = """
import json, sys, threading
{setup}
from densnet_core.conformer_pool import make_pool, _run_batch
from densnet_core.inputs import read_records
records = [r.to_dict() for r in read_records({sdf!r})]
pool = make_pool(1)
rows = pool.submit(_run_batch, records, {{}}).result()
pool.shutdown()
keep = ("name", "mol_id", "conformer_key", "smiles", "status", "ring_systems")
print(json.dumps({{"method": pool._mp_context.get_start_method(),
                  "rows": [{{k: r.get(k) for k in keep}} for r in rows]}}))
"""

    def run(setup: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", code.format(setup=setup, sdf=str(sdf))],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    forked = run("")
    with_torch = run("import torch")
    with_thread = run("threading.Thread(target=__import__('time').sleep, args=(5,)).start()")
    assert forked["method"] == "fork"
    assert with_torch["method"] == "spawn" and with_thread["method"] == "spawn"
    assert forked["rows"] == with_torch["rows"] == with_thread["rows"]
    assert [r["status"] for r in forked["rows"]] == ["ok"] * 4
