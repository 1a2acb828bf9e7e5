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

    @property
    def hash(self) -> str:
        """sha1[:16] of the settings (stable across runs and machines).

        ``polarizability`` enters only when False: the hash of every level that computes it is
        what it was before the field existed.
        """
        fields = self.model_dump()
        if fields["polarizability"]:
            del fields["polarizability"]
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
        return f"{xc}/{basis}{df}{grid} fit:{self.fit_auxbasis}{alpha}"


DEFAULT_LEVEL = LevelOfTheory()
