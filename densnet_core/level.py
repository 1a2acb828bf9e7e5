"""The level of theory: one object whose hash keys the label cache.

Everything that changes a label's numbers is a field here; anything that does not (threads,
memory) is not, so changing it never invalidates cached labels.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field


class LevelOfTheory(BaseModel):
    """Kohn–Sham settings for labels, and the auxiliary basis the density is fitted in.

    Attributes
    ----------
    xc
        Exchange–correlation functional (PySCF name); "hf" for Hartree–Fock.
    basis
        Orbital basis (PySCF name).
    density_fit
        Density-fitted Coulomb (and exchange) integrals in the SCF.
    scf_auxbasis
        Auxiliary basis of the SCF's density fitting; None = PySCF's choice for ``basis``.
    grid_level
        PySCF DFT grid level (0–9).
    conv_tol
        SCF energy convergence, Eh.
    max_cycle
        SCF iterations per attempt.
    fit_auxbasis
        Auxiliary basis the labelled density (and its response) is fitted in, i.e. the basis
        the model predicts coefficients of.
    polarizability
        Compute the CPKS polarizability and the fitted density response (True, the default).
        False skips both (about half of a label's cost), for labels that only need energies,
        forces, dipoles and densities (molecular-dynamics training data): those labels have
        ``polarizability_au`` and ``response_coeffs`` null. It is part of the hash only when
        False, so the default level's hash (and every existing label cache) is unchanged,
        while labels without a polarizability never count as finished labels of the full
        level (and vice versa).
    forces
        Compute the nuclear forces (True, the default). False skips them, for labels that
        only train the density model (which needs the density and dipole, not forces).
        Hashed like ``polarizability``: only when False.

    A label at any of the four polarizability/forces variants of a level holds the same SCF
    density, dipole and fitted coefficients (:meth:`full` names the level they share);
    ``densnet train`` uses all of them, the polarizability terms only where there is one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    xc: str = "b3lyp"
    basis: str = "def2-svpd"
    density_fit: bool = True
    scf_auxbasis: str | None = None
    grid_level: int = Field(default=3, ge=0, le=9)
    conv_tol: float = Field(default=1e-9, gt=0)
    max_cycle: int = Field(default=100, ge=1)
    fit_auxbasis: str = "def2-universal-jkfit"
    polarizability: bool = True
    forces: bool = True

    @property
    def hash(self) -> str:
        """sha1[:16] of the settings (stable across runs and machines).

        ``polarizability`` and ``forces`` enter only when False: the hash of every level that
        computes them is what it was before the fields existed.
        """
        fields = self.model_dump()
        for optional in ("polarizability", "forces"):
            if fields[optional]:
                del fields[optional]
        payload = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha1(payload).hexdigest()[:16]

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``"B3LYP/def2-SVPD DF grid3 fit:def2-universal-jkfit"``."""
        xc = "HF" if self.xc.lower() == "hf" else self.xc.upper()
        basis = self.basis.replace("def2-svpd", "def2-SVPD").replace("def2-svp", "def2-SVP")
        df = " DF" if self.density_fit else ""
        grid = "" if self.xc.lower() == "hf" else f" grid{self.grid_level}"
        alpha = "" if self.polarizability else " no-alpha"
        forces = "" if self.forces else " no-forces"
        return f"{xc}/{basis}{df}{grid} fit:{self.fit_auxbasis}{alpha}{forces}"

    def full(self) -> LevelOfTheory:
        """This level with polarizability and forces: the level whose density the labels share."""
        return self.model_copy(update={"polarizability": True, "forces": True})

    def variants(self) -> list[LevelOfTheory]:
        """The four levels (with or without polarizability, forces) of one density, full first."""
        return [
            self.model_copy(update={"polarizability": p, "forces": f})
            for p in (True, False)
            for f in (True, False)
        ]

    def providers(self) -> list[LevelOfTheory]:
        """The variants whose labels hold everything a label at this level holds (itself too)."""
        return [v for v in self.variants() if v.provides(self)]

    def provides(self, other: LevelOfTheory) -> bool:
        """Whether a label at this level holds everything a label at ``other`` holds."""
        return (
            self.full() == other.full()
            and (self.polarizability or not other.polarizability)
            and (self.forces or not other.forces)
        )


DEFAULT_LEVEL = LevelOfTheory()
