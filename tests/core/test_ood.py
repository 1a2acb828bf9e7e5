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
