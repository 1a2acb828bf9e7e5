"""Column names and data keys used across the package, with their shapes and units.

One place for every name that crosses a module or a file boundary (NequIP's ``_keys.py``
pattern). Units are part of the name; shapes are given in the comments. ``N`` is the number
of atoms of a conformer, ``M`` the number of auxiliary-basis functions.
"""

from __future__ import annotations

# --- identity --------------------------------------------------------------------------------
NAME = "name"  # str: the user's name for the input record (SMILES title, CSV name, SDF title)
SMILES = "smiles"  # str: canonical SMILES of the processed molecule (input SMILES if unparsable)
INPUT_SMILES = "input_smiles"  # str: the SMILES (or SDF record id) exactly as given
RECORD_INDEX = "record_index"  # int: 0-based position of the record in the input file
MOL_ID = "mol_id"  # str: InChIKey of the processed molecule, or "record-<sha1[:14]>" if none
CONFORMER_ID = "conformer_id"  # int: 0.. per molecule, lowest force-field energy first
CONFORMER_KEY = "conformer_key"  # str: sha1 of (numbers, rounded positions, charge, mult.)
CHARGE = "charge"  # int: total charge (e)
MULTIPLICITY = "multiplicity"  # int: 2S + 1
NUMBERS = "numbers"  # list<int> (N,): atomic numbers
POSITIONS_ANGSTROM = "positions_angstrom"  # list<list<float>> (N, 3): Cartesian coordinates, Å
MMFF_ENERGY_KCAL = "mmff_energy_kcal"  # float: force-field energy, kcal/mol (MMFF94 or UFF)
FORCE_FIELD = "force_field"  # str: "MMFF94", "UFF", or "none" (SDF kept as is)
FF_CONVERGED = "ff_converged"  # bool | None: force-field optimisation met RDKit's criteria
FRAGMENT_NOTE = "fragment_note"  # str: what was stripped (salts, solvents); "" if nothing
STEREO_NOTE = "stereo_note"  # str: unassigned stereocentres embedded at random; "" if none
N_HEAVY_ATOMS = "n_heavy_atoms"  # int
RING_SYSTEMS = "ring_systems"  # list<str>: ring-system keys (densnet_core.ood); None if unknown
INPUT_NOTE = "input_note"  # str: remarks on the input (generated name, 2D SDF embedded...); ""

# --- outcome ---------------------------------------------------------------------------------
STATUS = "status"  # str: "ok" or one of the statuses below
ERROR = "error"  # str: readable reason when status != "ok"; "" otherwise

STATUS_OK = "ok"
STATUS_INVALID_SMILES = "invalid_smiles"
STATUS_INVALID_INPUT = "invalid_input"
STATUS_UNSUPPORTED_ELEMENT = "unsupported_element"
STATUS_TOO_LARGE = "too_large"
STATUS_EMBEDDING_FAILED = "embedding_failed"
STATUS_SCF_NOT_CONVERGED = "scf_not_converged"
STATUS_QM_FAILED = "qm_failed"
STATUS_UNSUPPORTED_CHARGE = "unsupported_charge"
STATUS_UNSUPPORTED_MULTIPLICITY = "unsupported_multiplicity"
STATUS_PREDICTION_FAILED = "prediction_failed"

# --- labels (PySCF) --------------------------------------------------------------------------
LEVEL_OF_THEORY = "level_of_theory"  # str: e.g. "B3LYP/def2-SVPD DF grid3"
LEVEL_HASH = "level_hash"  # str: sha1[:16] of the level-of-theory settings
AUX_BASIS = "aux_basis"  # str: auxiliary basis the density is fitted in
ENERGY_HARTREE = "energy_hartree"  # float: total energy, Eh
# null in labels of a level with forces=False (density-only labels)
FORCES_HARTREE_PER_BOHR = "forces_hartree_per_bohr"  # list<list<float>> (N, 3): -dE/dR, Eh/a0
DIPOLE_AU = "dipole_au"  # list<float> (3,): e·a0, about the centre of nuclear charge
DIPOLE_DEBYE = "dipole_debye"  # float: |dipole|, D
# with RESPONSE_COEFFS: null in labels of a level with polarizability=False
POLARIZABILITY_AU = "polarizability_au"  # list<float> (9,): static alpha, row-major, a0^3
ALPHA_ISO_AU = "alpha_iso_au"  # float: trace(alpha) / 3, a0^3
N_ELECTRONS = "n_electrons"  # float: integral of the density, e
DENSITY_COEFFS = "density_coeffs"  # list<float> (M,): fitted density, PySCF aux-AO order
RESPONSE_COEFFS = "response_coeffs"  # list<float> (3*M,): d rho / d E_x,y,z, row-major (3, M)
FIT_ERROR_PERCENT = "fit_error_percent"  # float: 100 * int |rho_fit - rho_SCF| / N_e
SCF_CONVERGED = "scf_converged"  # bool
SCF_CYCLES = "scf_cycles"  # int: total SCF iterations over all attempts
SCF_STRATEGY = "scf_strategy"  # str: which fallback converged ("diis", "level_shift", "newton")
WALL_SECONDS = "wall_seconds"  # float: wall time of the whole label, s

# --- predictions -----------------------------------------------------------------------------
MODEL_ID = "model_id"  # str: name + short hash of the weights
ENERGY_HARTREE_PRED = "energy_hartree"  # float: predicted total energy, Eh (when available)
DIPOLE_DEBYE_STD = "dipole_debye_std"  # float: ensemble spread, D
ALPHA_ISO_AU_STD = "alpha_iso_au_std"  # float: ensemble spread, a0^3
OOD = "ood"  # bool: out of the training distribution
OOD_REASON = "ood_reason"  # str
