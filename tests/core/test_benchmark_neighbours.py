"""benchmarks.accuracy: heterocycles one substituent from a training molecule are named, and the
dipole MAE is also given over the ones that have no such neighbour."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.accuracy import _neighbour_lines, training_neighbours
from densnet_core import keys as K
from densnet_core.units import DEBYE_PER_AU


def test_training_neighbours_names_each_relation():
    rows = pd.DataFrame(
        {
            K.MOL_ID: ["a", "a", "b", "c"],  # two conformers of the first molecule
            K.NAME: [
                "1-methyl-2-pyridone",
                "1-methyl-2-pyridone",
                "2-chloropyrimidine",
                "oxindole",
            ],
            K.SMILES: ["Cn1ccccc1=O", "Cn1ccccc1=O", "Clc1ncccn1", "O=C1Cc2ccccc2N1"],
        }
    )
    training = [
        ("2-pyridone", "O=c1cccc[nH]1"),  # the N-methyl removed
        ("2-aminopyrimidine", "Nc1ncccn1"),  # Cl replaced by NH2
        ("4-aminopyrimidine", "Nc1ccncn1"),  # moved and replaced: two edits
        ("isatin", "O=C1Nc2ccccc2C1=O"),  # oxindole + oxo
    ]
    assert training_neighbours(rows, training) == {
        "1-methyl-2-pyridone": ["2-pyridone (added)"],
        "2-chloropyrimidine": ["2-aminopyrimidine (replaced)"],
        "oxindole": ["isatin (removed)"],
    }
    assert training_neighbours(rows, []) == {}


def _conformer(name: str, model_err_debye: float, xtb_err_debye: float) -> dict:
    to_au = 1.0 / DEBYE_PER_AU
    return {
        "name": name,
        "dipole_ref_au": [0.0, 0.0, 1.0],
        "model_dipole_au": [model_err_debye * to_au, 0.0, 1.0],
        "xtb_dipole_au": [0.0, xtb_err_debye * to_au, 1.0],
    }


def test_neighbour_lines_give_the_strictly_unseen_mae():
    res = {
        "training_neighbours": {"near": ["x (added)"]},
        "per_conformer": [
            _conformer("near", 2.0, 0.1),
            _conformer("far1", 0.2, 0.3),
            _conformer("far2", 0.4, 0.5),
        ],
    }
    lines = _neighbour_lines(res)
    assert lines[1] == "    near: x (added)"
    assert lines[2] == "  without them (2 conformers): μ MAE model 0.300 D, GFN2-xTB 0.400 D"
    assert _neighbour_lines({"training_neighbours": {}, "per_conformer": []}) == []


@pytest.mark.parametrize("missing", [None, {}])
def test_neighbour_lines_without_the_key(missing):
    res = {"per_conformer": [_conformer("a", 1.0, 1.0)]}
    if missing is not None:
        res["training_neighbours"] = missing
    assert _neighbour_lines(res) == []
