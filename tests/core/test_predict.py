"""High-throughput prediction (:mod:`densnet_core.predict`): rows, statuses, physics, batching.

The model is an untrained "small" network (random heads on top of the SAD prior) for
H C N O F S Cl in def2-universal-jkfit: the tests check the bookkeeping and the physics that
hold for any weights (electron count, symmetry, rotation covariance), not accuracy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from densnet_core import keys as K
from densnet_core.level import DEFAULT_LEVEL
from densnet_core.model import DensityModel
from densnet_core.modelio import save_model
from densnet_core.predict import (
    N_ATOMS,
    SENT_COLUMNS,
    ModelNotFoundError,
    Predictor,
    alpha_anisotropy,
    boltzmann_average,
    boltzmann_weights,
    predict_rows_parallel,
    read_conformer_rows,
    resolve_model_dir,
    screen_file,
    sibling_path,
)
from densnet_core.units import DEBYE_PER_AU
from tests._torch_threads import one_torch_thread  # noqa: F401 - autouse fixture
from tests.core._tiny_labels import conformer_rows, write_conformers_table


def _assert_float32_close(got: object, want: object) -> None:
    """Equal up to float32 rounding: the batch changes the order of the sums (matrix products
    of other sizes), which moved components by up to 3.9e-6 of the largest one (measured);
    the tolerance is 1e-5 of it (float64 runs agree to 1e-10: tests/core/test_readout.py)."""
    w = np.asarray(want, dtype=float)
    np.testing.assert_allclose(got, w, rtol=0, atol=1e-5 * max(1.0, float(np.abs(w).max())))


ELEMENTS = [1, 6, 7, 8, 9, 16, 17]


def make_model_dir(path: Path, *, preset: str = "small", card: dict | None = None) -> Path:
    """A saved, untrained model (random heads: non-zero Δρ and polarizability)."""
    torch.manual_seed(0)
    model = DensityModel.for_aux_basis(DEFAULT_LEVEL.fit_auxbasis, ELEMENTS, preset=preset)
    save_model(model, path, level=DEFAULT_LEVEL, card=card or {"note": "test fixture"})
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("models") / "tiny-model")


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor(model_dir, batch_size=3)


def _row(i: int, name: str, numbers, pos, *, charge=0, mult=1, status="ok", error="", cid=0):
    return {
        K.RECORD_INDEX: i,
        K.NAME: name,
        K.SMILES: name,
        K.MOL_ID: f"id-{name}",
        K.CONFORMER_ID: cid,
        K.CHARGE: charge,
        K.MULTIPLICITY: mult,
        K.NUMBERS: list(numbers),
        K.POSITIONS_ANGSTROM: np.asarray(pos, dtype=float).tolist(),
        K.MMFF_ENERGY_KCAL: 0.0,
        K.STATUS: status,
        K.ERROR: error,
    }


SILANE = ([14, 1, 1, 1, 1], [[0, 0, 0], [0.86, 0.86, 0.86], [-0.86, -0.86, 0.86],
                             [-0.86, 0.86, -0.86], [0.86, -0.86, -0.86]])  # fmt: skip
HYDROXIDE = ([8, 1], [[0, 0, 0], [0, 0, 0.97]])


def mixed_rows() -> list[dict]:
    tiny = conformer_rows(2, seed=3)  # water, ammonia, formaldehyde, methanol x 2 conformers
    rows = [dict(r) for r in tiny[:4]]
    rows.append(_row(4, "silane", *SILANE))
    rows.append(_row(5, "hydroxide", *HYDROXIDE, charge=-1))
    rows.append(_row(6, "broken", [], [], status="invalid_smiles", error="could not parse"))
    rows.append(_row(7, "methyl", [6, 1, 1, 1], [[0, 0, 0], [1.08, 0, 0], [-0.54, 0.94, 0],
                                                 [-0.54, -0.94, 0]], mult=2))  # fmt: skip
    rows += [dict(r) for r in tiny[4:]]
    return rows


def test_one_row_per_input_row_in_order_with_statuses(predictor: Predictor) -> None:
    rows = mixed_rows()
    out = predictor.predict_rows(rows)
    assert len(out) == len(rows)
    assert [o[K.RECORD_INDEX] for o in out] == [r[K.RECORD_INDEX] for r in rows]
    assert [o[K.CONFORMER_ID] for o in out] == [r[K.CONFORMER_ID] for r in rows]
    assert [o[K.NAME] for o in out] == [r[K.NAME] for r in rows]
    statuses = [o[K.STATUS] for o in out]
    bad = ["unsupported_element", "unsupported_charge", "invalid_smiles"]
    assert statuses == ["ok"] * 4 + [*bad, "unsupported_multiplicity"] + ["ok"] * 4
    by_name = {o[K.NAME]: o for o in out}
    assert "Si" in by_name["silane"][K.ERROR]
    assert "-1" in by_name["hydroxide"][K.ERROR]
    assert by_name["broken"][K.ERROR] == "could not parse"  # upstream error kept
    for o in out:
        assert o[K.MODEL_ID] == predictor.model_id
        if o[K.STATUS] != "ok":
            assert o[K.ERROR] and math.isnan(o[K.DIPOLE_DEBYE]) and o[K.DIPOLE_AU] is None
    # a single model has no spread; this card records no training domain beyond the elements
    for o in out:
        assert math.isnan(o[K.DIPOLE_DEBYE_STD]) and math.isnan(o[K.ALPHA_ISO_AU_STD])
        assert o[K.OOD] is False and o[K.OOD_REASON] == ""
    assert predictor.ensemble is None and predictor.domain_source.startswith("incomplete")
    # the rows make a valid predictions table
    from densnet_core import store

    df = store.frame(out, "predictions")
    assert len(df) == len(rows) and "alpha_aniso_au" in df.columns
    assert df[K.OOD].dtype == bool and not df[K.OOD].any()


def test_single_model_domain_from_its_card(tmp_path: Path) -> None:
    card = {"training_elements": [1, 6, 8], "training_ring_systems": [],
            "max_heavy_atoms_in_data": 1}  # fmt: skip
    p = Predictor(make_model_dir(tmp_path / "carded", card=card), batch_size=4)
    assert p.domain_source == "recorded"
    rows = conformer_rows(2, seed=6)  # water, ammonia, formaldehyde, methanol x 2
    ang = np.arange(6) * np.pi / 3
    ring = np.stack([1.4 * np.cos(ang), 1.4 * np.sin(ang), 0 * ang], axis=1)  # C6 ring, Å
    rows.append(_row(8, "c1ccccc1", [6] * 6, ring))
    out = p.predict_rows(rows)
    assert len(out) == len(rows)
    reasons = {o[K.NAME]: o[K.OOD_REASON] for o in out}
    assert reasons["water"] == ""
    assert reasons["ammonia"] == "element absent from training: N"
    assert reasons["methanol"] == "2 heavy atoms > 1 seen in training"
    assert reasons["c1ccccc1"] == (
        "ring system absent from training: c1ccccc1; 6 heavy atoms > 1 seen in training"
    )
    assert [o[K.OOD] for o in out] == [bool(o[K.OOD_REASON]) for o in out]
    assert all(math.isnan(o[K.DIPOLE_DEBYE_STD]) for o in out)
    # per molecule: out of distribution if any conformer is
    mols = boltzmann_average(pd.DataFrame(out)).set_index(K.NAME)
    assert mols.loc["methanol", K.OOD] and not mols.loc["water", K.OOD]
    assert mols.loc["methanol", K.OOD_REASON] == "2 heavy atoms > 1 seen in training"
    assert np.isnan(mols.loc["water", K.DIPOLE_DEBYE_STD])


def test_physics_of_every_prediction(predictor: Predictor) -> None:
    rows = conformer_rows(3, seed=1)
    out = predictor.predict_rows(rows)
    for row, o in zip(rows, out, strict=True):
        assert o[K.STATUS] == "ok", o[K.ERROR]
        assert o[K.N_ELECTRONS] == pytest.approx(sum(row[K.NUMBERS]) - row[K.CHARGE], abs=1e-4)
        alpha = np.asarray(o[K.POLARIZABILITY_AU]).reshape(3, 3)
        np.testing.assert_allclose(alpha, alpha.T, atol=1e-6)
        assert o[K.ALPHA_ISO_AU] == pytest.approx(np.trace(alpha) / 3, rel=1e-9)
        assert o["alpha_aniso_au"] == pytest.approx(float(alpha_anisotropy(alpha)), rel=1e-9)
        assert o[K.DIPOLE_DEBYE] == pytest.approx(
            np.linalg.norm(o[K.DIPOLE_AU]) * DEBYE_PER_AU, rel=1e-9
        )
        assert o["n_atoms"] == len(row[K.NUMBERS])
        assert o[K.N_HEAVY_ATOMS] == sum(z > 1 for z in row[K.NUMBERS])
    assert any(abs(o[K.ALPHA_ISO_AU]) > 1e-3 for o in out)  # random heads: non-trivial alpha


def test_batched_equals_one_by_one(model_dir: Path) -> None:
    rows = conformer_rows(3, seed=2)
    batched = Predictor(model_dir, batch_size=64).predict_rows(rows)
    single = Predictor(model_dir, batch_size=1)
    for row, b in zip(rows, batched, strict=True):
        s = single.predict_rows([row])[0]
        np.testing.assert_allclose(b[K.DIPOLE_AU], s[K.DIPOLE_AU], atol=1e-5)
        np.testing.assert_allclose(b[K.POLARIZABILITY_AU], s[K.POLARIZABILITY_AU], atol=1e-5)
        assert b[K.N_ELECTRONS] == pytest.approx(s[K.N_ELECTRONS], abs=1e-5)


def test_a_failing_batch_only_fails_the_offending_molecule(predictor: Predictor) -> None:
    rows = conformer_rows(2, seed=4)
    poisoned = dict(rows[2])
    poisoned[K.POSITIONS_ANGSTROM] = [[0.0, 0.0, float("nan")]] * len(poisoned[K.NUMBERS])
    rows[2] = poisoned
    calls = {"n": 0}
    original = predictor._run_batch

    def flaky(mols, out_rows):  # the first (full) batch raises; one-by-one works
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated batch failure")
        return original(mols, out_rows)

    predictor._run_batch = flaky
    try:
        out = predictor.predict_rows(rows)
    finally:
        del predictor._run_batch
    assert len(out) == len(rows)
    assert out[2][K.STATUS] == "prediction_failed" and "non-finite" in out[2][K.ERROR]
    assert [o[K.STATUS] for i, o in enumerate(out) if i != 2] == ["ok"] * (len(rows) - 1)


def test_rotation_covariance_on_a_real_molecule(predictor: Predictor) -> None:
    row = conformer_rows(1)[3]  # methanol
    pos = np.asarray(row[K.POSITIONS_ANGSTROM])
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))  # proper rotation
    rotated = dict(row, **{K.POSITIONS_ANGSTROM: (pos @ q.T).tolist()})
    a, b = predictor.predict_rows([row, rotated])
    np.testing.assert_allclose(b[K.DIPOLE_AU], q @ np.asarray(a[K.DIPOLE_AU]), atol=1e-4)
    alpha_a = np.asarray(a[K.POLARIZABILITY_AU]).reshape(3, 3)
    alpha_b = np.asarray(b[K.POLARIZABILITY_AU]).reshape(3, 3)
    np.testing.assert_allclose(alpha_b, q @ alpha_a @ q.T, atol=1e-4)
    assert b[K.ALPHA_ISO_AU] == pytest.approx(a[K.ALPHA_ISO_AU], abs=1e-4)
    assert b[K.DIPOLE_DEBYE] == pytest.approx(a[K.DIPOLE_DEBYE], abs=1e-4)


def test_card_charges_allow_ions(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "ionic", card={"charges_in_data": [-1, 0, 1]})
    out = Predictor(d).predict_rows([_row(0, "hydroxide", *HYDROXIDE, charge=-1)])[0]
    assert out[K.STATUS] == "ok"
    assert out[K.N_ELECTRONS] == pytest.approx(10.0, abs=1e-4)


def test_missing_models(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ModelNotFoundError, match="model directory not found"):
        Predictor(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a densnet model directory"):
        resolve_model_dir(tmp_path / "empty")
    import densnet_core.predict as P

    monkeypatch.setattr(P, "default_model_dir", lambda: tmp_path / "no-default")
    with pytest.raises(ModelNotFoundError, match=r"no default model at .*densnet train"):
        resolve_model_dir(None)


def test_boltzmann_weights_and_average() -> None:
    w = boltzmann_weights([0.0, 3.0])
    assert w[0] > 0.99 and w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(boltzmann_weights([1.0, 1.0, 1.0]), [1 / 3] * 3)
    np.testing.assert_allclose(boltzmann_weights([0.0, float("nan")]), [0.5, 0.5])

    def pred(rec, cid, alpha, mu, status="ok"):
        return {
            K.RECORD_INDEX: rec, K.NAME: f"m{rec}", K.SMILES: "C", K.MOL_ID: f"id{rec}",
            K.CONFORMER_ID: cid, K.MODEL_ID: "m", K.ALPHA_ISO_AU: alpha,
            K.DIPOLE_DEBYE: mu, "alpha_aniso_au": 1.0, K.STATUS: status,
            K.ERROR: "" if status == "ok" else "x",
        }  # fmt: skip

    preds = pd.DataFrame(
        [
            pred(0, 0, 10.0, 1.0),
            pred(0, 1, 20.0, 3.0),  # 3 kcal/mol higher: weight ~0.6 %
            pred(1, 0, 10.0, 1.0),
            pred(1, 1, 20.0, 3.0),  # same energy: plain mean
            pred(2, 0, math.nan, math.nan, status="invalid_smiles"),
        ]
    )
    confs = pd.DataFrame(
        {
            K.RECORD_INDEX: [0, 0, 1, 1, 2],
            K.CONFORMER_ID: [0, 1, 0, 1, 0],
            K.MMFF_ENERGY_KCAL: [5.0, 8.0, 2.0, 2.0, math.nan],
        }
    )
    mol = boltzmann_average(preds, confs).set_index(K.RECORD_INDEX)
    assert list(mol.index) == [0, 1, 2]
    assert 10.0 < mol.loc[0, K.ALPHA_ISO_AU] < 10.1
    assert mol.loc[0, "lowest_conformer_id"] == 0 and mol.loc[0, "max_weight"] > 0.99
    assert mol.loc[1, K.ALPHA_ISO_AU] == pytest.approx(15.0)
    assert mol.loc[1, K.DIPOLE_DEBYE] == pytest.approx(2.0)
    assert (mol.loc[1, "alpha_iso_au_min"], mol.loc[1, "alpha_iso_au_max"]) == (10.0, 20.0)
    assert mol.loc[2, K.STATUS] == "invalid_smiles" and mol.loc[2, "n_conformers"] == 0


# ---- batching, parallel prediction and the screen without Prefect --------------------------
DRUG_LIKE = [
    ("benzene", "c1ccccc1"),
    ("caffeine", "Cn1cnc2c1c(=O)n(C)c(=O)n2C"),
    ("chembl-like", "O=S(=O)(Nc1nccs1)c1ccc(Oc2ccccc2-c2ccccc2)c(C#N)c1"),
    ("propanol", "CCCO"),
]


def drug_like_rows(start_index: int = 0) -> list[dict]:
    """RDKit-embedded conformer rows of molecules of 12 to 40 atoms (plus a tiny one)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    rows = []
    for i, (name, smi) in enumerate(DRUG_LIKE):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        assert AllChem.EmbedMolecule(mol, randomSeed=7) == 0
        numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
        rows.append(_row(start_index + i, name, numbers, mol.GetConformer().GetPositions()))
    return rows


def test_batched_equals_one_at_a_time_for_different_sizes(model_dir: Path) -> None:
    """Molecules of 3 to 40 atoms in one size-sorted batch give what they give alone."""
    rows = drug_like_rows() + conformer_rows(1, seed=5)
    sizes = sorted(len(r[K.NUMBERS]) for r in rows)
    assert sizes[0] <= 4 and sizes[-1] >= 35
    batched = Predictor(model_dir, batch_size=64).predict_rows(rows)
    single = Predictor(model_dir, batch_size=1)
    for row, b in zip(rows, batched, strict=True):
        s = single.predict_rows([row])[0]
        assert b[K.STATUS] == s[K.STATUS] == "ok"
        _assert_float32_close(b[K.DIPOLE_AU], s[K.DIPOLE_AU])
        _assert_float32_close(b[K.POLARIZABILITY_AU], s[K.POLARIZABILITY_AU])
        assert b[K.N_ELECTRONS] == pytest.approx(s[K.N_ELECTRONS], abs=1e-5)


def test_numpy_rows_equal_list_rows(predictor: Predictor) -> None:
    """Rows holding numpy arrays (read_conformer_rows) predict exactly like plain lists."""
    rows = drug_like_rows()
    as_arrays = [
        dict(
            r,
            **{
                K.NUMBERS: np.asarray(r[K.NUMBERS], dtype=np.int64),
                K.POSITIONS_ANGSTROM: np.asarray(r[K.POSITIONS_ANGSTROM]),
            },
        )
        for r in rows
    ]
    for a, b in zip(predictor.predict_rows(rows), predictor.predict_rows(as_arrays), strict=True):
        assert a[K.DIPOLE_AU] == b[K.DIPOLE_AU] and a[K.POLARIZABILITY_AU] == b[K.POLARIZABILITY_AU]
        assert a[N_ATOMS] == b[N_ATOMS] and a[K.N_HEAVY_ATOMS] == b[K.N_HEAVY_ATOMS]


def test_read_conformer_rows(tmp_path: Path) -> None:
    from densnet_core import store

    rows = mixed_rows()
    for r in rows:
        r.update({K.INPUT_SMILES: r[K.SMILES], K.N_HEAVY_ATOMS: 1, K.FORCE_FIELD: "MMFF94"})
        r.update({K.FRAGMENT_NOTE: "", K.STEREO_NOTE: "", K.CONFORMER_KEY: ""})
    path = store.write_table(rows, tmp_path / "conf.parquet", "conformers")
    arrays = read_conformer_rows(path)
    plain = read_conformer_rows(path, arrays=False)
    assert len(arrays) == len(plain) == len(rows)
    for r, a, p in zip(rows, arrays, plain, strict=True):
        assert set(a) == set(p) == set(SENT_COLUMNS)
        assert isinstance(p[K.POSITIONS_ANGSTROM], list)
        assert a[K.NUMBERS].dtype == np.int64 and a[K.NUMBERS].tolist() == r[K.NUMBERS]
        assert a[K.POSITIONS_ANGSTROM].shape == (len(r[K.NUMBERS]), 3)
        np.testing.assert_array_equal(a[K.POSITIONS_ANGSTROM].reshape(-1, 3),
                                      np.reshape(r[K.POSITIONS_ANGSTROM], (-1, 3)))  # fmt: skip
        assert p[K.POSITIONS_ANGSTROM] == r[K.POSITIONS_ANGSTROM]
        assert a[K.STATUS] == r[K.STATUS] and a[K.NAME] == r[K.NAME]
    with pytest.raises(store.SchemaError, match="not 'conformers'"):
        read_conformer_rows(store.write_table(
            [{K.RECORD_INDEX: 0, K.NAME: "x", K.SMILES: "C", K.MOL_ID: "m", K.CONFORMER_ID: 0,
              K.MODEL_ID: "m", K.DIPOLE_DEBYE: 0.0, K.DIPOLE_AU: None, K.POLARIZABILITY_AU: None,
              K.ALPHA_ISO_AU: 0.0, K.N_ELECTRONS: 0.0, K.STATUS: "ok", K.ERROR: ""}],
            tmp_path / "pred.parquet", "predictions"))  # fmt: skip


def test_parallel_prediction_equals_serial(model_dir: Path) -> None:
    """Two forked workers: same rows, same order, same numbers, timings added up."""
    rows = mixed_rows() + drug_like_rows(start_index=100) + conformer_rows(2, seed=9)
    serial = Predictor(model_dir, batch_size=4).predict_rows(rows)
    p = Predictor(model_dir, batch_size=4)
    seen: list[tuple[int, int]] = []
    parallel = predict_rows_parallel(
        p, rows, workers=2, chunk_size=5, on_progress=lambda d, t: seen.append((d, t))
    )
    assert [o[K.RECORD_INDEX] for o in parallel] == [r[K.RECORD_INDEX] for r in rows]
    for a, b in zip(serial, parallel, strict=True):
        assert a[K.STATUS] == b[K.STATUS] and a[K.ERROR] == b[K.ERROR]
        if a[K.STATUS] == "ok":
            _assert_float32_close(b[K.DIPOLE_AU], a[K.DIPOLE_AU])
            _assert_float32_close(b[K.POLARIZABILITY_AU], a[K.POLARIZABILITY_AU])
    assert seen[0] == (0, len(rows)) and seen[-1] == (len(rows), len(rows))
    assert p.timings["forward"] > 0 and p.threads is None  # restored after the workers


def test_screen_file_sdf_keeps_coordinates(model_dir: Path, tmp_path: Path) -> None:
    """The screen without Prefect: SDF in, coordinates used as given, sibling tables out."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from densnet_core import store

    sdf = tmp_path / "in.sdf"
    with Chem.SDWriter(str(sdf)) as w:
        for name, smi in [*DRUG_LIKE, ("silane", "[SiH4]")]:
            mol = Chem.AddHs(Chem.MolFromSmiles(smi))
            AllChem.EmbedMolecule(mol, randomSeed=3)
            mol.SetProp("_Name", name)
            w.write(mol)
    out = tmp_path / "pred.parquet"
    stages: set[str] = set()
    summary = screen_file(
        sdf, out, model_dir=model_dir, workers=1, on_progress=lambda s, d, t: stages.add(s)
    )
    assert stages == {"conformers", "predict"}
    df = store.read_table(out, "predictions")
    assert list(df[K.NAME]) == [n for n, _ in DRUG_LIKE] + ["silane"]
    assert list(df[K.STATUS]) == ["ok"] * len(DRUG_LIKE) + ["unsupported_element"]
    assert summary["conformers_output"] == str(sibling_path(out, "conformers"))
    assert summary["n_records"] == len(DRUG_LIKE) + 1 and summary["molecules_output"] is None
    conf = store.read_table(summary["conformers_output"], "conformers")
    assert conf[K.MMFF_ENERGY_KCAL].isna().all()  # no MMFF94 single points on this path
    assert conf[K.INPUT_NOTE].str.contains("coordinates used as given").sum() == len(DRUG_LIKE)
    mols = list(Chem.SDMolSupplier(str(sdf), removeHs=False))
    direct = Predictor(model_dir).predict_rows(
        [
            _row(i, m.GetProp("_Name"), [a.GetAtomicNum() for a in m.GetAtoms()],
                 m.GetConformer().GetPositions())
            for i, m in enumerate(mols[: len(DRUG_LIKE)])
        ]
    )  # fmt: skip
    for (_, row), d in zip(df.iterrows(), direct, strict=False):
        np.testing.assert_allclose(row[K.DIPOLE_AU], d[K.DIPOLE_AU], atol=1e-5)
        np.testing.assert_allclose(row[K.POLARIZABILITY_AU], d[K.POLARIZABILITY_AU], atol=1e-5)


def test_screen_file_conformers_table_with_boltzmann(model_dir: Path, tmp_path: Path) -> None:
    from densnet_core import store

    rows = conformer_rows(3, seed=1)
    conf = write_conformers_table(rows, tmp_path / "conf.parquet")
    predictor = Predictor(model_dir, batch_size=4)
    summary = screen_file(
        conf, tmp_path / "pred.parquet", n_conformers=3, workers=2, predictor=predictor
    )
    df = store.read_table(summary["output"], "predictions")
    assert len(df) == len(rows) and (df[K.STATUS] == "ok").all()
    assert summary["conformers_output"] is None and summary["workers"] == 2
    mol = store.read_table(summary["molecules_output"], "molecules")
    assert list(mol[K.RECORD_INDEX]) == [0, 1, 2, 3] and (mol["n_conformers"] == 3).all()


STREAM_SMILES = [
    "CCO", "c1ccncc1", "CC(=O)N", "OC(=O)c1ccccc1", "not-a-smiles", "C[SiH3]", "CS(=O)C",
    "FC(F)F", "c1ccoc1", "CC#N", "NC(=O)c1ccccn1", "ClCCl", "OCCO", "C1CCNC1", "CN(C)C=O",
    "c1ccsc1", "CC(C)O", "O=C1CCCC1",
]  # fmt: skip


def _smiles_file(path: Path) -> Path:
    path.write_text("".join(f"{s} m{i}\n" for i, s in enumerate(STREAM_SMILES)))
    return path


def _assert_same_predictions(df: pd.DataFrame, reference: list[dict]) -> None:
    assert list(df[K.RECORD_INDEX]) == [r[K.RECORD_INDEX] for r in reference]
    assert list(df[K.STATUS]) == [r[K.STATUS] for r in reference]
    for (_, row), ref in zip(df.iterrows(), reference, strict=True):
        if ref[K.STATUS] == "ok":
            _assert_float32_close(row[K.DIPOLE_AU], ref[K.DIPOLE_AU])
            _assert_float32_close(row[K.POLARIZABILITY_AU], ref[K.POLARIZABILITY_AU])


def test_screen_file_streams_finished_conformer_batches(model_dir: Path, tmp_path: Path) -> None:
    """Batches that finish while the conformer stage still works are predicted at once; the
    rest after it; the table is the same as predicting the whole conformers table."""
    from densnet_core import store
    from densnet_core.conformer_pool import ConformerBatches
    from densnet_core.inputs import read_records

    class StillWorking(ConformerBatches):
        """In-process batches that report "still working" until the last one is handed out."""

        given = 0

        def __iter__(self):
            for self.given, item in enumerate(super().__iter__(), start=1):
                yield item

        def working(self) -> bool:
            return self.given < len(self)

    smi = _smiles_file(tmp_path / "in.smi")
    stage = StillWorking(read_records(smi), workers=1, batch_size=1)
    assert len(stage) == 18
    out = tmp_path / "pred.parquet"
    seen: list[tuple[str, int, int]] = []
    summary = screen_file(
        smi,
        out,
        model_dir=model_dir,
        workers=2,
        batch_size=4,
        conformer_stage=stage,
        on_progress=lambda *a: seen.append(a),
    )
    # streamed two batches at a time (batch_size // 2 rows); the last two (one was still
    # queued when the stage finished) are left to the workers
    assert summary["streamed_rows"] == 16 and summary["n_rows"] == 18
    conf = store.read_table(summary["conformers_output"], "conformers")
    reference = Predictor(model_dir, batch_size=4).predict_rows(conf.to_dict("records"))
    df = store.read_table(out, "predictions")
    _assert_same_predictions(df, reference)
    assert df[K.STATUS].value_counts().to_dict() == {
        "ok": 16, "invalid_smiles": 1, "unsupported_element": 1
    }  # fmt: skip
    assert seen[-1] == ("predict", 18, 18) and ("conformers", 18, 18) in seen


def test_screen_file_with_the_conformer_pool(model_dir: Path, tmp_path: Path) -> None:
    """Two workers: the conformer pool embeds while the model loads (its batches streamed
    or not, as they come), forked workers predict the rest; nothing lost, order kept."""
    from densnet_core import store
    from densnet_core.conformer_pool import shutdown_shared_pools

    smi = _smiles_file(tmp_path / "in.smi")
    try:
        summary = screen_file(
            smi, tmp_path / "pred.parquet", model_dir=model_dir, workers=2, batch_size=2
        )
    finally:
        shutdown_shared_pools()
    conf = store.read_table(summary["conformers_output"], "conformers")
    assert list(conf[K.RECORD_INDEX]) == list(range(len(STREAM_SMILES)))
    reference = Predictor(model_dir, batch_size=2).predict_rows(conf.to_dict("records"))
    _assert_same_predictions(store.read_table(summary["output"], "predictions"), reference)
    assert 0 <= summary["streamed_rows"] <= summary["n_rows"] == len(STREAM_SMILES)


def test_screen_file_stops_the_conformer_pool_when_the_model_fails(tmp_path: Path) -> None:
    """A model that cannot be loaded: the error reaches the caller, the pool is shut down."""
    from densnet_core import conformer_pool

    bad = make_model_dir(tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    smi = _smiles_file(tmp_path / "in.smi")
    with pytest.raises(Exception):  # noqa: B017 - whatever the weights loader raises
        screen_file(smi, tmp_path / "pred.parquet", model_dir=bad, workers=2)
    assert conformer_pool._SHARED_POOLS == {}
    assert not (tmp_path / "pred.parquet").exists()


def test_featurizer_tables_cached_on_disk(tmp_path: Path) -> None:
    """The per-element tables come back from the cache file bit for bit, without PySCF."""
    import subprocess
    import sys

    from densnet_core.featurize import Featurizer

    fresh = Featurizer(DEFAULT_LEVEL, cache_dir=tmp_path)
    tables = {z: fresh.element(z) for z in (1, 6, 8)}
    assert fresh.cache_path().is_file() and fresh.cache_path().parent == tmp_path / "featurize"
    again = Featurizer(DEFAULT_LEVEL, cache_dir=tmp_path)
    for z, t in tables.items():
        c = again.element(z)
        for a, b in ((t.q, c.q), (t.p, c.p), (t.prior, c.prior)):
            np.testing.assert_array_equal(a, b)
            assert not b.flags.writeable
    no_prior = Featurizer(DEFAULT_LEVEL, with_prior=False, cache_dir=tmp_path)
    assert no_prior.cache_path() != fresh.cache_path()  # the key covers the settings
    code = (
        "import sys\n"
        "from densnet_core.featurize import Featurizer\n"
        "from densnet_core.level import DEFAULT_LEVEL\n"
        f"f = Featurizer(DEFAULT_LEVEL, cache_dir={str(tmp_path)!r})\n"
        "m = f([8, 1, 1], [[0, 0, 0], [1.8, 0, 0], [0, 1.8, 0]])\n"
        "print(m.charge_ints.shape[0], 'pyscf' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n, pyscf_loaded = proc.stdout.split()
    assert int(n) == tables[8].q.shape[0] + 2 * tables[1].q.shape[0] and pyscf_loaded == "False"


def test_element_symbols_match_pyscf() -> None:
    from pyscf.data.elements import ELEMENTS

    from densnet_core.predict import _symbol

    assert [_symbol(z) for z in range(1, 119)] == list(ELEMENTS[1:119])
    assert _symbol(0) == "Z=0" and _symbol(200) == "Z=200"
