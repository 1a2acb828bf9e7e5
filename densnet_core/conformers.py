"""Stage 1: from input records (SMILES, SDF) to 3D conformers, one table row per conformer.

For each record:

1. parse (SMILES with RDKit; SDF molblocks with ``removeHs=False``);
2. keep the largest organic fragment (salts, solvents) and say what was removed;
3. charge = sum of formal charges, multiplicity = radical electrons + 1 (high spin);
4. reject unsupported elements and molecules above ``max_heavy_atoms``;
5. flag unassigned stereo elements (they are embedded as RDKit picks them);
6. embed with ETKDGv3 (fixed seed, random-coordinate fallback), optimise with MMFF94
   (UFF where MMFF has no parameters) to convergence (at most ``mmff_max_iters`` BFGS
   iterations; the ``ff_converged`` column says whether RDKit's criteria were met), prune
   near-duplicates by heavy-atom RMSD, keep the ``n_conformers`` lowest in energy,
   ``conformer_id`` 0 = lowest.

SDF records with 3D coordinates are used as they are (no re-embedding, ``force_field="none"``;
the MMFF94 single-point energy is reported when MMFF has parameters). 2D SDF records are
embedded from their connectivity, and the ``input_note`` column says so.

Nothing raises out of :func:`process_batch` for a problem of one record: that record gets a
row with ``status != "ok"`` and a readable ``error``. Coordinates are in Å and energies in
kcal/mol here (RDKit's units); the QM stages convert to atomic units.

Cost (one core, RDKit 2026.09; ChEMBL series shipped with RDKit, ~32 heavy atoms, one
conformer): ETKDGv3 on the heavy atoms ~21 ms, MMFF94 to convergence ~63 ms (~250 BFGS
iterations from an ETKDG geometry; even from a converged geometry displaced by 0.01 Å it takes
~140, so a better start saves little), parsing, identity and rows ~4 ms: ~90 ms per molecule.
The former budget of 200 iterations (RDKit's default) saves ~14 ms but leaves 90 % of these
molecules unconverged: p90 1.5 kcal/mol and 1.0 Å heavy-atom RMSD from the minimum, p90 0.9 D
(p99 3 D) in an MMFF-charge dipole, too much for a dipole screen. Only ``n_conformers``
conformers are embedded when one is asked for (``2 n``, at least ``n + 3``, otherwise, for
pruning); MMFF94 parameters are set up once per molecule, stereo perceived once.

Parallelism: RDKit holds the GIL while embedding, so molecules are spread over *processes*
(:mod:`densnet_core.conformer_pool`: :func:`process_records`, :func:`shared_pool`, re-exported
here); each worker handles a whole batch.
:func:`conformers_table` is the whole stage (input file → Parquet table) without Prefect; the
Prefect flow (``flows/conformers.py``) runs the same :func:`process_batch_dicts` in the same pool.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdDistGeom, rdForceFieldHelpers, rdMolAlign

from densnet_core import keys as K

# the process pools live in densnet_core.conformer_pool (no RDKit import there); re-exported
from densnet_core.conformer_pool import make_pool as make_pool
from densnet_core.conformer_pool import pool_batch_size as pool_batch_size
from densnet_core.conformer_pool import process_batch_in_pool as process_batch_in_pool
from densnet_core.conformer_pool import process_records as process_records
from densnet_core.conformer_pool import shared_pool as shared_pool
from densnet_core.conformer_pool import shutdown_shared_pools as shutdown_shared_pools
from densnet_core.inputs import InputRecord, as_record, read_records
from densnet_core.ood import ring_systems_of_mol

log = logging.getLogger(__name__)

DEFAULT_ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F", "P", "S", "Cl", "Br")
DEFAULT_SEED = 0xD5
#: BFGS iterations allowed per conformer. Enough for MMFF94 to converge on drug-like molecules
#: (all 1,005 ChEMBL-series and 4,720 NCI first_5K molecules do); converged ones stop early,
#: so the budget only bounds the rare slow case.
DEFAULT_MMFF_MAX_ITERS = 1000

#: extra (undeclared) column of the conformers table: remarks about the input record
INPUT_NOTE = K.INPUT_NOTE
#: bool: the force-field optimisation met RDKit's convergence criteria within
#: ``mmff_max_iters``; None when the geometry was not optimised (kept as an extra column)
FF_CONVERGED = K.FF_CONVERGED

_TIMESTAMP = re.compile(r"^\[\d\d:\d\d:\d\d\]\s*")


# --- identity --------------------------------------------------------------------------------
def conformer_key(
    numbers: Sequence[int],
    positions_angstrom: Sequence[Sequence[float]] | np.ndarray,
    charge: int,
    multiplicity: int,
) -> str:
    """Deduplication key of a conformer.

    Parameters
    ----------
    numbers
        Atomic numbers, shape (N,).
    positions_angstrom
        Cartesian coordinates, shape (N, 3), Å. Rounded to 1e-4 Å; ``-0.0`` and ``0.0`` agree.
    charge
        Total charge, e.
    multiplicity
        Spin multiplicity 2S + 1.

    Returns
    -------
    str
        The first 20 hex digits of the SHA-1 of the canonical text of the inputs.
    """
    pos = np.asarray(positions_angstrom, dtype=np.float64).reshape(-1, 3)
    pos = np.round(pos, 4) + 0.0  # + 0.0 turns -0.0 into 0.0
    text = ",".join(str(int(z)) for z in numbers)
    coords = ",".join(f"{v:.4f}" for v in pos.ravel())
    coords = coords.replace("-0.0000", "0.0000")
    payload = f"{text}|{coords}|{int(charge)}|{int(multiplicity)}"
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def fallback_mol_id(raw_text: str) -> str:
    """``record-<sha1(raw input text)[:14]>``: the id of a record without an InChIKey."""
    return "record-" + hashlib.sha1(raw_text.encode("utf-8", "replace")).hexdigest()[:14]


# --- rows ------------------------------------------------------------------------------------
def _base_row(record: InputRecord) -> dict[str, Any]:
    """A row with every declared column at its 'nothing computed' value."""
    input_smiles = record.smiles if record.smiles is not None else record.name
    return {
        K.RECORD_INDEX: record.record_index,
        K.NAME: record.name,
        K.SMILES: record.smiles or "",
        K.MOL_ID: fallback_mol_id(record.raw_text),
        K.CONFORMER_ID: 0,
        K.CONFORMER_KEY: "",
        K.CHARGE: 0,
        K.MULTIPLICITY: 1,
        K.NUMBERS: [],
        K.POSITIONS_ANGSTROM: [],
        K.INPUT_SMILES: input_smiles,
        K.N_HEAVY_ATOMS: 0,
        K.RING_SYSTEMS: None,
        K.MMFF_ENERGY_KCAL: math.nan,
        K.FORCE_FIELD: "none",
        K.FRAGMENT_NOTE: "",
        K.STEREO_NOTE: "",
        K.STATUS: K.STATUS_OK,
        K.ERROR: "",
        INPUT_NOTE: record.note,
        FF_CONVERGED: None,
    }


def _fail(row: dict[str, Any], status: str, error: str) -> list[dict[str, Any]]:
    row[K.STATUS] = status
    row[K.ERROR] = error
    return [row]


def _join_notes(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _clean_log(messages: str) -> str:
    """RDKit's captured log → one readable line (timestamps and echo lines removed)."""
    lines = []
    for line in messages.splitlines():
        line = _TIMESTAMP.sub("", line).strip()
        line = line.removeprefix("SMILES Parse Error:").strip()
        if not line or line.startswith("check for mistakes") or set(line) <= {"~", "^"}:
            continue
        lines.append(line)
    return lines[0] if lines else ""


# --- chemistry helpers -----------------------------------------------------------------------
def _parse_smiles(smiles: str) -> tuple[Chem.Mol | None, str]:
    """Parse and sanitise; returns (mol, reason) with mol None and a reason on failure."""
    if not smiles.strip():
        return None, "empty SMILES"
    with rdBase.CaptureErrorLog() as capture:
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None, _clean_log(capture.messages) or "RDKit could not parse it"
    if mol.GetNumAtoms() == 0:
        return None, "no atoms"
    return mol, ""


def _fragment_smiles(frag: Chem.Mol) -> str:
    try:
        return Chem.MolToSmiles(Chem.RemoveHs(frag, sanitize=False))
    except Exception:
        return Chem.MolToSmiles(frag)


def keep_largest_fragment(mol: Chem.Mol) -> tuple[Chem.Mol, str]:
    """Keep the largest organic fragment of a salt or mixture.

    Fragments containing carbon are preferred; among them the one with the most heavy atoms
    (then most atoms, then first in the input) is kept. Conformers are kept with the fragment.

    Returns
    -------
    (Chem.Mol, str)
        The kept fragment and a note of what was removed ("" for a single fragment).
    """
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    if len(frags) == 1:
        return mol, ""

    def rank(i: int) -> tuple[int, int, int, int]:
        f = frags[i]
        has_carbon = any(a.GetAtomicNum() == 6 for a in f.GetAtoms())
        return (int(has_carbon), f.GetNumHeavyAtoms(), f.GetNumAtoms(), -i)

    best = max(range(len(frags)), key=rank)
    removed = Counter(_fragment_smiles(frags[i]) for i in range(len(frags)) if i != best)
    text = ", ".join(s if c == 1 else f"{s} x{c}" for s, c in removed.items())
    kept = Chem.Mol(frags[best])
    kept.UpdatePropertyCache(strict=False)
    return kept, f"kept largest fragment; removed: {text}"


def atoms_of(mol: Chem.Mol) -> list[Chem.Atom]:
    """The atoms of ``mol`` in order (by index: ~2x faster than iterating ``GetAtoms()``,
    whose sequence wrapper recounts the atoms for every item)."""
    return [mol.GetAtomWithIdx(i) for i in range(mol.GetNumAtoms())]


def charge_and_multiplicity(mol: Chem.Mol) -> tuple[int, int]:
    """Total formal charge (e) and spin multiplicity (radical electrons + 1, high spin)."""
    charge = radicals = 0
    for a in atoms_of(mol):  # one pass (Python-level atom iteration is the cost here)
        charge += a.GetFormalCharge()
        radicals += a.GetNumRadicalElectrons()
    return int(charge), int(radicals) + 1


def unsupported_elements(mol: Chem.Mol, supported: Iterable[str]) -> list[str]:
    """Element symbols of ``mol`` not in ``supported``, in order of first appearance."""
    allowed = set(supported)
    seen: dict[str, None] = {}
    for atom in atoms_of(mol):
        symbol = atom.GetSymbol()
        if symbol not in allowed:
            seen[symbol] = None
    return list(seen)


def _potential_stereo(mol: Chem.Mol) -> list[Any] | None:
    """RDKit's stereo perception of ``mol`` (run once per record), or None if it fails."""
    try:
        return list(Chem.FindPotentialStereo(mol))
    except Exception:
        return None


def stereo_note(mol: Chem.Mol, infos: Sequence[Any] | None = None) -> str:
    """Describe the unassigned stereocentres and double bonds of ``mol`` ("" if none).

    ``infos`` is ``Chem.FindPotentialStereo(mol)`` when the caller has it already.
    """
    if infos is None:
        infos = _potential_stereo(mol)
    if infos is None:
        return ""
    atoms = [
        int(si.centeredOn)
        for si in infos
        if si.type == Chem.StereoType.Atom_Tetrahedral
        and si.specified == Chem.StereoSpecified.Unspecified
    ]
    bonds = [
        int(si.centeredOn)
        for si in infos
        if si.type == Chem.StereoType.Bond_Double
        and si.specified == Chem.StereoSpecified.Unspecified
    ]
    parts = []
    if atoms:
        noun = "stereocentre" if len(atoms) == 1 else "stereocentres"
        label = "atom" if len(atoms) == 1 else "atoms"
        parts.append(
            f"{len(atoms)} unassigned {noun} embedded at random: "
            f"{label} {', '.join(map(str, atoms))}"
        )
    if bonds:
        noun = "double bond" if len(bonds) == 1 else "double bonds"
        label = "bond" if len(bonds) == 1 else "bonds"
        parts.append(
            f"{len(bonds)} unassigned {noun} embedded at random: "
            f"{label} {', '.join(map(str, bonds))}"
        )
    return "; ".join(parts)


def _inchikey(mol: Chem.Mol) -> str:
    try:
        with rdBase.CaptureErrorLog():
            key = Chem.MolToInchiKey(mol)
    except Exception:
        return ""
    return key or ""


def _identity(row: dict[str, Any], mol: Chem.Mol) -> None:
    """Fill smiles, mol_id, charge, multiplicity, n_heavy_atoms and ring_systems from ``mol``
    (no Hs). The ring systems are those the prediction's applicability check
    (:func:`densnet_core.ood.ood_reasons`) would otherwise find by parsing the SMILES again."""
    try:
        row[K.SMILES] = Chem.MolToSmiles(mol)
    except Exception:
        pass
    try:
        row[K.RING_SYSTEMS] = list(ring_systems_of_mol(mol))
    except Exception:
        row[K.RING_SYSTEMS] = None
    key = _inchikey(mol)
    if key:
        row[K.MOL_ID] = key
    row[K.CHARGE], row[K.MULTIPLICITY] = charge_and_multiplicity(mol)
    row[K.N_HEAVY_ATOMS] = int(mol.GetNumHeavyAtoms())


_CHIRAL_CHECKS = ("CHECK_TETRAHEDRAL_CENTERS", "CHECK_CHIRAL_CENTERS", "CHECK_CHIRAL_CENTERS2")


def _failure_causes(params: rdDistGeom.EmbedParameters) -> list[tuple[int, str]]:
    names = rdDistGeom.EmbedFailureCauses.names
    counts = params.GetFailureCounts()
    return sorted(
        ((int(c), name) for name, c in zip(names, counts, strict=False) if c), reverse=True
    )


#: RDKit's macrocycle torsion patterns match ring atoms of rings with >= 9 atoms (``r{9-}``);
#: molecules whose rings are all smaller than this get the macrocycle options switched off
#: (identical coordinates, less set-up; see :func:`etkdg_v3_params`)
MACROCYCLE_MIN_RING = 8


def etkdg_v3_params(mol: Chem.Mol, seed: int) -> rdDistGeom.EmbedParameters:
    """ETKDGv3 parameters for ``mol``: fixed seed, one thread.

    For molecules without a ring of :data:`MACROCYCLE_MIN_RING` or more atoms the macrocycle
    options (``useMacrocycleTorsions``, ``useMacrocycle14config``) are turned off: they only
    act on macrocycles, but looking for macrocycle torsion patterns costs ~2 ms per drug-like
    molecule (600 ChEMBL-series and NCI molecules: identical coordinates, ETKDG 14.3 → 12.1 ms
    per molecule).
    """
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = int(seed)
    params.numThreads = 1
    if all(len(ring) < MACROCYCLE_MIN_RING for ring in Chem.GetSymmSSSR(mol)):
        params.useMacrocycleTorsions = False
        params.useMacrocycle14config = False
    return params


def _embed(
    mol_h: Chem.Mol, n_embed: int, seed: int, *, fallback: bool = True
) -> tuple[list[int], str]:
    """ETKDGv3 embedding with a random-coordinate fallback. Returns (conformer ids, reason).

    The fallback is skipped when many attempts failed on the chirality checks: random
    starting coordinates do not make an impossible stereoisomer possible (and take long).
    """
    params = etkdg_v3_params(mol_h, seed)
    params.clearConfs = True
    params.trackFailures = fallback
    cids = list(rdDistGeom.EmbedMultipleConfs(mol_h, n_embed, params))
    if cids or not fallback:
        return cids, ""
    causes = _failure_causes(params)
    chiral = sum(c for c, name in causes if name in _CHIRAL_CHECKS)
    if not causes or chiral < 0.25 * sum(c for c, _ in causes):
        params = etkdg_v3_params(mol_h, seed)
        params.useRandomCoords = True
        params.trackFailures = True
        cids = list(rdDistGeom.EmbedMultipleConfs(mol_h, n_embed, params))
        if cids:
            return cids, ""
        causes = _failure_causes(params)
        reason = "ETKDGv3 found no 3D embedding (also with random starting coordinates)"
    else:
        reason = (
            "ETKDGv3 found no 3D embedding with the specified stereochemistry "
            "(is that stereoisomer geometrically possible?)"
        )
    detail = ", ".join(f"{name} x{c}" for c, name in causes[:3])
    return [], f"{reason}; failed checks: {detail}" if detail else reason


def _specified_stereo(
    mol: Chem.Mol, infos: Sequence[Any] | None = None
) -> tuple[set[int], set[int]]:
    """Indices of the atoms and double bonds whose stereo the input specifies."""
    atoms: set[int] = set()
    bonds: set[int] = set()
    if infos is None:
        infos = list(Chem.FindPotentialStereo(mol))
    for si in infos:
        if si.specified != Chem.StereoSpecified.Specified:
            continue
        if si.type == Chem.StereoType.Atom_Tetrahedral:
            atoms.add(int(si.centeredOn))
        elif si.type == Chem.StereoType.Bond_Double:
            bonds.add(int(si.centeredOn))
    return atoms, bonds


def _stereo_kept(mol: Chem.Mol, mol_h: Chem.Mol, stereo: tuple[set[int], set[int]]) -> bool:
    """True if every conformer of ``mol_h`` has the stereo ``mol`` specifies.

    ``mol_h`` is ``mol`` with hydrogens appended (same heavy-atom indices).
    """
    atoms, bonds = stereo
    if not atoms and not bonds:
        return True
    expected = Chem.MolToSmiles(mol)
    heavy = Chem.RemoveHs(mol_h, sanitize=False)
    for conf in heavy.GetConformers():
        m3 = Chem.Mol(heavy, confId=conf.GetId())
        Chem.AssignStereochemistryFrom3D(m3, confId=conf.GetId())
        for atom in m3.GetAtoms():
            if atom.GetIdx() not in atoms:
                atom.SetChiralTag(Chem.ChiralType.CHI_UNSPECIFIED)
        for bond in m3.GetBonds():
            if bond.GetIdx() not in bonds and bond.GetBondType() == Chem.BondType.DOUBLE:
                bond.SetStereo(Chem.BondStereo.STEREONONE)
        Chem.AssignStereochemistry(m3, cleanIt=True, force=True)
        if Chem.MolToSmiles(m3) != expected:
            return False
    return True


def _optimise(mol_h: Chem.Mol, max_iters: int) -> tuple[str, list[tuple[int, float]], str]:
    """Optimise every conformer in place.

    Returns
    -------
    (str, list of (int, float), str)
        The force field ("MMFF94", "UFF" or "none"), per conformer ``(not_converged,
        energy_kcal)`` (``not_converged`` is 1 when ``max_iters`` BFGS iterations did not meet
        RDKit's convergence criteria), and a note ("" when MMFF94 was used).
    """
    # MMFF94 atom typing and parameter lookup once per molecule (``MMFFHasAllMoleculeParams``
    # followed by ``MMFFOptimizeMoleculeConfs`` would do it twice).
    props = rdForceFieldHelpers.MMFFGetMoleculeProperties(mol_h)
    if props is not None:
        results = []
        for conf in mol_h.GetConformers():
            ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(mol_h, props, confId=conf.GetId())
            not_converged = ff.Minimize(maxIts=max_iters)
            results.append((int(not_converged), float(ff.CalcEnergy())))
        return "MMFF94", results, ""
    if rdForceFieldHelpers.UFFHasAllMoleculeParams(mol_h):
        res = rdForceFieldHelpers.UFFOptimizeMoleculeConfs(mol_h, numThreads=1, maxIters=max_iters)
        return "UFF", [(int(c), float(e)) for c, e in res], "no MMFF94 parameters; used UFF"
    n = mol_h.GetNumConformers()
    return "none", [(0, math.nan)] * n, "no MMFF94 or UFF parameters; geometry not optimised"


def _select(
    mol_h: Chem.Mol, energies: list[float], n_keep: int, rms_prune_angstrom: float
) -> list[int]:
    """Conformer indices sorted by energy, near-duplicates (heavy-atom RMSD) pruned."""
    order = sorted(range(len(energies)), key=lambda i: (math.isnan(energies[i]), energies[i]))
    if n_keep <= 1 or len(order) <= 1:
        return order[:n_keep]
    heavy = Chem.RemoveHs(mol_h, sanitize=False)
    conf_ids = [c.GetId() for c in mol_h.GetConformers()]
    kept: list[int] = []
    for i in order:
        if rms_prune_angstrom > 0 and any(
            rdMolAlign.GetBestRMS(heavy, heavy, conf_ids[i], conf_ids[j]) < rms_prune_angstrom
            for j in kept
        ):
            continue
        kept.append(i)
        if len(kept) == n_keep:
            break
    return kept


def _conformer_rows(
    row: dict[str, Any],
    mol_h: Chem.Mol,
    picks: list[int],
    energies: list[float],
    force_field: str,
    converged: Sequence[bool | None] | None = None,
) -> list[dict[str, Any]]:
    numbers = [int(a.GetAtomicNum()) for a in atoms_of(mol_h)]
    confs = list(mol_h.GetConformers())
    rows = []
    for new_id, i in enumerate(picks):
        pos = confs[i].GetPositions()
        out = dict(row)
        out[K.CONFORMER_ID] = new_id
        out[K.NUMBERS] = numbers
        out[K.POSITIONS_ANGSTROM] = pos.tolist()
        out[K.MMFF_ENERGY_KCAL] = energies[i]
        out[K.FORCE_FIELD] = force_field
        out[FF_CONVERGED] = None if converged is None else converged[i]
        out[K.CONFORMER_KEY] = conformer_key(numbers, pos, row[K.CHARGE], row[K.MULTIPLICITY])
        rows.append(out)
    return rows


def _check_molecule(
    row: dict[str, Any],
    mol: Chem.Mol,
    supported_elements: Sequence[str],
    max_heavy_atoms: int,
) -> list[dict[str, Any]] | None:
    """Element and size checks; returns failure rows, or None when the molecule is fine."""
    bad = unsupported_elements(mol, supported_elements)
    if bad:
        return _fail(
            row,
            K.STATUS_UNSUPPORTED_ELEMENT,
            f"unsupported element(s): {', '.join(bad)} (supported: {' '.join(supported_elements)})",
        )
    n_heavy = mol.GetNumHeavyAtoms()
    if n_heavy > max_heavy_atoms:
        return _fail(
            row,
            K.STATUS_TOO_LARGE,
            f"{n_heavy} heavy atoms (limit {max_heavy_atoms})",
        )
    return None


def _embed_and_optimise(
    row: dict[str, Any],
    mol: Chem.Mol,
    *,
    n_conformers: int,
    seed: int,
    rms_prune_angstrom: float,
    mmff_max_iters: int,
    stereo_infos: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    # one conformer asked for: embed one (nothing to prune or rank); else 2n (at least n + 3)
    # so that RMSD pruning still leaves n distinct ones
    n_embed = 1 if n_conformers <= 1 else max(2 * n_conformers, n_conformers + 3)
    # Fast path: embed the heavy atoms (about half the cost), place the hydrogens
    # geometrically, and let the force field relax everything. If that fails or loses a
    # stereo element the input specifies, embed with explicit hydrogens as usual.
    stereo = _specified_stereo(mol, stereo_infos)
    optimised = None
    if mol.GetNumAtoms() > 1:
        heavy = Chem.Mol(mol)
        cids, _ = _embed(heavy, n_embed, seed, fallback=False)
        if cids:
            mol_h = Chem.AddHs(heavy, addCoords=True)
            optimised = (mol_h, *_optimise(mol_h, mmff_max_iters))
            if not _stereo_kept(mol, mol_h, stereo):
                optimised = None
    if optimised is None:
        mol_h = Chem.AddHs(mol)
        cids, reason = _embed(mol_h, n_embed, seed)
        if not cids:
            return _fail(row, K.STATUS_EMBEDDING_FAILED, reason)
        optimised = (mol_h, *_optimise(mol_h, mmff_max_iters))
        if not _stereo_kept(mol, mol_h, stereo):
            return _fail(
                row,
                K.STATUS_EMBEDDING_FAILED,
                "the optimised geometry does not have the stereochemistry the SMILES specifies "
                "(is that stereoisomer geometrically possible?)",
            )
    mol_h, force_field, results, ff_note = optimised
    energies = [e for _, e in results]
    converged = [None if force_field == "none" else not nc for nc, _ in results]
    picks = _select(mol_h, energies, n_conformers, rms_prune_angstrom)
    if ff_note:
        row[INPUT_NOTE] = _join_notes(row[INPUT_NOTE], ff_note)
    return _conformer_rows(row, mol_h, picks, energies, force_field, converged)


# --- one record ------------------------------------------------------------------------------
def generate_conformers(
    record: InputRecord | Mapping[str, Any] | str,
    *,
    n_conformers: int = 1,
    seed: int = DEFAULT_SEED,
    max_heavy_atoms: int = 100,
    supported_elements: Sequence[str] = DEFAULT_ELEMENTS,
    rms_prune_angstrom: float = 0.5,
    mmff_max_iters: int = DEFAULT_MMFF_MAX_ITERS,
    sdf_energy: bool = True,
) -> list[dict[str, Any]]:
    """Conformers-table rows for one input record.

    Parameters
    ----------
    record
        An :class:`~densnet_core.inputs.InputRecord`, its dict form, or a SMILES string.
    n_conformers
        Conformers to keep (fewer when pruning leaves fewer distinct ones).
    seed
        ETKDG random seed; the same record and seed give the same conformers.
    max_heavy_atoms
        Larger molecules get ``status="too_large"``.
    supported_elements
        Element symbols allowed in the kept fragment.
    rms_prune_angstrom
        Conformers within this heavy-atom RMSD (Å, after optimal alignment with symmetry) of
        a lower-energy one are dropped.
    mmff_max_iters
        At most this many BFGS iterations per conformer (MMFF94 or UFF); the
        ``ff_converged`` column says whether RDKit's convergence criteria were met.
    sdf_energy
        Report the MMFF94 single-point energy of 3D SDF coordinates used as given (~1.3 ms
        per drug-like molecule, a third of the record's cost). ``densnet predict`` turns it
        off: an SDF record is a record of its own, so the energy weighs no conformer against
        another and is never used there.

    Returns
    -------
    list[dict]
        At least one row holding every column of the "conformers" schema (plus
        ``input_note``); ``positions_angstrom`` has shape (N, 3) in Å, ``mmff_energy_kcal``
        is in kcal/mol, ``ff_converged`` is a bool (None when not optimised). Failed records
        give one row with empty ``numbers``/``positions``.
    """
    rec = as_record(record)
    if rec.rows is not None:
        return _passthrough(rec)
    row = _base_row(rec)
    opts = {
        "n_conformers": max(1, int(n_conformers)),
        "seed": int(seed),
        "rms_prune_angstrom": float(rms_prune_angstrom),
        "mmff_max_iters": int(mmff_max_iters),
    }
    if rec.error:
        return _fail(row, K.STATUS_INVALID_INPUT, rec.error)
    if rec.molblock is not None:
        return _from_molblock(rec, row, supported_elements, max_heavy_atoms, opts, sdf_energy)
    smiles = rec.smiles or ""
    mol, reason = _parse_smiles(smiles)
    if mol is None:
        return _fail(row, K.STATUS_INVALID_SMILES, f"could not parse SMILES {smiles!r}: {reason}")
    mol, row[K.FRAGMENT_NOTE] = keep_largest_fragment(mol)
    _identity(row, mol)
    failed = _check_molecule(row, mol, supported_elements, max_heavy_atoms)
    if failed:
        return failed
    infos = _potential_stereo(mol)
    row[K.STEREO_NOTE] = stereo_note(mol, infos)
    return _embed_and_optimise(row, mol, stereo_infos=infos, **opts)


def _from_molblock(
    rec: InputRecord,
    row: dict[str, Any],
    supported_elements: Sequence[str],
    max_heavy_atoms: int,
    opts: dict[str, Any],
    sdf_energy: bool = True,
) -> list[dict[str, Any]]:
    assert rec.molblock is not None
    with rdBase.CaptureErrorLog() as capture:
        mol = Chem.MolFromMolBlock(rec.molblock, sanitize=True, removeHs=False)
    if mol is None:
        reason = _clean_log(capture.messages) or "RDKit could not read it"
        return _fail(row, K.STATUS_INVALID_INPUT, f"could not read SDF record: {reason}")
    if mol.GetNumAtoms() == 0:
        return _fail(row, K.STATUS_INVALID_INPUT, "SDF record has no atoms")
    mol, row[K.FRAGMENT_NOTE] = keep_largest_fragment(mol)
    no_h = Chem.RemoveHs(mol, sanitize=False)
    _identity(row, no_h)
    row[K.INPUT_SMILES] = row[K.SMILES]
    failed = _check_molecule(row, mol, supported_elements, max_heavy_atoms)
    if failed:
        return failed
    if mol.GetNumConformers() == 0:
        return _fail(row, K.STATUS_INVALID_INPUT, "SDF record has no coordinates")
    conf = mol.GetConformer()
    pos = conf.GetPositions()
    if mol.GetNumAtoms() > 1 and not np.any(np.abs(pos) > 1e-8):
        return _fail(
            row, K.STATUS_INVALID_INPUT, "SDF record has no coordinates (all atoms at the origin)"
        )
    if not conf.Is3D():
        # 2D drawing: embed from the connectivity (stereo from the wedges)
        row[INPUT_NOTE] = _join_notes(
            row[INPUT_NOTE], "SDF record is 2D; embedded from its connectivity"
        )
        heavy = Chem.RemoveHs(mol)
        infos = _potential_stereo(heavy)
        row[K.STEREO_NOTE] = stereo_note(heavy, infos)
        return _embed_and_optimise(row, heavy, stereo_infos=infos, **opts)
    n_implicit = mol.GetNumAtoms(onlyExplicit=False) - mol.GetNumAtoms()
    if n_implicit:
        mol = Chem.AddHs(mol, addCoords=True)
        row[INPUT_NOTE] = _join_notes(
            row[INPUT_NOTE], f"added {n_implicit} hydrogens with computed coordinates"
        )
    energy = math.nan
    props = None
    if sdf_energy:  # None: no MMFF94 parameters
        props = rdForceFieldHelpers.MMFFGetMoleculeProperties(mol)
    if props is not None:
        ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(mol, props)
        energy = float(ff.CalcEnergy())
        row[INPUT_NOTE] = _join_notes(
            row[INPUT_NOTE], "coordinates used as given; MMFF94 single-point energy"
        )
    else:
        row[INPUT_NOTE] = _join_notes(row[INPUT_NOTE], "coordinates used as given")
    return _conformer_rows(row, mol, [0], [energy], "none")


def _passthrough(rec: InputRecord) -> list[dict[str, Any]]:
    """Rows of a conformers-table input, re-emitted (record_index renumbered)."""
    assert rec.rows is not None
    template = _base_row(rec)
    out = []
    for r in rec.rows:
        row = dict(template)
        row.update(r)
        row[K.RECORD_INDEX] = rec.record_index
        out.append(row)
    return out


# --- batches ---------------------------------------------------------------------------------
def process_batch(
    records: Iterable[InputRecord | Mapping[str, Any] | str], **options: Any
) -> list[dict[str, Any]]:
    """Conformers-table rows for a batch of records, in input order.

    Never raises for a problem of one record: an unexpected exception becomes a row with
    ``status="embedding_failed"`` and ``error="<ExceptionType>: <message>"``. RDKit's log
    output is silenced while the batch runs.

    Parameters
    ----------
    records
        Input records (or their dict forms, or SMILES strings).
    **options
        Keyword arguments of :func:`generate_conformers`.

    Returns
    -------
    list[dict]
        Rows ordered by input order, then ``conformer_id``.
    """
    rows: list[dict[str, Any]] = []
    with rdBase.BlockLogs():
        for i, item in enumerate(records):
            rec = as_record(item)
            if isinstance(item, str):
                rec = InputRecord(record_index=i, name=f"record-{i + 1}", smiles=item)
            try:
                rows.extend(generate_conformers(rec, **options))
            except Exception as exc:
                log.debug("record %d failed", rec.record_index, exc_info=True)
                rows.extend(
                    _fail(_base_row(rec), K.STATUS_EMBEDDING_FAILED, f"{type(exc).__name__}: {exc}")
                )
    return rows


def process_batch_dicts(
    records: Sequence[Mapping[str, Any]], options: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """:func:`process_batch` on plain-dict records (the form sent to worker processes)."""
    return process_batch([InputRecord.from_dict(r) for r in records], **dict(options))


def conformers_table(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    workers: int = 1,
    batch_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The whole conformer stage without Prefect: input file → conformers table.

    The same work as ``flows/conformers.py`` (same batches function, same pool), in this
    process: what ``densnet conformers`` runs by default.

    Parameters
    ----------
    input_path
        ``.smi``/``.csv``/``.sdf`` file or a conformers table
        (:func:`~densnet_core.inputs.read_records`).
    output_path
        Destination Parquet file (conformers schema), written atomically.
    workers
        Worker processes (1 = in this process).
    batch_size
        Records per batch (default :func:`pool_batch_size`).
    on_progress
        Called as ``on_progress(records_done, records_total)`` at the start and after each
        batch.
    **options
        Keyword arguments of :func:`generate_conformers`.

    Returns
    -------
    dict
        ``input``, ``output``, ``n_records``, ``n_rows``, ``status_counts`` (records per
        status), ``seconds``, ``records_per_second``, ``workers`` (as the flow returns).

    Raises
    ------
    densnet_core.inputs.InputFileError
        If the input file cannot be read at all.
    """
    start = time.perf_counter()
    if workers > 1:
        shared_pool(workers, warm=True)  # worker start-up overlaps with reading the input
    records = read_records(input_path)
    total = len(records)
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(done, total)

    if on_progress:
        on_progress(0, total)
    # the table writer (pandas, pyarrow: ~1 s of imports) loads while the workers compute
    loader = threading.Thread(
        target=importlib.import_module, args=("densnet_core.store",), daemon=True
    )
    loader.start()
    rows = process_records(
        records, workers=workers, batch_size=batch_size, on_progress=progress, **options
    )
    loader.join()
    from densnet_core import store

    out = store.write_table(rows, output_path, "conformers")
    seconds = time.perf_counter() - start
    return {
        "input": str(input_path),
        "output": str(out),
        "n_records": total,
        "n_rows": len(rows),
        "status_counts": status_counts(rows),
        "seconds": seconds,
        "records_per_second": total / seconds if seconds > 0 else 0.0,
        "workers": workers,
    }


def failed_rows(
    records: Iterable[InputRecord | Mapping[str, Any]], status: str, error: str
) -> list[dict[str, Any]]:
    """One failure row per record (every declared column present)."""
    return [_fail(_base_row(as_record(r)), status, error)[0] for r in records]


def status_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Number of *records* per status (a record counts once, by its first row)."""
    seen: dict[int, str] = {}
    for row in rows:
        seen.setdefault(int(row[K.RECORD_INDEX]), str(row[K.STATUS]))
    return dict(Counter(seen.values()).most_common())
