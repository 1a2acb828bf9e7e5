"""Density-only labels (``--density-only``: no polarizability, no forces) and training on a mix.

A density-only label must hold the same density, dipole and energy as the full label of the
same conformer, count as unfinished for a full labelling run (and a full label as finished for
a density-only run), share a label folder with full labels, and train the density model with
the polarizability terms skipped for it. Labels: HF/STO-3G (``tests/core/_tiny_labels.py``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from densnet_core import keys as K
from densnet_core.dataset import load_label_rows, make_samples
from densnet_core.labelling import finished_label_keys, label_conformer, label_key
from densnet_core.level import DEFAULT_LEVEL, LevelOfTheory
from densnet_core.losses import loss_terms, make_batch
from densnet_core.model import DensityModel
from densnet_core.store import append_part, read_dataset
from tests.core._tiny_labels import TINY_LEVEL, conformer_rows

DENSITY_ONLY = TINY_LEVEL.model_copy(update={"polarizability": False, "forces": False})


def test_hashes_of_existing_label_stores_do_not_change():
    """Every label store on disk is keyed by these hashes: the new field must not move them."""
    assert DEFAULT_LEVEL.hash == "9677f23d94f237c8"
    assert LevelOfTheory(polarizability=False).hash == "ca3d22312b5da085"  # MD labels
    hashes = {v.hash for v in DEFAULT_LEVEL.variants()}
    assert len(hashes) == 4
    assert LevelOfTheory(forces=False).label.endswith("fit:def2-universal-jkfit no-forces")


def test_provides_is_the_label_superset_relation():
    full, d_only = TINY_LEVEL, DENSITY_ONLY
    no_alpha = TINY_LEVEL.model_copy(update={"polarizability": False})
    assert full.provides(d_only) and full.provides(no_alpha) and full.provides(full)
    assert not d_only.provides(full) and not no_alpha.provides(full)
    assert no_alpha.provides(d_only) and not d_only.provides(no_alpha)
    assert not DEFAULT_LEVEL.provides(d_only)  # another functional and basis
    assert d_only.full() == full
    assert full.providers() == [full] and set(d_only.providers()) == set(full.variants())


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    """Molecules 0-1 full labels; 2-3 density-only; conformer 0 of molecule 0 both ways."""
    rows = conformer_rows(2, seed=3)
    full = [r for r in rows if r[K.RECORD_INDEX] in (0, 1)]
    d_only = [r for r in rows if r[K.RECORD_INDEX] in (2, 3)] + [rows[0]]
    labels = {
        "full": [label_conformer(r, TINY_LEVEL, threads=1, with_fit_error=False) for r in full],
        "density": [
            label_conformer(r, DENSITY_ONLY, threads=1, with_fit_error=False) for r in d_only
        ],
    }
    directory = tmp_path_factory.mktemp("mixed")
    append_part(labels["full"], directory, "labels")
    append_part(labels["density"], directory, "labels")  # written last: must not win the dedup
    (directory / "level.json").write_text(json.dumps(TINY_LEVEL.model_dump()))
    return directory, labels


def test_density_only_label_holds_the_full_labels_density(mixed_store):
    _, labels = mixed_store
    full, dens = labels["full"][0], labels["density"][-1]  # the same conformer
    assert full[K.CONFORMER_KEY] == dens[K.CONFORMER_KEY]
    assert dens[K.STATUS] == "ok" and dens[K.LEVEL_HASH] == DENSITY_ONLY.hash
    assert dens[K.FORCES_HARTREE_PER_BOHR] is None
    assert dens[K.POLARIZABILITY_AU] is None and dens[K.RESPONSE_COEFFS] is None
    assert full[K.FORCES_HARTREE_PER_BOHR] is not None and full[K.POLARIZABILITY_AU] is not None
    assert dens[K.ENERGY_HARTREE] == pytest.approx(full[K.ENERGY_HARTREE], abs=1e-8)
    np.testing.assert_allclose(dens[K.DIPOLE_AU], full[K.DIPOLE_AU], atol=1e-6)
    np.testing.assert_allclose(dens[K.DENSITY_COEFFS], full[K.DENSITY_COEFFS], atol=1e-6)


def test_finished_keys_across_variants(mixed_store):
    directory, labels = mixed_store
    df = read_dataset(directory, "labels")
    full_keys = {r[K.CONFORMER_KEY] for r in labels["full"]}
    dens_keys = {r[K.CONFORMER_KEY] for r in labels["density"]}
    # a full run must still label the density-only conformers ...
    assert finished_label_keys(df, TINY_LEVEL) == {label_key(k, TINY_LEVEL) for k in full_keys}
    # ... and a density-only run need not redo anything a full label already has
    assert finished_label_keys(df, DENSITY_ONLY) == {
        label_key(k, DENSITY_ONLY) for k in full_keys | dens_keys
    }


def test_rows_of_the_variants_and_the_dedup(mixed_store):
    directory, labels = mixed_store
    exact = load_label_rows(directory, level=TINY_LEVEL)
    assert set(exact[K.LEVEL_HASH]) == {TINY_LEVEL.hash} and len(exact) == len(labels["full"])
    both = load_label_rows(directory, level=TINY_LEVEL, density_variants=True)
    n_distinct = len({r[K.CONFORMER_KEY] for v in labels.values() for r in v})
    assert len(both) == n_distinct == len(both[K.CONFORMER_KEY].unique())
    shared = labels["full"][0][K.CONFORMER_KEY]
    assert both.loc[both[K.CONFORMER_KEY] == shared, K.LEVEL_HASH].item() == TINY_LEVEL.hash
    samples = make_samples(both, level=TINY_LEVEL)
    with_alpha = [s.polarizability_au is not None for s in samples]
    assert with_alpha == [h == TINY_LEVEL.hash for h in both[K.LEVEL_HASH]]
    assert all((s.response is None) == (s.polarizability_au is None) for s in samples)


def test_loss_skips_the_polarizability_terms_of_density_only_labels(mixed_store):
    directory, _ = mixed_store
    rows = load_label_rows(directory, level=TINY_LEVEL, density_variants=True)
    samples = make_samples(rows, level=TINY_LEVEL)
    d_only = next(s for s in samples if s.polarizability_au is None)
    full = next(s for s in samples if s.polarizability_au is not None)
    torch.manual_seed(0)
    model = DensityModel.for_aux_basis(TINY_LEVEL.fit_auxbasis, [1, 6, 7, 8], preset="small")
    batch = make_batch(model, [full, d_only])
    assert batch["has_alpha"].tolist() == [True, False]
    with torch.no_grad():
        terms = loss_terms(model(batch), batch)
        alone = loss_terms(model(make_batch(model, [full])), make_batch(model, [full]))
        only = loss_terms(model(make_batch(model, [d_only])), make_batch(model, [d_only]))
    # the full label alone has the same polarizability terms; the density-only one adds none
    for key in ("response", "polarizability"):
        assert float(alone[key]) > 0
        assert float(terms[key]) == pytest.approx(float(alone[key]), rel=1e-5)
    # its density and dipole terms count
    assert float(only["density"]) > 0 and float(only["response"]) == 0.0
    assert float(terms["density"]) == pytest.approx(
        0.5 * (float(alone["density"]) + float(only["density"])), rel=1e-5
    )


def test_training_on_a_mixed_store(mixed_store, tmp_path):
    from densnet_core.modelio import load_model
    from densnet_core.train import train

    directory, labels = mixed_store
    res = train(
        directory,
        tmp_path / "m",
        preset="small",
        epochs=2,
        batch_size=4,
        val_fraction=0.25,
        seed=1,
        grid_samples=0,
    )
    assert res.stopped == "completed"
    val = res.metrics["validation"]["model"]
    assert np.isfinite(val["dipole_mae_debye"]) and np.isfinite(val["density_coulomb"])
    _, info = load_model(tmp_path / "m")
    card = info.card
    assert card["level_hash"] == TINY_LEVEL.hash
    n_all = len({r[K.CONFORMER_KEY] for v in labels.values() for r in v})
    assert card["n_train_conformers"] + card["n_val_conformers"] == n_all
    # molecules 2-3 are density-only: whichever side of the split they fall, some are counted
    n_dens_only = len(
        {r[K.CONFORMER_KEY] for r in labels["density"]}
        - {r[K.CONFORMER_KEY] for r in labels["full"]}
    )
    assert 0 < card["n_train_conformers_without_alpha"] <= n_dens_only
    assert isinstance(pd.Timestamp(card["created"]), pd.Timestamp)
