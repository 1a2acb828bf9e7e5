"""Tiny HF/STO-3G label stores for the training tests (4 molecules x a few distorted conformers).

Labels come from :func:`densnet_core.labelling.label_conformer` (fit aux basis: the default
def2-universal-jkfit), so they exercise exactly the production path, in about a second each.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from densnet_core import keys as K
from densnet_core.level import LevelOfTheory

TINY_LEVEL = LevelOfTheory(xc="hf", basis="sto-3g")

# (name, smiles, InChIKey, numbers, positions in Å)
MOLECULES = [
    (
        "water",
        "O",
        "XLYOFNOQVPJJNP-UHFFFAOYSA-N",
        [8, 1, 1],
        [[0.0, 0.0, 0.117], [0.0, 0.757, -0.467], [0.0, -0.757, -0.467]],
    ),
    (
        "ammonia",
        "N",
        "QGZKDVFQNNGYKY-UHFFFAOYSA-N",
        [7, 1, 1, 1],
        [[0.0, 0.0, 0.0], [0.0, 0.94, 0.38], [0.814, -0.47, 0.38], [-0.814, -0.47, 0.38]],
    ),
    (
        "formaldehyde",
        "C=O",
        "WSFSSNUMVMOOMR-UHFFFAOYSA-N",
        [6, 8, 1, 1],
        [[0.0, 0.0, -0.529], [0.0, 0.0, 0.677], [0.0, 0.935, -1.114], [0.0, -0.935, -1.114]],
    ),
    (
        "methanol",
        "CO",
        "OKKJLVBELUTLKV-UHFFFAOYSA-N",
        [6, 8, 1, 1, 1, 1],
        [
            [-0.047, 0.664, 0.0],
            [-0.047, -0.758, 0.0],
            [-1.086, 0.975, 0.0],
            [0.434, 1.077, 0.893],
            [0.434, 1.077, -0.893],
            [0.866, -1.049, 0.0],
        ],
    ),
]


def conformer_rows(n_conformers: int = 3, *, seed: int = 0, scale: float = 0.06) -> list[dict]:
    """Conformers-table rows: each molecule at its geometry plus randomly displaced copies."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, (name, smiles, key, numbers, pos) in enumerate(MOLECULES):
        for c in range(n_conformers):
            p = np.asarray(pos, dtype=float)
            if c > 0:
                p = p + rng.normal(scale=scale, size=p.shape)
            ckey = hashlib.sha1(f"{numbers}|{np.round(p, 5).tolist()}".encode()).hexdigest()
            rows.append(
                {
                    K.RECORD_INDEX: i,
                    K.NAME: name,
                    K.SMILES: smiles,
                    K.MOL_ID: key,
                    K.CONFORMER_ID: c,
                    K.CONFORMER_KEY: ckey,
                    K.CHARGE: 0,
                    K.MULTIPLICITY: 1,
                    K.NUMBERS: list(numbers),
                    K.POSITIONS_ANGSTROM: p.tolist(),
                    K.STATUS: "ok",
                    K.ERROR: "",
                }
            )
    return rows


def write_conformers_table(rows: list[dict], path: Path, *, energy_cycle: int = 3) -> Path:
    """Write :func:`conformer_rows` rows as a conformers table at ``path`` and return it.

    Fills in (in place) the columns :func:`conformer_rows` leaves out; MMFF energies are
    0, 1, ..., ``energy_cycle - 1`` kcal/mol in turn (``energy_cycle=1``: all 0).
    """
    from densnet_core import store

    for i, r in enumerate(rows):
        r[K.MMFF_ENERGY_KCAL] = float(i % energy_cycle)
        r.update({K.INPUT_SMILES: r[K.SMILES], K.N_HEAVY_ATOMS: 1, K.FORCE_FIELD: "MMFF94"})
        r.update({K.FRAGMENT_NOTE: "", K.STEREO_NOTE: ""})
    return store.write_table(rows, path, "conformers")


def make_tiny_labels(directory: Path, n_conformers: int = 3, *, seed: int = 0) -> Path:
    """Label the tiny set at HF/STO-3G into ``directory`` (one part file) and return it."""
    from densnet_core.labelling import label_conformer
    from densnet_core.store import append_part

    labels = [
        label_conformer(row, TINY_LEVEL, threads=1, with_fit_error=False)
        for row in conformer_rows(n_conformers, seed=seed)
    ]
    bad = [lab[K.ERROR] for lab in labels if lab[K.STATUS] != "ok"]
    assert not bad, bad
    append_part(labels, directory, "labels")
    return directory
