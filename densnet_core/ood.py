"""Out-of-distribution flags: unseen elements, unseen ring systems, and high ensemble spread.

A prediction is flagged (``ood = True``) when at least one of these holds; the reasons go, joined
by ``"; "``, into the ``ood_reason`` column (empty when in distribution):

``element absent from training: Br, I``
    An element of the molecule occurs in none of the ensemble's training molecules (the union
    over members of the molecules they trained on; validation-only elements count as unseen).
``ring system absent from training: c1ccc2ncccc2c1``
    A ring system of the molecule (see :func:`ring_systems`) occurs in none of the training
    molecules.
``high uncertainty: std |mu| 0.41 D > 0.25 D`` / ``... std alpha_iso 3.2 au > 1.9 au``
    The ensemble spread exceeds the threshold calibrated on the validation molecules
    (:mod:`densnet_core.calibration`: by default the 95th percentile of the validation
    spreads, in the same — calibrated — units as the ``*_std`` columns).

Ring systems
------------
Rings (RDKit SSSR) that share at least one atom are merged (fused, bridged and spiro systems
are one system). A system is written as the canonical SMILES of its ring atoms and ring bonds
only, with **real elements and bond types (aromaticity kept)** but hydrogens, charges,
isotopes, stereo and substituents removed: pyrrole and N-methylpyrrole both give ``c1ccnc1``,
pyridine and 2-chloropyridine ``c1ccncc1``, indole ``c1ccc2nccc2c1``, benzene and toluene
``c1ccccc1``. The keys are identifiers only — not necessarily valid SMILES (an aromatic ``n``
without its H does not sanitise). Real atoms rather than generic ones because a pyridine
versus a benzene ring is exactly the kind of difference the density model cares about.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "OODCriteria",
    "ood_flags",
    "ood_reasons",
    "ring_systems",
    "training_ring_systems",
]


@lru_cache(maxsize=65536)
def _ring_systems_cached(smiles: str) -> tuple[str, ...] | None:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    rings = [set(r) for r in mol.GetRingInfo().AtomRings()]
    systems: list[set[int]] = []
    for ring in rings:  # merge rings sharing an atom (union-find by repeated merging)
        merged = [s for s in systems if s & ring]
        for s in merged:
            ring |= s
            systems.remove(s)
        systems.append(ring)
    if not systems:
        return ()
    bare = Chem.RWMol(mol)
    for atom in bare.GetAtoms():
        atom.SetFormalCharge(0)
        atom.SetIsotope(0)
        atom.SetNumExplicitHs(0)
        atom.SetNoImplicit(True)
        atom.SetChiralTag(Chem.ChiralType.CHI_UNSPECIFIED)
    keys = set()
    for atoms in systems:
        bonds = [
            b.GetIdx()
            for b in bare.GetBonds()
            if b.IsInRing() and b.GetBeginAtomIdx() in atoms and b.GetEndAtomIdx() in atoms
        ]
        # a stand-alone copy of the system, so that its canonical SMILES does not depend on
        # the rest of the molecule (MolFragmentToSmiles ranks atoms in the whole molecule)
        sub = Chem.PathToSubmol(bare, bonds)
        sub.UpdatePropertyCache(strict=False)
        keys.add(Chem.MolToSmiles(sub, canonical=True, isomericSmiles=False))
    return tuple(sorted(keys))


def ring_systems(smiles: str) -> list[str] | None:
    """The ring systems of a molecule as canonical keys (see the module docstring).

    Parameters
    ----------
    smiles
        SMILES of the molecule.

    Returns
    -------
    list[str] or None
        Sorted unique ring-system keys (empty for an acyclic molecule); None if RDKit cannot
        parse ``smiles``.
    """
    got = _ring_systems_cached(str(smiles))
    return None if got is None else list(got)


def training_ring_systems(smiles: Iterable[str]) -> list[str]:
    """Sorted union of the ring systems of the (parsable) training SMILES."""
    out: set[str] = set()
    for s in smiles:
        out.update(ring_systems(s) or ())
    return sorted(out)


@dataclass(frozen=True)
class OODCriteria:
    """What counts as in distribution for an ensemble.

    Attributes
    ----------
    training_elements
        Atomic numbers present in the training molecules.
    training_ring_systems
        Ring-system keys of the training molecules (:func:`ring_systems`).
    max_std_dipole_debye
        Threshold on the ensemble spread of |mu|, D (None or NaN = not checked).
    max_std_alpha_iso_au
        Threshold on the spread of alpha_iso, bohr^3 (None or NaN = not checked).
    """

    training_elements: frozenset[int]
    training_ring_systems: frozenset[str] = field(default_factory=frozenset)
    max_std_dipole_debye: float | None = None
    max_std_alpha_iso_au: float | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> OODCriteria:
        """From an ``ensemble.json`` dict (:mod:`densnet_core.ensemble`)."""
        cal = manifest.get("calibration") or {}
        thr = cal.get("ood_thresholds") or {}
        return cls(
            training_elements=frozenset(int(z) for z in manifest["training_elements"]),
            training_ring_systems=frozenset(manifest.get("training_ring_systems") or ()),
            max_std_dipole_debye=thr.get("dipole_debye_std"),
            max_std_alpha_iso_au=thr.get("alpha_iso_au_std"),
        )


def _symbol(z: int) -> str:
    from pyscf.data.elements import ELEMENTS

    return str(ELEMENTS[int(z)])


def _over(x: float, limit: float | None) -> bool:
    return limit is not None and np.isfinite(limit) and np.isfinite(x) and x > limit


def ood_reasons(
    smiles: Sequence[str],
    numbers: Sequence[Sequence[int]],
    std_dipole_debye: Sequence[float] | np.ndarray,
    std_alpha_iso_au: Sequence[float] | np.ndarray,
    calibration: OODCriteria | Mapping[str, Any],
) -> list[str]:
    """Why each molecule is out of distribution ("" = in distribution).

    Parameters
    ----------
    smiles
        (B,) SMILES (ring systems; an unparsable SMILES skips the ring check).
    numbers
        (B,) atomic numbers of each molecule, (N_b,) each.
    std_dipole_debye
        (B,) ensemble spread of |mu|, D (NaN = unknown, not checked).
    std_alpha_iso_au
        (B,) ensemble spread of alpha_iso, bohr^3.
    calibration
        :class:`OODCriteria`, or an ``ensemble.json`` dict.

    Returns
    -------
    list[str]
        (B,) reasons joined by ``"; "`` (module docstring), "" when none applies.
    """
    crit = (
        calibration
        if isinstance(calibration, OODCriteria)
        else OODCriteria.from_manifest(calibration)
    )
    sd = np.asarray(std_dipole_debye, dtype=float).reshape(-1)
    sa = np.asarray(std_alpha_iso_au, dtype=float).reshape(-1)
    if not (len(smiles) == len(numbers) == sd.shape[0] == sa.shape[0]):
        raise ValueError("smiles, numbers and the two std arrays must have the same length")
    out: list[str] = []
    for b, smi in enumerate(smiles):
        why: list[str] = []
        unseen = sorted({int(z) for z in numbers[b]} - crit.training_elements)
        if unseen:
            why.append("element absent from training: " + ", ".join(_symbol(z) for z in unseen))
        rings = ring_systems(smi) if smi else None
        new_rings = [r for r in rings or () if r not in crit.training_ring_systems]
        if new_rings:
            why.append("ring system absent from training: " + ", ".join(new_rings))
        if _over(sd[b], crit.max_std_dipole_debye):
            why.append(
                f"high uncertainty: std |mu| {sd[b]:.3g} D > {crit.max_std_dipole_debye:.3g} D"
            )
        if _over(sa[b], crit.max_std_alpha_iso_au):
            why.append(
                f"high uncertainty: std alpha_iso {sa[b]:.3g} au > "
                f"{crit.max_std_alpha_iso_au:.3g} au"
            )
        out.append("; ".join(why))
    return out


def ood_flags(reasons: Sequence[str]) -> list[bool]:
    """``ood`` column from :func:`ood_reasons`: True where a reason was given."""
    return [bool(r) for r in reasons]
