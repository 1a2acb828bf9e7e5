"""Out-of-distribution flags: unseen elements, unseen ring systems, size, high ensemble spread.

A prediction is flagged (``ood = True``) when at least one of these holds; the reasons go, joined
by ``"; "``, into the ``ood_reason`` column (empty when in distribution):

``element absent from training: Br, I``
    An element of the molecule occurs in none of the ensemble's training molecules (the union
    over members of the molecules they trained on; validation-only elements count as unseen).
``ring system absent from training: c1ccc2ncccc2c1``
    A ring system of the molecule (see :func:`ring_systems`) occurs in none of the training
    molecules.
``34 heavy atoms > 14 seen in training``
    The molecule has more heavy (non-hydrogen) atoms than the largest training molecule.
``high uncertainty: std |mu| 0.41 D > 0.25 D`` / ``... std alpha_iso 3.2 au > 1.9 au``
    The ensemble spread exceeds the threshold calibrated on the validation molecules
    (:mod:`densnet_core.calibration`: by default the 95th percentile of the validation
    spreads, in the same — calibrated — units as the ``*_std`` columns).

A check whose reference is unknown is skipped, not failed: ``training_ring_systems=None``
(a model card written before the ring systems were recorded), ``max_heavy_atoms=None``, NaN
spreads (a single model has none) or no thresholds. Model cards written by
:func:`densnet_core.train.train` and ensemble manifests carry ``training_elements``,
``training_ring_systems`` and ``max_heavy_atoms_in_data``; for older ones
:func:`complete_domain` derives the missing fields from the label store the card names.

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

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "OODCriteria",
    "complete_domain",
    "domain_from_label_store",
    "ood_flags",
    "ood_reasons",
    "ring_systems",
    "ring_systems_of_mol",
    "training_ring_systems",
]

log = logging.getLogger(__name__)


@lru_cache(maxsize=65536)
def _ring_systems_cached(smiles: str) -> tuple[str, ...] | None:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    return ring_systems_of_mol(mol)


def ring_systems_of_mol(mol: Any) -> tuple[str, ...]:
    """The ring systems of a sanitised RDKit molecule (with or without explicit hydrogens) as
    sorted unique keys: what :func:`ring_systems` gives for its SMILES, without parsing it
    again (the conformer stage records them: ``ring_systems`` of the conformers table).

    The ring information is computed afresh (symmetrised SSSR) on a copy: a fragment cut
    from a salt (:func:`densnet_core.conformers.keep_largest_fragment`) has none.
    """
    from rdkit import Chem

    mol = Chem.Mol(mol)
    Chem.GetSymmSSSR(mol)
    info = mol.GetRingInfo()
    atom_rings = info.AtomRings()
    if not atom_rings:
        return ()
    # merge rings sharing an atom; a system's bonds are its rings' bonds (every ring bond lies
    # on some ring of the set, and a ring bond between two atoms of a system is in one of its
    # rings, else that ring would share atoms and have been merged)
    systems: list[tuple[set[int], set[int]]] = []
    for ring_atoms, ring_bonds in zip(atom_rings, info.BondRings(), strict=True):
        atoms, bonds = set(ring_atoms), set(ring_bonds)
        apart = []
        for other_atoms, other_bonds in systems:
            if other_atoms & atoms:
                atoms |= other_atoms
                bonds |= other_bonds
            else:
                apart.append((other_atoms, other_bonds))
        systems = [*apart, (atoms, bonds)]
    keys = set()
    for atoms, bonds in systems:
        # an exact, not canonical, description of the system (elements, aromaticity, bonds
        # and their types in local atom numbers): equal descriptions give equal keys, so the
        # canonicalisation below runs once per distinct system of a congeneric series
        local = {i: k for k, i in enumerate(sorted(atoms))}
        raw = (
            tuple(
                (mol.GetAtomWithIdx(i).GetAtomicNum(), mol.GetAtomWithIdx(i).GetIsAromatic())
                for i in local
            ),
            tuple(
                (local[bond.GetBeginAtomIdx()], local[bond.GetEndAtomIdx()], bond.GetBondType())
                for bond in (mol.GetBondWithIdx(j) for j in sorted(bonds))
            ),
        )
        key = _SYSTEM_KEYS.get(raw)
        if key is None:
            key = _system_key(mol, bonds)
            if len(_SYSTEM_KEYS) < 65536:
                _SYSTEM_KEYS[raw] = key
        keys.add(key)
    return tuple(sorted(keys))


_SYSTEM_KEYS: dict[tuple[Any, ...], str] = {}


def _system_key(mol: Any, bonds: set[int]) -> str:
    """Canonical key of one ring system (its bond indices in ``mol``)."""
    from rdkit import Chem

    # a stand-alone copy of the system, so that its canonical SMILES does not depend on
    # the rest of the molecule (MolFragmentToSmiles ranks atoms in the whole molecule)
    sub = Chem.PathToSubmol(mol, sorted(bonds))
    unspecified = Chem.ChiralType.CHI_UNSPECIFIED
    for i in range(sub.GetNumAtoms()):
        atom = sub.GetAtomWithIdx(i)
        atom.SetFormalCharge(0)
        atom.SetIsotope(0)
        atom.SetNumExplicitHs(0)
        atom.SetNoImplicit(True)
        atom.SetChiralTag(unspecified)
    sub.UpdatePropertyCache(strict=False)
    return str(Chem.MolToSmiles(sub, canonical=True, isomericSmiles=False))


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
        Ring-system keys of the training molecules (:func:`ring_systems`); None = unknown
        (the ring check is skipped).
    max_std_dipole_debye
        Threshold on the ensemble spread of |mu|, D (None or NaN = not checked).
    max_std_alpha_iso_au
        Threshold on the spread of alpha_iso, bohr^3 (None or NaN = not checked).
    max_heavy_atoms
        Heavy atoms of the largest training molecule (None = not checked).
    """

    training_elements: frozenset[int]
    training_ring_systems: frozenset[str] | None = field(default_factory=frozenset)
    max_std_dipole_debye: float | None = None
    max_std_alpha_iso_au: float | None = None
    max_heavy_atoms: int | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> OODCriteria:
        """From an ``ensemble.json`` dict (:mod:`densnet_core.ensemble`).

        A manifest without ``training_ring_systems`` or ``max_heavy_atoms_in_data`` skips
        that check (:func:`complete_domain` fills them in from the label store first).
        """
        cal = manifest.get("calibration") or {}
        thr = cal.get("ood_thresholds") or {}
        rings = manifest.get("training_ring_systems")
        return cls(
            training_elements=frozenset(int(z) for z in manifest["training_elements"]),
            training_ring_systems=None if rings is None else frozenset(rings),
            max_std_dipole_debye=thr.get("dipole_debye_std"),
            max_std_alpha_iso_au=thr.get("alpha_iso_au_std"),
            max_heavy_atoms=_int_or_none(manifest.get("max_heavy_atoms_in_data")),
        )

    @classmethod
    def from_model_card(
        cls, card: Mapping[str, Any], *, supported_elements: Iterable[int] = ()
    ) -> OODCriteria:
        """Domain checks of a single model (no spread: no uncertainty thresholds).

        Parameters
        ----------
        card
            ``model_card.json`` as a dict (after :func:`complete_domain`, ideally).
        supported_elements
            Fallback for the training elements when the card records none (``elements`` of
            the model).

        Returns
        -------
        OODCriteria
            Elements from ``training_elements``, else ``elements_in_data`` (training and
            validation molecules), else ``supported_elements``; ring systems and the size
            limit from ``training_ring_systems`` / ``max_heavy_atoms_in_data`` (None = unknown,
            skipped).
        """
        elements: Iterable[int] = supported_elements
        for key in ("training_elements", "elements_in_data"):
            values = card.get(key)
            if isinstance(values, list | tuple) and values:
                elements = values
                break
        rings = card.get("training_ring_systems")
        return cls(
            training_elements=frozenset(int(z) for z in elements),
            training_ring_systems=None if rings is None else frozenset(rings),
            max_heavy_atoms=_int_or_none(card.get("max_heavy_atoms_in_data")),
        )


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def domain_from_label_store(
    labels_dir: str | os.PathLike[str], mol_ids: Iterable[str]
) -> dict[str, Any]:
    """Training domain of the ``mol_ids`` molecules of a label store.

    Reads only the ``mol_id``, ``smiles``, ``numbers`` and ``status`` columns of the
    ``part-*.parquet`` files; ok rows of the given molecules count.

    Parameters
    ----------
    labels_dir
        Label store folder.
    mol_ids
        Training molecules (InChIKeys).

    Returns
    -------
    dict
        ``training_elements`` (sorted atomic numbers), ``training_ring_systems``
        (:func:`training_ring_systems`), ``max_heavy_atoms_in_data`` (int), ``n_molecules``
        found.

    Raises
    ------
    FileNotFoundError
        No label parts there, or none of the molecules in them.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from densnet_core import keys as K
    from densnet_core.store import part_files

    wanted = set(mol_ids)
    parts = part_files(labels_dir)
    if not parts:
        raise FileNotFoundError(f"no label parts in {labels_dir}")
    cols = [K.MOL_ID, K.SMILES, K.NUMBERS, K.STATUS]
    tables = [pq.read_table(p, columns=cols) for p in parts]
    rows = pa.concat_tables(tables, promote_options="default").to_pylist()
    rows = [r for r in rows if r[K.STATUS] == "ok" and r[K.MOL_ID] in wanted]
    if not rows:
        raise FileNotFoundError(f"none of the {len(wanted)} training molecules in {labels_dir}")
    return {
        "training_elements": sorted({int(z) for r in rows for z in r[K.NUMBERS] or ()}),
        "training_ring_systems": training_ring_systems(sorted({r[K.SMILES] for r in rows})),
        "max_heavy_atoms_in_data": max(
            sum(1 for z in r[K.NUMBERS] or () if int(z) > 1) for r in rows
        ),
        "n_molecules": len({r[K.MOL_ID] for r in rows}),
    }


_WARNED: set[str] = set()


def _find_labels_dir(value: str, base_dirs: Sequence[Path]) -> Path | None:
    path = Path(value)
    candidates = [path] if path.is_absolute() else [path, *(b / path for b in base_dirs)]
    return next((c for c in candidates if c.is_dir()), None)


def complete_domain(
    record: Mapping[str, Any], *, base_dirs: Sequence[str | os.PathLike[str]] = ()
) -> dict[str, Any]:
    """A model card or ensemble manifest with its training domain filled in where missing.

    ``training_ring_systems`` and ``max_heavy_atoms_in_data`` (and ``training_elements``)
    are taken from the record when present; otherwise they are derived with
    :func:`domain_from_label_store` from the label store the record names (``labels_dir``,
    or ``training_settings.labels_dir``; relative paths are tried against the working
    directory, then ``base_dirs``) for its ``training_inchikeys``. If that is impossible the
    fields stay missing — the ring and size checks are then skipped — and a warning says so
    once per record.

    Parameters
    ----------
    record
        ``model_card.json`` or ``ensemble.json`` as a dict (not modified).
    base_dirs
        Folders relative label-store paths may be relative to (e.g. the repository root).

    Returns
    -------
    dict
        A copy of ``record``, plus ``domain_source``: ``"recorded"``, ``"label store <path>"``
        or ``"incomplete: <why>"``.
    """
    out = dict(record)
    if "training_ring_systems" in out and "max_heavy_atoms_in_data" in out:
        out["domain_source"] = "recorded"
        return out
    ident = str(out.get("ensemble_id") or out.get("model_id") or "model")
    labels = out.get("labels_dir") or (out.get("training_settings") or {}).get("labels_dir")
    train_ids = list(out.get("training_inchikeys") or ())
    why = ""
    if not labels or not train_ids:
        why = "the card names no label store or no training molecules"
    else:
        found = _find_labels_dir(str(labels), [Path(b) for b in base_dirs])
        if found is None:
            why = f"label store {labels} not found"
        else:
            try:
                derived = domain_from_label_store(found, train_ids)
            except (OSError, ValueError, KeyError) as exc:
                why = f"cannot read the label store {found}: {exc}"
            else:
                for key in ("training_elements", "training_ring_systems"):
                    out.setdefault(key, derived[key])
                out.setdefault("max_heavy_atoms_in_data", derived["max_heavy_atoms_in_data"])
                out["domain_source"] = f"label store {found}"
                return out
    if ident not in _WARNED:
        _WARNED.add(ident)
        log.warning(
            "%s: no training ring systems / molecule sizes recorded and %s; the ring-system "
            "and size out-of-distribution checks are skipped (elements are still checked)",
            ident,
            why,
        )
    out["domain_source"] = f"incomplete: {why}"
    return out


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
    rings: Sequence[Sequence[str] | None] | None = None,
) -> list[str]:
    """Why each molecule is out of distribution ("" = in distribution).

    Parameters
    ----------
    smiles
        (B,) SMILES (ring systems; an unparsable or empty SMILES skips the ring check).
    numbers
        (B,) atomic numbers of each molecule, (N_b,) each.
    std_dipole_debye
        (B,) ensemble spread of |mu|, D (NaN = unknown, not checked).
    std_alpha_iso_au
        (B,) ensemble spread of alpha_iso, bohr^3.
    calibration
        :class:`OODCriteria`, or an ``ensemble.json`` dict.
    rings
        (B,) the molecules' ring systems when already known (the ``ring_systems`` column of
        the conformers table, :func:`ring_systems_of_mol`), None per molecule or overall to
        find them from the SMILES.

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
    given_rings = None if rings is None else list(rings)
    if given_rings is not None and len(given_rings) != len(smiles):
        raise ValueError("rings must have one entry per molecule")
    out: list[str] = []
    for b, smi in enumerate(smiles):
        why: list[str] = []
        unseen = sorted({int(z) for z in numbers[b]} - crit.training_elements)
        if unseen:
            why.append("element absent from training: " + ", ".join(_symbol(z) for z in unseen))
        known = crit.training_ring_systems
        mine: Sequence[str] | None = None
        if known is not None:
            given = None if given_rings is None else given_rings[b]
            mine = ring_systems(smi) if given is None and smi else given
        new_rings = [r for r in mine or () if known is not None and r not in known]
        if new_rings:
            why.append("ring system absent from training: " + ", ".join(new_rings))
        if crit.max_heavy_atoms is not None:
            heavy = sum(1 for z in numbers[b] if int(z) > 1)
            if heavy > crit.max_heavy_atoms:
                why.append(f"{heavy} heavy atoms > {crit.max_heavy_atoms} seen in training")
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
