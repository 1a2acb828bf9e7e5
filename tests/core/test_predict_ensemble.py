"""Ensemble prediction through :class:`densnet_core.predict.Predictor`: means, calibrated
spreads, and the out-of-distribution verdict of every row.

The ensemble is three untrained "small" networks (different seeds: random heads, so the members
disagree) saved as real member directories, with an ``ensemble.json`` written here that states
the training domain (H C O, benzene rings only, at most 4 heavy atoms) and a calibration
(scale factors 2 and 3, spread thresholds). Loading, vmapping and the row bookkeeping are the
production code paths; the numbers check bookkeeping, not accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from densnet_core import keys as K
from densnet_core import store
from densnet_core.ensemble import MANIFEST_FILE, ensemble_id
from densnet_core.level import DEFAULT_LEVEL
from densnet_core.model import DensityModel
from densnet_core.modelio import read_model_info, save_model
from densnet_core.ood import ring_systems
from densnet_core.predict import Predictor, predict_rows_parallel
from densnet_core.units import DEBYE_PER_AU
from tests._torch_threads import one_torch_thread  # noqa: F401 - autouse fixture
from tests.core._tiny_labels import conformer_rows

ELEMENTS = [1, 6, 7, 8, 9, 16, 17]  # what the networks can handle
SCALE_D, SCALE_A = 2.0, 3.0


def make_ensemble_dir(path: Path, *, members: int = 3, thresholds: dict | None = None) -> Path:
    """K untrained members + a manifest with a stated training domain and calibration."""
    entries = []
    for k in range(members):
        torch.manual_seed(100 + k)
        model = DensityModel.for_aux_basis(DEFAULT_LEVEL.fit_auxbasis, ELEMENTS, preset="small")
        info = save_model(model, path / f"member-{k:02d}", level=DEFAULT_LEVEL,
                          card={"note": "test member"})  # fmt: skip
        entries.append(
            {"dir": f"member-{k:02d}", "model_id": info.model_id, "weights_sha1": info.weights_sha1}
        )
    manifest = {
        "format": "densnet-ensemble",
        "format_version": 1,
        "ensemble_id": ensemble_id(path, [e["model_id"] for e in entries]),
        "n_members": members,
        "members": entries,
        "training_elements": [1, 6, 8],
        "training_ring_systems": ["c1ccccc1"],
        "max_heavy_atoms_in_data": 4,
        "calibration": {
            "scale": {"dipole_debye_std": SCALE_D, "alpha_iso_au_std": SCALE_A},
            "ood_thresholds": thresholds
            or {"dipole_debye_std": 1e6, "alpha_iso_au_std": 1e6},  # never, unless replaced
        },
    }
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory) -> Path:
    return make_ensemble_dir(tmp_path_factory.mktemp("ens") / "tiny-ensemble")


@pytest.fixture(scope="module")
def predictor(ensemble_dir: Path) -> Predictor:
    return Predictor(ensemble_dir, batch_size=4)


def _embedded(i: int, smiles: str, name: str) -> dict:
    """A conformers-table row for ``smiles`` (RDKit ETKDG, seeded)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=7) == 0
    return {
        K.RECORD_INDEX: i,
        K.NAME: name,
        K.SMILES: smiles,
        K.MOL_ID: f"id-{name}",
        K.CONFORMER_ID: 0,
        K.CHARGE: 0,
        K.MULTIPLICITY: 1,
        K.NUMBERS: [a.GetAtomicNum() for a in mol.GetAtoms()],
        K.POSITIONS_ANGSTROM: mol.GetConformer().GetPositions().tolist(),
        K.STATUS: "ok",
        K.ERROR: "",
    }


def test_values_are_member_means_and_spreads_are_calibrated(
    predictor: Predictor, ensemble_dir: Path
) -> None:
    rows = conformer_rows(2, seed=5)  # water, ammonia, formaldehyde, methanol x 2
    out = predictor.predict_rows(rows)
    assert predictor.ensemble is not None and predictor.ensemble.mode == "vmap"
    assert predictor.model_id.startswith("tiny-ensemble-")
    # each member on its own, as a single-model Predictor
    single = [
        Predictor(ensemble_dir / f"member-{k:02d}", batch_size=4).predict_rows(rows)
        for k in range(3)
    ]
    for j, o in enumerate(out):
        assert o[K.STATUS] == "ok", o[K.ERROR]
        assert o[K.MODEL_ID] == predictor.model_id
        norms = np.array([m[j][K.DIPOLE_DEBYE] for m in single])
        isos = np.array([m[j][K.ALPHA_ISO_AU] for m in single])
        vecs = np.array([m[j][K.DIPOLE_AU] for m in single])
        alphas = np.array([m[j][K.POLARIZABILITY_AU] for m in single])
        # |μ| of the ensemble-mean density: the norm of the row's own dipole vector
        mean_norm = np.linalg.norm(vecs.mean(0)) * DEBYE_PER_AU
        assert o[K.DIPOLE_DEBYE] == pytest.approx(mean_norm, rel=1e-4, abs=1e-4)
        assert o[K.DIPOLE_DEBYE] == pytest.approx(np.linalg.norm(o[K.DIPOLE_AU]) * DEBYE_PER_AU)
        assert o[K.ALPHA_ISO_AU] == pytest.approx(isos.mean(), rel=1e-4, abs=1e-4)
        np.testing.assert_allclose(o[K.DIPOLE_AU], vecs.mean(0), atol=1e-4)
        np.testing.assert_allclose(o[K.POLARIZABILITY_AU], alphas.mean(0), rtol=1e-4, atol=1e-3)
        assert o[K.N_ELECTRONS] == pytest.approx(sum(rows[j][K.NUMBERS]), abs=1e-3)
        assert o[K.DIPOLE_DEBYE_STD] > 0 and o[K.ALPHA_ISO_AU_STD] > 0
        assert o[K.DIPOLE_DEBYE_STD] == pytest.approx(
            SCALE_D * norms.std(ddof=1), rel=2e-3, abs=1e-4
        )
        assert o[K.ALPHA_ISO_AU_STD] == pytest.approx(
            SCALE_A * isos.std(ddof=1), rel=2e-3, abs=1e-3
        )
        if o[K.NAME] == "ammonia":  # N: not among the training elements (H C O)
            assert o[K.OOD] is True and o[K.OOD_REASON] == "element absent from training: N"
        else:
            assert o[K.OOD] is False and o[K.OOD_REASON] == ""
    # single models have no spread
    assert all(math.isnan(m[0][K.DIPOLE_DEBYE_STD]) for m in single)
    assert all(math.isnan(m[0][K.ALPHA_ISO_AU_STD]) for m in single)


def test_ood_verdicts_name_the_reason(predictor: Predictor) -> None:
    methanol = conformer_rows(1)[3]
    ammonia = conformer_rows(1)[1]
    rows = [
        dict(methanol, **{K.RECORD_INDEX: 0}),
        dict(ammonia, **{K.RECORD_INDEX: 1}),  # N: the networks cover it, training did not
        _embedded(2, "CF", "fluoromethane"),
        _embedded(3, "C1=CCOC1", "dihydrofuran"),  # 5 heavy atoms and an unseen ring
        _embedded(4, "CCCCC", "pentane"),
        _embedded(5, "c1ccccc1", "benzene"),  # known ring, but 6 heavy atoms
        {**_embedded(6, "C[Si](C)(C)C", "tms")},  # no network for Si at all
        {
            K.RECORD_INDEX: 7,
            K.NAME: "broken",
            K.SMILES: "C1CC",
            K.STATUS: "invalid_smiles",
            K.ERROR: "could not parse",
            K.NUMBERS: [],
            K.POSITIONS_ANGSTROM: [],
        },
    ]
    out = predictor.predict_rows(rows)
    assert len(out) == len(rows)
    assert [o[K.RECORD_INDEX] for o in out] == list(range(len(rows)))
    by = {o[K.NAME]: o for o in out}
    assert by["methanol"][K.OOD] is False and by["methanol"][K.OOD_REASON] == ""
    assert by["ammonia"][K.OOD_REASON] == "element absent from training: N"
    assert by["fluoromethane"][K.OOD_REASON] == "element absent from training: F"
    assert by["dihydrofuran"][K.OOD_REASON].split("; ") == [
        "ring system absent from training: " + ring_systems("C1=CCOC1")[0],
        "5 heavy atoms > 4 seen in training",
    ]
    assert by["pentane"][K.OOD_REASON] == "5 heavy atoms > 4 seen in training"
    assert by["benzene"][K.OOD_REASON] == "6 heavy atoms > 4 seen in training"
    for name in ("ammonia", "fluoromethane", "dihydrofuran", "pentane", "benzene"):
        assert by[name][K.STATUS] == "ok" and by[name][K.OOD] is True
    # failed rows: no prediction, no verdict; the status says why
    assert by["tms"][K.STATUS] == "unsupported_element" and "Si" in by["tms"][K.ERROR]
    assert by["broken"][K.STATUS] == "invalid_smiles"
    for name in ("tms", "broken"):
        assert by[name][K.OOD] is False and by[name][K.OOD_REASON] == ""
        assert math.isnan(by[name][K.DIPOLE_DEBYE_STD]) and math.isnan(by[name][K.ALPHA_ISO_AU_STD])
    # the rows make a predictions table with typed columns
    df = store.frame(out, "predictions")
    assert df[K.OOD].dtype == bool and df[K.DIPOLE_DEBYE_STD].dtype == np.float64
    assert int(df[K.OOD].sum()) == 5


def test_high_spread_is_a_reason(predictor: Predictor) -> None:
    rows = [conformer_rows(1)[3]]  # methanol: in the domain
    saved = predictor.ood_criteria
    predictor.ood_criteria = dataclasses.replace(
        saved, max_std_dipole_debye=1e-9, max_std_alpha_iso_au=1e-9
    )
    try:
        (o,) = predictor.predict_rows(rows)
    finally:
        predictor.ood_criteria = saved
    parts = o[K.OOD_REASON].split("; ")
    assert o[K.OOD] is True and len(parts) == 2
    assert parts[0].startswith("high uncertainty: std |mu| ") and parts[0].endswith("> 1e-09 D")
    assert parts[1].startswith("high uncertainty: std alpha_iso ")


def test_thresholds_from_the_manifest_flag_high_spread(tmp_path: Path) -> None:
    ens = make_ensemble_dir(
        tmp_path / "strict", members=2,
        thresholds={"dipole_debye_std": 0.0, "alpha_iso_au_std": None},
    )  # fmt: skip
    p = Predictor(ens, batch_size=8)
    out = p.predict_rows(conformer_rows(1))
    assert all("high uncertainty: std |mu| " in o[K.OOD_REASON] for o in out)
    assert all(o[K.OOD] is True for o in out)
    assert all("alpha_iso" not in o[K.OOD_REASON] for o in out)  # no alpha threshold


def test_parallel_rows_carry_the_columns(predictor: Predictor) -> None:
    rows = [*conformer_rows(3, seed=2), _embedded(99, "CCCCC", "pentane")]
    serial = predictor.predict_rows(rows)
    par = predict_rows_parallel(predictor, rows, workers=2, chunk_size=4)
    assert len(par) == len(rows)
    for a, b in zip(serial, par, strict=True):
        assert a[K.OOD] == b[K.OOD] and a[K.OOD_REASON] == b[K.OOD_REASON]
        assert a[K.DIPOLE_DEBYE_STD] == pytest.approx(b[K.DIPOLE_DEBYE_STD], rel=1e-5)
    assert par[-1][K.OOD_REASON] == "5 heavy atoms > 4 seen in training"


def test_member_info_and_model_identity(ensemble_dir: Path) -> None:
    from densnet_core.predict import model_identity, resolve_model_dir

    assert resolve_model_dir(ensemble_dir) == ensemble_dir
    mid, card = model_identity(ensemble_dir)
    assert mid == json.loads((ensemble_dir / MANIFEST_FILE).read_text())["ensemble_id"]
    assert card["ensemble"]["n_members"] == 3
    assert card["ensemble"]["scale"] == {"dipole_debye_std": SCALE_D, "alpha_iso_au_std": SCALE_A}
    assert read_model_info(ensemble_dir / "member-00").model_id == card["ensemble"]["members"][0]


@pytest.mark.slow
def test_trained_cards_and_manifest_record_the_domain(tmp_path: Path) -> None:
    """Train → card/manifest fields → Predictor: the domain the OOD checks use is recorded."""
    from densnet_core.ensemble import read_manifest, train_ensemble
    from tests.core._tiny_labels import TINY_LEVEL, make_tiny_labels

    labels = make_tiny_labels(tmp_path / "labels", n_conformers=2)
    out = tmp_path / "ens"
    train_ensemble(labels, out, members=2, level=TINY_LEVEL, preset="small", epochs=1,
                   batch_size=8, val_fraction=0.25, grid_samples=0)  # fmt: skip
    m = read_manifest(out)
    card = json.loads((out / "member-00" / "model_card.json").read_text())
    assert m["max_heavy_atoms_in_data"] == card["max_heavy_atoms_in_data"] == 2
    assert card["training_ring_systems"] == [] and set(card["training_elements"]) <= {1, 6, 7, 8}
    p = Predictor(out)
    assert p.domain_source == "recorded" and p.ood_criteria.max_heavy_atoms == 2
    (o,) = p.predict_rows([_embedded(0, "CCC", "propane")])
    assert o[K.STATUS] == "ok" and "3 heavy atoms > 2 seen in training" in o[K.OOD_REASON]
    assert o[K.DIPOLE_DEBYE_STD] > 0
    single = Predictor(out / "member-00")
    assert single.domain_source == "recorded" and single.ood_criteria.max_heavy_atoms == 2
