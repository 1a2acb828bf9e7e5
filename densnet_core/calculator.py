"""ASE calculator on the DenSNet potential: energy, forces, dipole and polarizability.

``DenSNetCalculator()`` with no arguments loads the default MD model (:func:`default_md_model_dir`:
``models/densnet-md-ethanol`` of the source tree, else of the working directory); a missing
model raises :class:`MDModelNotFoundError` with what to do. Pass ``model=`` a directory or an
in-memory :class:`~densnet_core.energy_model.DenSNetPotential`.

Properties and units (ASE conventions)
--------------------------------------
``energy``, ``free_energy``
    eV (the model's total energy, hartree x 27.211386).
``forces``
    eV/Å, -dE/dR by autograd through the density and energy networks.
``dipole``
    e·Å (ASE's unit), from the *predicted density*: sum_A Z_A (R_A - O) - sum_mu d_mu c_mu,
    about the centre of nuclear charge (origin-independent for a neutral molecule).
``polarizability``
    (3, 3) Å^3 (bohr^3 x 0.148185), the static polarizability from the predicted density
    response. Only for density models with response heads; a model trained on labels without
    polarizability (``LevelOfTheory(polarizability=False)``) raises
    ``PropertyNotImplementedError`` for it. ``results["polarizability_au"]`` holds the same
    tensor in bohr^3.

Works with ``ase.optimize.BFGS``, ``ase.vibrations.Vibrations`` and ``ase.vibrations.Infrared``
(which reads ``atoms.get_dipole_moment()``), and the ASE MD integrators.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)

from densnet_core.units import ANGSTROM_PER_BOHR, BOHR_PER_ANGSTROM, EV_PER_HARTREE

__all__ = [
    "DEFAULT_MD_MODEL_NAME",
    "DenSNetCalculator",
    "MDModelNotFoundError",
    "default_md_model_dir",
    "md_model_for",
    "resolve_md_model_dir",
    "shipped_md_models",
]

DEFAULT_MD_MODEL_NAME = "densnet-md-ethanol"


class MDModelNotFoundError(FileNotFoundError):
    """No MD model directory where one was expected."""


def default_md_model_dir() -> Path:
    """Where the default MD model lives: ``<source tree>/models/densnet-md-ethanol`` if that
    exists, else ``./models/densnet-md-ethanol`` (which may not exist)."""
    here = Path(__file__).resolve().parents[1] / "models" / DEFAULT_MD_MODEL_NAME
    if here.is_dir():
        return here
    return Path.cwd() / "models" / DEFAULT_MD_MODEL_NAME


def shipped_md_models() -> list[Path]:
    """The MD model directories next to the default one (``models/densnet-md-*``), by name."""
    from densnet_core.energy_train import ENERGY_WEIGHTS_FILE

    root = default_md_model_dir().parent
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.glob("densnet-md-*") if p.is_dir() and (p / ENERGY_WEIGHTS_FILE).is_file()
    )


def md_model_for(numbers: Sequence[int]) -> Path:
    """The shipped MD model for a molecule with atomic numbers ``numbers``.

    An MD model is trained on configurations of a few molecules, so the model trained on this
    molecule (its card's ``training_formulas`` holds the Hill formula) comes first; else the
    default model if it covers the elements, else the first shipped model that covers them.

    Raises
    ------
    MDModelNotFoundError
        No shipped model covers these elements (the message lists what there is).
    """
    import json

    from densnet_core.energy_train import hill_formula

    formula = hill_formula(numbers)
    need = {int(z) for z in numbers}
    cards: list[tuple[Path, dict[str, Any]]] = []
    for path in shipped_md_models():
        try:
            cards.append((path, json.loads((path / "model_card.json").read_text())))
        except (OSError, ValueError):
            continue
    for path, card in cards:
        if formula in card.get("training_formulas", []):
            return path
    covering = [p for p, card in cards if need <= set(card.get("elements", []))]
    default = default_md_model_dir()
    if default in covering:
        return default
    if covering:
        return covering[0]
    have = ", ".join(f"{p.name} (Z = {card.get('elements')})" for p, card in cards) or "none"
    raise MDModelNotFoundError(
        f"no shipped MD model covers the elements of {formula} (shipped: {have}); train one "
        "(scripts/train_md.py) and pass it with --model"
    )


def resolve_md_model_dir(
    model_dir: str | os.PathLike[str] | None, numbers: Sequence[int] | None = None
) -> Path:
    """The MD model directory to use.

    ``model_dir`` if given; else, with ``numbers``, :func:`md_model_for` (the shipped model of
    that molecule); else :func:`default_md_model_dir`.

    Raises
    ------
    MDModelNotFoundError
        If it does not exist or is not an MD model directory.
    """
    from densnet_core.energy_train import ENERGY_WEIGHTS_FILE

    if model_dir is not None:
        path = Path(model_dir)
    elif numbers is not None:
        path = md_model_for(numbers)
    else:
        path = default_md_model_dir()
    if not (path / ENERGY_WEIGHTS_FILE).is_file():
        what = "the default MD model" if model_dir is None else "MD model"
        raise MDModelNotFoundError(
            f"{what} not found at {path} (no {ENERGY_WEIGHTS_FILE}). Train one with "
            "densnet_core.energy_train.train_md_model, or give one (densnet md --model DIR; "
            "DenSNetCalculator(model=DIR))."
        )
    return path


class DenSNetCalculator(Calculator):
    """ASE calculator: DenSNet density -> energy, forces, dipole, polarizability.

    Parameters (keyword-only)
    ----------
    model
        MD model directory, a loaded :class:`~densnet_core.energy_model.DenSNetPotential`, or
        None for :func:`default_md_model_dir`.
    device
        torch device of a model loaded from a directory.
    dtype
        ``"float32"`` or ``"float64"`` (for finite-difference checks). Default: float32 for a
        model loaded from a directory; an in-memory potential keeps its own dtype unless one
        is given (then it is converted in place).
    charge
        Total charge of the molecule, e (default: the sum of ``atoms``' initial charges,
        rounded).
    **kwargs
        Passed to ``ase.calculators.calculator.Calculator``.
    """

    implemented_properties = ("energy", "free_energy", "forces", "dipole", "polarizability")

    def __init__(
        self,
        *,
        model: Any = None,
        device: str = "cpu",
        dtype: str | None = None,
        charge: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        import torch

        from densnet_core.energy_model import DenSNetPotential

        dtypes = {"float32": torch.float32, "float64": torch.float64}
        if dtype is not None and dtype not in dtypes:
            raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")
        torch_dtype = dtypes.get(dtype or "float32")
        if isinstance(model, DenSNetPotential):
            self.potential = (model if dtype is None else model.to(torch_dtype)).eval()
            self.model_id = "in-memory"
        else:
            from densnet_core.energy_train import load_md_model

            path = resolve_md_model_dir(model)
            self.potential, card = load_md_model(path, device=device, dtype=torch_dtype)
            self.model_id = str(card.get("model_id", path.name))
        self.charge = charge

    def calculate(
        self,
        atoms: Any = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        """Compute energy, forces and dipole (and the polarizability when asked for)."""
        super().calculate(atoms, properties, system_changes)
        want_alpha = "polarizability" in properties
        if want_alpha and not self.potential.has_response:
            raise PropertyNotImplementedError(
                "this DenSNet model has no density-response heads (it was trained on labels "
                "without polarizability), so it cannot give a polarizability"
            )
        charge = self.charge
        if charge is None:
            charge = float(round(float(np.sum(self.atoms.get_initial_charges()))))
        res = self.potential.energy_and_forces(
            self.atoms.get_atomic_numbers(),
            self.atoms.get_positions() * BOHR_PER_ANGSTROM,
            charge,
            compute_response=want_alpha,
        )
        energy = float(res["energy_hartree"]) * EV_PER_HARTREE
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = (
            np.asarray(res["forces_hartree_per_bohr"]) * EV_PER_HARTREE / ANGSTROM_PER_BOHR
        )
        self.results["dipole"] = np.asarray(res["dipole_au"]) * ANGSTROM_PER_BOHR
        if "polarizability_au" in res:
            alpha = np.asarray(res["polarizability_au"])
            self.results["polarizability_au"] = alpha
            self.results["polarizability"] = alpha * ANGSTROM_PER_BOHR**3
