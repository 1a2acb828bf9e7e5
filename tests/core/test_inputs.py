"""Reading input records: formats, header detection, robustness (no Prefect here)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from densnet_core.inputs import (
    CHEMBL_SERIES,
    NCI_FIRST_5K,
    InputFileError,
    InputRecord,
    rdkit_data_path,
    read_records,
    split_batches,
)

NCI = rdkit_data_path(NCI_FIRST_5K)
CHEMBL = rdkit_data_path(CHEMBL_SERIES)


def test_smiles_with_header_comments_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "in.smi"
    p.write_text("SMILES Name\n# a comment\n\nCCO ethanol\nc1ccccc1\tbenzene\nCC\n")
    recs = read_records(p)
    assert [r.smiles for r in recs] == ["CCO", "c1ccccc1", "CC"]
    assert [r.name for r in recs] == ["ethanol", "benzene", "record-3"]
    assert [r.record_index for r in recs] == [0, 1, 2]
    assert recs[2].note == "no name given; named record-3"
    assert all(r.error == "" and r.molblock is None for r in recs)


def test_crlf_line_endings(tmp_path: Path) -> None:
    p = tmp_path / "in.smi"
    p.write_bytes(b"CCO a\r\nCCN b\r\n\r\nCCC c\r\n")
    recs = read_records(p)
    assert [(r.smiles, r.name) for r in recs] == [("CCO", "a"), ("CCN", "b"), ("CCC", "c")]


def test_bytes_not_utf8_give_an_error_record(tmp_path: Path) -> None:
    p = tmp_path / "in.smi"
    p.write_bytes(b"CCO a\nCC\xff\xfeN bad\nCCC c\n")
    recs = read_records(p)
    assert len(recs) == 3
    assert recs[1].error == "line 2 is not valid UTF-8"
    assert recs[0].error == recs[2].error == ""
    assert recs[1].name == "bad"


def test_empty_file_gives_no_records(tmp_path: Path) -> None:
    p = tmp_path / "empty.smi"
    p.write_bytes(b"")
    assert read_records(p) == []
    (tmp_path / "empty.csv").write_text("")
    assert read_records(tmp_path / "empty.csv") == []


def test_duplicate_names_kept_and_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "in.smi"
    p.write_text("CCO x\nCCN x\nCCC y\n")
    with caplog.at_level(logging.WARNING, logger="densnet_core.inputs"):
        recs = read_records(p)
    assert [r.name for r in recs] == ["x", "x", "y"]
    assert "duplicate record names" in caplog.text and "'x' x2" in caplog.text


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found"):
        read_records(tmp_path / "nope.smi")
    (tmp_path / "in.xyz").write_text("3\n\nC 0 0 0\n")
    with pytest.raises(InputFileError, match="unknown input format"):
        read_records(tmp_path / "in.xyz")


def test_csv_case_insensitive_columns(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_text('id2,SMILES,Name\n1,CCO,ethanol\n2,"C(=O)O",\n')
    recs = read_records(p)
    assert [(r.smiles, r.name) for r in recs] == [("CCO", "ethanol"), ("C(=O)O", "record-2")]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputFileError, match="no 'smiles' column"):
        read_records(bad)


def test_sdf_records_keep_title_and_text(tmp_path: Path) -> None:
    block = "mol-a\n  RDKit          3D\n\n  1  0  0  0  0  0  0  0  0  0999 V2000\n"
    block += "    0.1000    0.2000    0.3000 O   0  0  0  0  0  0  0  0  0  0  0  0\nM  END\n"
    p = tmp_path / "in.sdf"
    p.write_text(block + "$$$$\n" + block.replace("mol-a", "") + "$$$$\n")
    recs = read_records(p)
    assert [r.name for r in recs] == ["mol-a", "record-2"]
    assert recs[0].smiles is None and recs[0].molblock is not None
    assert "0.1000    0.2000    0.3000 O" in recs[0].molblock


def test_rdkit_reference_files() -> None:
    nci = read_records(NCI)
    n_lines = sum(1 for line in NCI.read_text().splitlines() if line.strip())
    assert len(nci) == n_lines == 4999
    assert (nci[0].smiles, nci[0].name) == ("CC1=CC(=O)C=CC1=O", "1")
    chembl = read_records(CHEMBL)
    assert len(chembl) == 1017
    assert chembl[0].name.startswith("CHEMBL") or chembl[0].name.isdigit()
    assert all(r.error == "" for r in chembl)


def test_rdkit_paths_name_the_bundled_files() -> None:
    from rdkit import RDConfig

    assert NCI == Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi" and NCI.is_file()
    assert CHEMBL == Path(RDConfig.RDContribDir) / "FreeWilson/data/CHEMBL2321810.smi"
    assert CHEMBL.is_file()
    assert rdkit_data_path("plain/file.smi") == Path("plain/file.smi")
    assert [r.smiles for r in read_records(CHEMBL_SERIES)] == [
        r.smiles for r in read_records(CHEMBL)
    ]
    with pytest.raises(InputFileError, match=r"not found: .*Data/NCI/missing\.smi"):
        read_records("rdkit:Data/NCI/missing.smi")


def test_record_dict_round_trip() -> None:
    r = InputRecord(record_index=3, name="n", smiles="CCO", note="x")
    assert InputRecord.from_dict(r.to_dict()) == r


@pytest.mark.parametrize(("n", "workers"), [(0, 2), (1, 2), (7, 2), (1017, 2), (4999, 2), (50, 1)])
def test_split_batches_cover_in_order(n: int, workers: int) -> None:
    batches = split_batches(n, workers)
    assert [i for b in batches for i in b] == list(range(n))
    if n >= workers:
        assert len(batches) >= workers
    assert all(len(b) <= 200 for b in batches)


def _molblocks() -> dict[str, str]:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    flat = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.Compute2DCoords(flat)
    v2000_3d = Chem.MolToMolBlock(mol)
    lines = v2000_3d.splitlines()
    lines[1] = lines[1][:20] + "  " + lines[1][22:]  # no dimension code: z values decide
    return {
        "3d": v2000_3d,
        "3d_no_code": "\n".join(lines) + "\n",
        "2d": Chem.MolToMolBlock(flat),
        "3d_v3000": Chem.MolToV3KMolBlock(mol),
        "2d_v3000": Chem.MolToV3KMolBlock(flat),
    }


def test_molblock_dimension_is_read_like_rdkit() -> None:
    from rdkit import Chem

    from densnet_core.inputs import molblock_is_3d

    for kind, block in _molblocks().items():
        rdkit_3d = Chem.MolFromMolBlock(block, removeHs=False).GetConformer().Is3D()
        assert molblock_is_3d(block) is rdkit_3d is kind.startswith("3d"), kind
    assert molblock_is_3d("not a molblock") is False


def test_only_3d_sdf_records_skip_embedding() -> None:
    blocks = _molblocks()
    assert not InputRecord(record_index=0, name="a", molblock=blocks["3d"]).needs_embedding
    assert InputRecord(record_index=0, name="a", molblock=blocks["2d"]).needs_embedding
    assert InputRecord(record_index=0, name="a", smiles="CCO").needs_embedding
    assert not InputRecord(record_index=0, name="a", smiles="CCO", error="bad").needs_embedding
