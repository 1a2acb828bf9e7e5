"""Model directories: round trip, model id, and refusal of tampered or foreign files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from densnet_core.featurize import featurize
from densnet_core.level import DEFAULT_LEVEL
from densnet_core.model import DensityModel
from densnet_core.modelio import (
    CARD_FILE,
    WEIGHTS_FILE,
    ModelFileError,
    load_model,
    read_model_info,
    save_model,
    weights_sha1,
)

FORMALDEHYDE = (
    [6, 8, 1, 1],
    np.array([[0.0, 0.0, -1.0], [0.0, 0.1, 1.28], [1.77, 0.0, -2.1], [-1.70, 0.2, -2.0]]),
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    m = DensityModel.for_aux_basis(DEFAULT_LEVEL.fit_auxbasis, [1, 6, 8], preset="small")
    return m.eval()


def _predict(m, inp):
    with torch.no_grad():
        return m(m.collate([inp]))


def test_round_trip_identical_predictions(model, tmp_path):
    info = save_model(model, tmp_path / "tiny", level=DEFAULT_LEVEL, card={"note": "test"})
    for name in (WEIGHTS_FILE, "config.json", CARD_FILE):
        assert (tmp_path / "tiny" / name).is_file()
    assert info.model_id == f"tiny-{weights_sha1(tmp_path / 'tiny' / WEIGHTS_FILE)[:8]}"
    loaded, info2 = load_model(tmp_path / "tiny")
    assert info2.model_id == info.model_id
    assert info2.elements == (1, 6, 8)
    assert info2.level == DEFAULT_LEVEL and info2.aux_basis == DEFAULT_LEVEL.fit_auxbasis
    card = json.loads((tmp_path / "tiny" / CARD_FILE).read_text())
    assert card["note"] == "test" and card["level_hash"] == DEFAULT_LEVEL.hash
    assert set(card["versions"]) >= {"densnet", "torch", "e3nn"}
    inp = featurize(*FORMALDEHYDE, 0, level=DEFAULT_LEVEL)
    a, b = _predict(model, inp), _predict(loaded, inp)
    for key in ("density_coeffs", "response_coeffs", "dipole_au", "polarizability_au"):
        assert torch.equal(a[key], b[key]), key
    # saving the same weights again gives the same id
    assert save_model(loaded, tmp_path / "tiny", level=DEFAULT_LEVEL).model_id == info.model_id


def test_pickle_in_place_of_weights_is_refused(model, tmp_path):
    d = tmp_path / "evil"
    save_model(model, d, level=DEFAULT_LEVEL)
    torch.save(model.state_dict(), d / WEIGHTS_FILE)  # a pickle
    with pytest.raises(ModelFileError, match="modified or replaced"):
        load_model(d)
    # even without a card to compare hashes with, the pickle is never unpickled
    (d / CARD_FILE).unlink()
    with pytest.raises(ModelFileError, match="not a valid safetensors file"):
        load_model(d)


def test_swapped_weights_are_refused(model, tmp_path):
    save_model(model, tmp_path / "m1", level=DEFAULT_LEVEL)
    torch.manual_seed(4)
    other = DensityModel.for_aux_basis(DEFAULT_LEVEL.fit_auxbasis, [1, 6, 8], preset="small")
    save_model(other, tmp_path / "m2", level=DEFAULT_LEVEL)
    (tmp_path / "m1" / WEIGHTS_FILE).write_bytes((tmp_path / "m2" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ModelFileError, match="modified or replaced"):
        read_model_info(tmp_path / "m1")


def test_missing_files_and_cuda(model, tmp_path):
    with pytest.raises(ModelFileError, match="not a densnet model directory"):
        load_model(tmp_path)
    if not torch.cuda.is_available():
        save_model(model, tmp_path / "m", level=DEFAULT_LEVEL)
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            load_model(tmp_path / "m", device="cuda")


@pytest.mark.parametrize("deferred", [False, True])
def test_weights_that_do_not_fit_the_config_are_refused(model, tmp_path, deferred):
    """Also with deferred code generation (which rebuilds the usual way before refusing)."""
    d = tmp_path / "m"
    save_model(model, d, level=DEFAULT_LEVEL)
    config = json.loads((d / "config.json").read_text())
    config["model"]["embed_dim"] = int(config["model"]["embed_dim"]) + 8
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="do not match the config"):
        load_model(d, deferred_codegen=deferred)
