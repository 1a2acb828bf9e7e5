"""The ASE calculator: units, properties, BFGS, Vibrations and Infrared, default model."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from densnet_core.calculator import DenSNetCalculator, MDModelNotFoundError
from densnet_core.units import ANGSTROM_PER_BOHR, BOHR_PER_ANGSTROM, EV_PER_HARTREE
from tests.core._md_tiny import (
    WATER_A,
    one_torch_thread,  # noqa: F401 - autouse fixture
    tiny_potential,
)


@pytest.fixture(scope="module")
def pot():
    return tiny_potential((1, 8), seed=1)


def _water() -> Atoms:
    return Atoms("OH2", positions=WATER_A)


def test_units_and_properties(pot):
    atoms = _water()
    atoms.calc = DenSNetCalculator(model=pot, dtype="float64")
    res = pot.energy_and_forces(atoms.numbers, atoms.positions * BOHR_PER_ANGSTROM)
    assert atoms.get_potential_energy() == pytest.approx(res["energy_hartree"] * EV_PER_HARTREE)
    np.testing.assert_allclose(
        atoms.get_forces(), res["forces_hartree_per_bohr"] * EV_PER_HARTREE / ANGSTROM_PER_BOHR
    )
    np.testing.assert_allclose(atoms.get_dipole_moment(), res["dipole_au"] * ANGSTROM_PER_BOHR)
    # forces (eV/Å) agree with ASE's numerical derivative of the energy (eV)
    from ase.calculators.fd import calculate_numerical_forces

    num = calculate_numerical_forces(atoms, eps=1e-4)
    np.testing.assert_allclose(atoms.get_forces(), num, atol=1e-6)
    with pytest.raises(PropertyNotImplementedError):
        atoms.calc.get_property("polarizability", atoms)


def test_polarizability_with_response_heads():
    pot_r = tiny_potential((1, 8), seed=2, response=True)
    atoms = _water()
    atoms.calc = DenSNetCalculator(model=pot_r, dtype="float64")
    alpha = atoms.calc.get_property("polarizability", atoms)
    assert alpha.shape == (3, 3)
    np.testing.assert_allclose(alpha, alpha.T, atol=1e-12)
    np.testing.assert_allclose(
        alpha, atoms.calc.results["polarizability_au"] * ANGSTROM_PER_BOHR**3
    )


def test_missing_default_model_is_a_readable_error(tmp_path, monkeypatch):
    import densnet_core.calculator as calc_mod

    monkeypatch.setattr(calc_mod, "default_md_model_dir", lambda: tmp_path / "nothing")
    with pytest.raises(MDModelNotFoundError, match="default MD model not found"):
        DenSNetCalculator()
    with pytest.raises(MDModelNotFoundError, match="MD model not found"):
        DenSNetCalculator(model=tmp_path)


def test_loads_a_model_directory(tmp_path, pot):
    from densnet_core.energy_train import save_md_model

    save_md_model(pot, tmp_path / "md")
    atoms = _water()
    atoms.calc = DenSNetCalculator(model=tmp_path / "md", dtype="float64")
    ref = pot.energy_and_forces(atoms.numbers, atoms.positions * BOHR_PER_ANGSTROM)
    assert atoms.get_potential_energy() == pytest.approx(ref["energy_hartree"] * EV_PER_HARTREE)
    assert atoms.calc.model_id.startswith("md-")


def test_bfgs_converges(pot):
    from ase.optimize import BFGS

    atoms = _water()
    atoms.calc = DenSNetCalculator(model=pot, dtype="float64")
    e0 = atoms.get_potential_energy()
    opt = BFGS(atoms, logfile=None)
    assert opt.run(fmax=0.05, steps=150)
    assert np.abs(atoms.get_forces()).max() < 0.05
    assert atoms.get_potential_energy() <= e0
    # still a molecule: every distance inside the model's cutoff
    assert atoms.get_all_distances().max() < pot.density.cutoff_bohr * ANGSTROM_PER_BOHR


@pytest.mark.slow
def test_vibrations_and_infrared(tmp_path, pot):
    from ase.optimize import BFGS
    from ase.vibrations import Infrared, Vibrations

    atoms = _water()
    atoms.calc = DenSNetCalculator(model=pot, dtype="float64")
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=200)
    vib = Vibrations(atoms, name=str(tmp_path / "vib"), delta=0.01)
    vib.run()
    assert len(vib.get_frequencies()) == 9
    ir = Infrared(atoms, name=str(tmp_path / "ir"), delta=0.01)
    ir.run()
    ir.read()
    inten = ir.intensities
    assert inten.shape == (9,) and np.all(np.isfinite(inten))


def test_shipped_md_model_is_chosen_per_molecule():
    """Without --model, MD uses the shipped model trained on that molecule (card formulas)."""
    import json

    from rdkit import Chem

    from densnet_core.calculator import (
        default_md_model_dir,
        md_model_for,
        resolve_md_model_dir,
        shipped_md_models,
    )

    models = shipped_md_models()
    assert default_md_model_dir() in models
    cards = {p: json.loads((p / "model_card.json").read_text()) for p in models}
    molecules = {"C2H6O": "CCO", "C2H6S": "CCS", "C6H6O2": "Oc1cccc(O)c1"}  # the paper's three
    for formula, smiles in molecules.items():
        trained_on = [p for p, card in cards.items() if formula in card["training_formulas"]]
        assert len(trained_on) == 1, f"{formula}: shipped models trained on it: {trained_on}"
        numbers = [a.GetAtomicNum() for a in Chem.AddHs(Chem.MolFromSmiles(smiles)).GetAtoms()]
        assert md_model_for(numbers) == trained_on[0]
        assert resolve_md_model_dir(None, numbers) == trained_on[0]
    # a given directory wins; without numbers the default model is used
    assert resolve_md_model_dir(default_md_model_dir()) == default_md_model_dir()
    assert resolve_md_model_dir(None) == default_md_model_dir()
    # nitrogen is in no shipped MD model: a readable error naming what is shipped
    with pytest.raises(MDModelNotFoundError, match="no shipped MD model covers"):
        md_model_for([7, 1, 1, 1])


def test_hill_formula_is_the_card_form():
    """Card ``training_formulas`` and the model lookup use the same Hill formula."""
    from densnet_core.energy_train import hill_formula

    assert hill_formula([8, 6, 6, 1, 1, 1, 1, 1, 1]) == "C2H6O"
    assert hill_formula([16, 6, 1, 1, 1, 6, 1, 1, 1]) == "C2H6S"
    assert hill_formula([1, 1, 8]) == "H2O"  # no carbon: alphabetical
