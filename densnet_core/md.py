"""Molecular dynamics on the DenSNet potential: Langevin equilibration, then NVE production.

:func:`run_md` drives ASE's integrators with :class:`~densnet_core.calculator.DenSNetCalculator`
(or any ASE calculator that gives energy, forces and dipole) and writes to ``out_dir``:

``trajectory.xyz``
    Extended XYZ, one frame every ``trajectory_interval`` steps (both phases; the frame's
    ``info`` has ``step``, ``time_fs``, ``phase``, and the energy/forces/dipole of the
    calculator, eV, eV/Å, e·Å).
``timeseries.parquet``
    One row every ``sample_interval`` steps: ``step``, ``phase`` ("equilibration" or
    "production"), ``time_fs`` (0 at the start of production; negative during
    equilibration), ``potential_energy_ev``, ``kinetic_energy_ev``, ``total_energy_ev``,
    ``temperature_K``, ``dipole_au`` (3, e·bohr, from the predicted density). Arrow metadata
    ``schema_version`` = "1", ``table`` = "md_timeseries".
``checkpoint.npz`` + ``checkpoint.json``
    Positions, momenta, step, phase, the Langevin RNG state, the byte length of the trajectory
    file and the settings: a killed run, restarted with the same command, truncates the
    trajectory to that length and continues from the checkpointed step (steps since the last
    checkpoint are recomputed). Every file is written atomically
    (:func:`densnet_core.store.atomic_file`), the checkpoint last. A run may be extended: the
    same settings with more production ``steps`` continue from the checkpoint, and
    ``until_step`` stops a run early at a checkpoint (the Prefect flow runs MD in such
    segments).
``summary.json``
    Settings, timings (steps/s), energy drift of the NVE phase (eV/atom/ps), ``nve_start``
    (the momentum scaling that set the NVE energy to the canonical mean, see
    :attr:`MDSettings.nve_energy`), written at the end.

Units at this edge are ASE's (eV, Å, fs via ``ase.units``); the time series also keeps the
dipole in atomic units like the rest of the project.

Input geometries (:func:`read_structure`): a SMILES string (lowest MMFF94 conformer of
:func:`densnet_core.conformers.generate_conformers`), a ``.smi`` file (first record), an
``.sdf``/``.mol`` file (first record, 3D coordinates as they are, hydrogens kept) or an
``.xyz``/``.extxyz`` file (first frame).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from densnet_core.store import atomic_file, write_parquet_atomic
from densnet_core.units import BOHR_PER_ANGSTROM

__all__ = [
    "MIN_IR_SAMPLES",
    "REFERENCE_FILE",
    "TIMESERIES_FILE",
    "TRAJECTORY_FILE",
    "MDSettings",
    "MDUnstableError",
    "RelaxationError",
    "harmonic_reference_cached",
    "ir_of_run",
    "read_checkpoint_state",
    "read_structure",
    "read_timeseries",
    "relax_on_model",
    "resume_step",
    "run_md",
]

TRAJECTORY_FILE = "trajectory.xyz"
TIMESERIES_FILE = "timeseries.parquet"
CHECKPOINT_NPZ = "checkpoint.npz"
CHECKPOINT_JSON = "checkpoint.json"
SUMMARY_FILE = "summary.json"
#: BFGS relaxation of the start geometry on the model: fmax (eV/Å), steps, failure threshold
RELAX_FMAX_EV_PER_A = 0.05
RELAX_MAX_STEPS = 300
RELAX_FAIL_FORCE_EV_PER_A = 50.0
#: fewest production samples an IR spectrum is computed from
MIN_IR_SAMPLES = 64
TIMESERIES_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("phase", pa.string()),
        ("time_fs", pa.float64()),
        ("potential_energy_ev", pa.float64()),
        ("kinetic_energy_ev", pa.float64()),
        ("total_energy_ev", pa.float64()),
        ("temperature_K", pa.float64()),
        ("dipole_au", pa.list_(pa.float64())),
    ],
    metadata={b"schema_version": b"1", b"table": b"md_timeseries"},
)


class MDUnstableError(RuntimeError):
    """The trajectory blew up (non-finite energy or forces, or a runaway temperature)."""


class RelaxationError(RuntimeError):
    """Relaxing the start geometry on the model blew up (forces not finite or too large)."""


@dataclass(frozen=True)
class MDSettings:
    """What a run does (stored in the checkpoint: a resumed run must use the same settings).

    Attributes
    ----------
    temperature_K
        Langevin target temperature and initial Maxwell-Boltzmann temperature, K.
    timestep_fs
        Integration time step, fs.
    steps
        NVE production steps.
    equilibration_steps
        Langevin steps before production.
    friction_per_fs
        Langevin friction, 1/fs.
    sample_interval
        Steps between time-series rows.
    trajectory_interval
        Steps between trajectory frames.
    checkpoint_interval
        Steps between checkpoints.
    seed
        Seeds the initial velocities and the Langevin noise.
    nve_energy
        Total energy of the NVE production. ``"canonical"``: at the switch the momenta are
        scaled so that the total energy is the canonical mean at ``temperature_K``, estimated
        as the mean potential energy of the second half of the equilibration plus the mean
        kinetic energy (3N - 3)/2 k_B T (for a molecule of a few atoms the energy of a single
        Langevin snapshot scatters by ~sqrt(2/(3N)) of its thermal part, so without this the
        production temperature of ethanol lands anywhere in ~300 ± 70 K); ``"as_is"``: the
        last Langevin state unchanged.
    """

    temperature_K: float = 300.0
    timestep_fs: float = 0.5
    steps: int = 4000
    equilibration_steps: int = 1000
    friction_per_fs: float = 0.01
    sample_interval: int = 1
    trajectory_interval: int = 10
    checkpoint_interval: int = 200
    seed: int = 0
    nve_energy: str = "canonical"

    def __post_init__(self) -> None:
        if self.nve_energy not in NVE_ENERGY_MODES:
            raise ValueError(
                f"nve_energy must be one of {NVE_ENERGY_MODES}, got {self.nve_energy!r}"
            )


#: choices of :attr:`MDSettings.nve_energy`
NVE_ENERGY_MODES = ("canonical", "as_is")


# ------------------------------------------------------------------------------------------
# Input
# ------------------------------------------------------------------------------------------
def read_structure(text: str | os.PathLike[str]) -> Any:
    """An ``ase.Atoms`` from a SMILES string or a ``.smi``/``.sdf``/``.mol``/``.xyz`` file.

    Raises
    ------
    ValueError
        Unreadable input (the message says what was tried).
    """
    from ase import Atoms

    path = Path(str(text))
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".xyz", ".extxyz"):
        import ase.io

        return ase.io.read(path, index=0)
    if path.is_file() and suffix in (".sdf", ".mol"):
        from rdkit import Chem

        supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=True)
        mol = next(iter(supplier), None)
        if mol is None or mol.GetNumConformers() == 0:
            raise ValueError(f"{path}: no readable molecule with coordinates in the first record")
        pos = mol.GetConformer().GetPositions()
        if not mol.GetConformer().Is3D():
            raise ValueError(f"{path}: the first record has 2D coordinates; give 3D or SMILES")
        atoms = Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=pos)
        atoms.info["name"] = mol.GetProp("_Name") if mol.HasProp("_Name") else path.stem
        charge = sum(a.GetFormalCharge() for a in mol.GetAtoms())
        atoms.set_initial_charges([float(charge)] + [0.0] * (len(atoms) - 1))
        return atoms
    if path.is_file() and suffix in (".smi", ".txt"):
        first = next((ln.split() for ln in path.read_text().splitlines() if ln.strip()), None)
        if not first:
            raise ValueError(f"{path}: empty SMILES file")
        smiles, name = first[0], (first[1] if len(first) > 1 else path.stem)
    elif path.is_file():
        raise ValueError(f"{path}: unsupported file type {suffix!r} (.smi, .sdf, .mol, .xyz)")
    else:
        smiles, name = str(text), str(text)
    from rdkit import rdBase

    from densnet_core import keys as K
    from densnet_core.conformers import generate_conformers

    with rdBase.BlockLogs():  # RDKit's notes on the heavy-atom embedding are not news
        rows = generate_conformers(smiles, n_conformers=1)
    row = rows[0]
    if row[K.STATUS] != K.STATUS_OK:
        raise ValueError(f"{smiles!r}: {row[K.STATUS]}: {row[K.ERROR]}")
    atoms = Atoms(numbers=row[K.NUMBERS], positions=np.asarray(row[K.POSITIONS_ANGSTROM]))
    atoms.info["name"] = name
    atoms.info["smiles"] = row[K.SMILES]
    if int(row[K.CHARGE]):
        atoms.set_initial_charges([float(row[K.CHARGE])] + [0.0] * (len(atoms) - 1))
    return atoms


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
def _write_timeseries(rows: list[dict[str, Any]], path: Path) -> None:
    cols = {name: [r[name] for r in rows] for name in TIMESERIES_SCHEMA.names}
    write_parquet_atomic(pa.Table.from_pydict(cols, schema=TIMESERIES_SCHEMA), path)


def read_timeseries(out_dir: str | os.PathLike[str]) -> Any:
    """``timeseries.parquet`` of a run as a pandas DataFrame."""
    import pyarrow.parquet as pq

    return pq.read_table(Path(out_dir) / TIMESERIES_FILE).to_pandas()


def _save_checkpoint(out_dir: Path, atoms: Any, state: dict[str, Any]) -> None:
    with atomic_file(out_dir / CHECKPOINT_NPZ) as fh:
        np.savez(
            fh,
            numbers=atoms.get_atomic_numbers(),
            positions=atoms.get_positions(),
            momenta=atoms.get_momenta(),
        )
    with atomic_file(out_dir / CHECKPOINT_JSON) as fh:
        fh.write((json.dumps(state, indent=1) + "\n").encode())


def read_checkpoint_state(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON part of the checkpoint in ``out_dir`` (``step``, ``settings``, ...), or None."""
    path = Path(out_dir) / CHECKPOINT_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def resume_step(out_dir: str | os.PathLike[str], settings: MDSettings) -> int:
    """The step a run with ``settings`` in ``out_dir`` continues from (0: no checkpoint).

    Raises
    ------
    ValueError
        The checkpoint is of other settings (more production ``steps`` is allowed: the run is
        extended), or already past ``equilibration_steps + steps``.
    """
    state = read_checkpoint_state(out_dir)
    if state is None:
        return 0
    s = settings
    # fields added after a checkpoint was written take their defaults
    old = {**asdict(MDSettings()), **dict(state.get("settings") or {})}
    if {**old, "steps": s.steps} != asdict(s):
        raise ValueError(
            f"{out_dir} holds a checkpoint of other MD settings ({state.get('settings')}); "
            "use another output folder or the same options"
        )
    step, total = int(state["step"]), s.equilibration_steps + s.steps
    if step > total:
        raise ValueError(
            f"{out_dir} holds a run already at step {step}, past the {total} steps asked for "
            f"(give at least {step - s.equilibration_steps} production steps, or use another "
            "output folder)"
        )
    return step


def _load_checkpoint(out_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    if not (out_dir / CHECKPOINT_JSON).is_file() or not (out_dir / CHECKPOINT_NPZ).is_file():
        return None
    state = json.loads((out_dir / CHECKPOINT_JSON).read_text())
    with np.load(out_dir / CHECKPOINT_NPZ, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, state


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------
def run_md(
    atoms: Any,
    calc: Any,
    out_dir: str | os.PathLike[str],
    *,
    settings: MDSettings | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    until_step: int | None = None,
) -> dict[str, Any]:
    """Langevin equilibration then NVE (velocity Verlet) production, resumable.

    Parameters
    ----------
    atoms
        Starting structure (``ase.Atoms``, Å). Ignored when ``out_dir`` holds a checkpoint of
        the same settings and atoms (the run continues from it).
    calc
        ASE calculator giving energy (eV), forces (eV/Å) and dipole (e·Å).
    out_dir
        Output folder (created).
    settings
        :class:`MDSettings` (default values if None).
    progress
        Called as ``progress(done_steps, total_steps, phase)`` at every sample.
    until_step
        Stop after this step (counted from the start of equilibration), with a checkpoint
        there; None: run to the end (``equilibration_steps + steps``). A later call continues.

    Returns
    -------
    dict
        The summary (also written to ``summary.json``): settings, ``steps_per_second``,
        ``nve_drift_ev_per_atom_per_ps`` (slope of a linear fit of the total energy),
        ``nve_total_energy_std_ev``, ``mean_temperature_K`` (production), paths, ``resumed``.

    Raises
    ------
    ValueError
        A checkpoint in ``out_dir`` from other settings or another molecule (settings that
        differ only by more production ``steps`` extend the run), or one already past the
        end of this run.
    MDUnstableError
        Non-finite energies or forces, or a temperature above max(10 T, 5000 K): the time
        series so far is written, the last checkpoint is kept.
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.28
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    s = settings or MDSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(s.seed)
    total = s.equilibration_steps + s.steps
    traj_path = out_dir / TRAJECTORY_FILE
    rows: list[dict[str, Any]] = []
    step = 0
    resumed = False
    nve_start: dict[str, Any] | None = None  # what the switch to NVE did (nve_energy)
    ck = _load_checkpoint(out_dir)
    if ck is not None:
        arrays, state = ck
        resume_step(out_dir, s)  # ValueError for other settings
        if not np.array_equal(arrays["numbers"], atoms.get_atomic_numbers()):
            raise ValueError(f"{out_dir} holds a checkpoint of another molecule")
        atoms.set_positions(arrays["positions"])
        atoms.set_momenta(arrays["momenta"])
        rng.bit_generator.state = state["rng_state"]
        step = int(state["step"])
        nve_start = state.get("nve_start")
        ts = out_dir / TIMESERIES_FILE
        rows = read_timeseries(out_dir).to_dict("records") if ts.is_file() else []
        rows = [r for r in rows if int(r["step"]) <= step]
        for r in rows:
            r["dipole_au"] = [float(x) for x in r["dipole_au"]]
        if traj_path.exists():
            with open(traj_path, "r+b") as fh:
                fh.truncate(int(state["trajectory_bytes"]))
        resumed = True
    else:
        for p in (traj_path, out_dir / TIMESERIES_FILE, out_dir / SUMMARY_FILE):
            if p.exists():
                p.unlink()
        thermalize_momenta(atoms, temperature_K=s.temperature_K, rng=rng)
        Stationary(atoms)
        ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    n_atoms = len(atoms)
    dof = max(3 * n_atoms - 3, 1)  # the centre of mass is fixed
    dt = s.timestep_fs * units.fs

    def phase_of(k: int) -> str:
        return "equilibration" if k < s.equilibration_steps else "production"

    def record(k: int) -> None:
        epot = float(atoms.get_potential_energy())
        ekin = float(atoms.get_kinetic_energy())
        dip = np.asarray(atoms.get_dipole_moment(), dtype=float) * BOHR_PER_ANGSTROM
        rows.append(
            {
                "step": int(k),
                "phase": phase_of(k),
                "time_fs": (k - s.equilibration_steps) * s.timestep_fs,
                "potential_energy_ev": epot,
                "kinetic_energy_ev": ekin,
                "total_energy_ev": epot + ekin,
                "temperature_K": 2.0 * ekin / (dof * units.kB),
                "dipole_au": dip.tolist(),
            }
        )

    def frame(k: int) -> None:
        import ase.io

        a = atoms.copy()
        a.calc = None
        a.info.update(
            {
                "step": int(k),
                "time_fs": (k - s.equilibration_steps) * s.timestep_fs,
                "phase": phase_of(k),
                "energy_ev": float(atoms.get_potential_energy()),
                "dipole_e_angstrom": np.asarray(atoms.get_dipole_moment()),
            }
        )
        a.arrays["forces_ev_per_angstrom"] = atoms.get_forces().copy()
        a.set_momenta(atoms.get_momenta())
        with open(traj_path, "a") as fh:
            ase.io.write(fh, a, format="extxyz")

    def checkpoint(k: int) -> None:
        _write_timeseries(rows, out_dir / TIMESERIES_FILE)
        size = traj_path.stat().st_size if traj_path.exists() else 0
        _save_checkpoint(
            out_dir,
            atoms,
            {
                "step": int(k),
                "settings": asdict(s),
                "rng_state": rng.bit_generator.state,
                "trajectory_bytes": int(size),
                "nve_start": nve_start,
            },
        )

    if not resumed:
        record(0)
        frame(0)
        checkpoint(0)
    t0 = time.perf_counter()
    steps_done_here = 0
    t_max = max(10.0 * s.temperature_K, 5000.0)  # runaway-temperature guard, K
    langevin = Langevin(
        atoms,
        timestep=dt,
        temperature_K=s.temperature_K,
        friction=s.friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    verlet = VelocityVerlet(atoms, timestep=dt)
    stop = total if until_step is None else max(step, min(int(until_step), total))
    while step < stop:
        dyn = langevin if step < s.equilibration_steps else verlet
        dyn.run(1)
        step += 1
        steps_done_here += 1
        if step == s.equilibration_steps and s.nve_energy == "canonical":
            nve_start = _match_canonical_energy(atoms, rows, s, dof)
        epot = float(atoms.get_potential_energy())
        temp = 2.0 * float(atoms.get_kinetic_energy()) / (dof * units.kB)
        if not (math.isfinite(epot) and math.isfinite(temp)) or temp > t_max:
            _write_timeseries(rows, out_dir / TIMESERIES_FILE)
            raise MDUnstableError(
                f"MD became unstable at step {step} ({phase_of(step)}): potential energy "
                f"{epot:.4g} eV, temperature {temp:.4g} K (limit {t_max:.0f} K). The model is "
                "probably outside its training data here; the last checkpoint is at step "
                f"{step - step % s.checkpoint_interval} (try a shorter time step)"
            )
        if step % s.sample_interval == 0 or step == s.equilibration_steps:
            record(step)
            if progress is not None:
                progress(step, total, phase_of(step))
        if step % s.trajectory_interval == 0:
            frame(step)
        if step % s.checkpoint_interval == 0 or step in (total, stop):
            checkpoint(step)
    seconds = time.perf_counter() - t0

    summary = _summary(rows, s, n_atoms)
    if nve_start is not None:
        summary["nve_start"] = nve_start
    summary.update(
        {
            "settings": asdict(s),
            "n_atoms": n_atoms,
            "steps_run_now": steps_done_here,
            "step": step,
            "total_steps": total,
            "seconds": seconds,
            "steps_per_second": steps_done_here / seconds if seconds > 0 else math.nan,
            "resumed": resumed,
            "trajectory": str(traj_path),
            "timeseries": str(out_dir / TIMESERIES_FILE),
        }
    )
    with atomic_file(out_dir / SUMMARY_FILE) as fh:
        fh.write((json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _match_canonical_energy(
    atoms: Any, rows: list[Mapping[str, Any]], s: MDSettings, dof: int
) -> dict[str, Any]:
    """Scale the momenta so that the total energy is the canonical mean at ``s.temperature_K``.

    Target E = <E_pot> over the second half of the equilibration samples + dof/2 k_B T (eV).
    Nothing changes when fewer than 10 samples are there or the target kinetic energy would
    not be positive.

    Returns
    -------
    dict
        ``target_total_energy_ev``, ``velocity_scale`` (1.0 when unchanged), ``n_samples``.
    """
    from ase import units

    half = s.equilibration_steps / 2
    epot = [
        r["potential_energy_ev"]
        for r in rows
        if r["phase"] == "equilibration" and r["step"] >= half
    ]
    e_now = float(atoms.get_potential_energy())
    ekin = float(atoms.get_kinetic_energy())
    out: dict[str, Any] = {"velocity_scale": 1.0, "n_samples": len(epot)}
    if len(epot) < 10 or ekin <= 0:
        return out
    target = float(np.mean(epot)) + 0.5 * dof * units.kB * s.temperature_K
    out["target_total_energy_ev"] = target
    if target - e_now <= 0:
        return out
    scale = math.sqrt((target - e_now) / ekin)
    atoms.set_momenta(atoms.get_momenta() * scale)
    out["velocity_scale"] = scale
    return out


def _summary(rows: list[Mapping[str, Any]], s: MDSettings, n_atoms: int) -> dict[str, Any]:
    prod = [r for r in rows if r["phase"] == "production"]
    if len(prod) < 2:
        return {
            "nve_drift_ev_per_atom_per_ps": math.nan,
            "nve_total_energy_std_ev": math.nan,
            "mean_temperature_K": math.nan,
        }
    t_ps = np.array([r["time_fs"] for r in prod]) / 1000.0
    e = np.array([r["total_energy_ev"] for r in prod])
    slope = float(np.polyfit(t_ps, e, 1)[0]) if np.ptp(t_ps) > 0 else math.nan
    return {
        "nve_drift_ev_per_atom_per_ps": slope / n_atoms,
        "nve_total_energy_std_ev": float(np.std(e)),
        "nve_total_energy_range_ev": float(np.ptp(e)),
        "mean_temperature_K": float(np.mean([r["temperature_K"] for r in prod])),
        "n_production_samples": len(prod),
    }


# ------------------------------------------------------------------------------------------
# Before and after a run: relaxing the start geometry, the IR spectrum
# ------------------------------------------------------------------------------------------
def relax_on_model(atoms: Any, calc: Any) -> dict[str, Any]:
    """Relax ``atoms`` on ``calc`` with ASE's BFGS; updates its positions in place.

    BFGS runs on a copy (``atoms.calc`` is left as it is) to :data:`RELAX_FMAX_EV_PER_A`,
    at most :data:`RELAX_MAX_STEPS` steps.

    Parameters
    ----------
    atoms
        ``ase.Atoms``, Å.
    calc
        ASE calculator with a ``model_id``
        (:class:`~densnet_core.calculator.DenSNetCalculator`).

    Returns
    -------
    dict
        ``relax_steps`` (BFGS steps), ``relax_fmax_ev_per_angstrom`` (largest force component
        at the end, eV/Å), ``relax_converged``.

    Raises
    ------
    RelaxationError
        Forces not finite or above :data:`RELAX_FAIL_FORCE_EV_PER_A` at the end: the model is
        not usable for this molecule.
    """
    from ase.optimize import BFGS

    work = atoms.copy()
    work.calc = calc
    opt = BFGS(work, logfile=None)
    converged = bool(opt.run(fmax=RELAX_FMAX_EV_PER_A, steps=RELAX_MAX_STEPS))
    forces = work.get_forces()
    fmax = float(np.abs(forces).max())
    if not np.isfinite(forces).all() or fmax > RELAX_FAIL_FORCE_EV_PER_A:
        raise RelaxationError(
            f"relaxing the start geometry on the model failed (forces {fmax:.3g} eV/Å after "
            f"{opt.nsteps} BFGS steps): the model {calc.model_id} is not usable for this "
            "molecule"
        )
    atoms.set_positions(work.get_positions())
    return {
        "relax_steps": int(opt.nsteps),
        "relax_fmax_ev_per_angstrom": fmax,
        "relax_converged": converged,
    }


#: file in an MD output folder caching the PySCF harmonic reference (minutes to compute)
REFERENCE_FILE = "ir_reference.json"


def harmonic_reference_cached(
    out_dir: str | os.PathLike[str], atoms: Any, say: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The PySCF harmonic IR spectrum of ``atoms``, computed once and kept in ``out_dir``.

    Parameters
    ----------
    out_dir
        The MD output folder (``ir_reference.json`` is read from / written to it).
    atoms
        ``ase.Atoms`` of the starting geometry (Å); the charge is the sum of its initial
        charges (as :func:`read_structure` sets them).
    say
        Called with status lines.

    Returns
    -------
    dict
        ``numbers``, ``frequencies_cm1``, ``intensities_km_mol``, ``positions_angstrom`` (the
        PySCF-optimised geometry), ``energy_hartree``, ``charge`` and ``label``.
    """
    from densnet_core.ir import harmonic_ir_pyscf

    say = say or (lambda msg: None)
    path = Path(out_dir) / REFERENCE_FILE
    numbers = [int(z) for z in atoms.get_atomic_numbers()]
    charge = round(float(atoms.get_initial_charges().sum()))
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("numbers") == numbers and cached.get("charge", 0) == charge:
            say(f"PySCF harmonic reference from {path}")
            return {**cached, "label": "PySCF harmonic"}
    say("PySCF harmonic reference (optimisation, Hessian, dipole derivatives)...")
    h = harmonic_ir_pyscf(numbers, atoms.get_positions(), charge=charge, progress=say)
    ref = {
        "numbers": numbers,
        "charge": charge,
        "frequencies_cm1": [float(x) for x in h["frequencies_cm1"]],
        "intensities_km_mol": [float(x) for x in h["intensities_km_mol"]],
        "positions_angstrom": np.asarray(h["positions_angstrom"]).tolist(),
        "energy_hartree": float(h["energy_hartree"]),
    }
    with atomic_file(path) as fh:
        fh.write((json.dumps(ref, indent=1) + "\n").encode())
    return {**ref, "label": "PySCF harmonic"}


def ir_of_run(
    out_dir: str | os.PathLike[str],
    settings: MDSettings,
    *,
    formula: str,
    reference: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """IR spectrum of the production run in ``out_dir`` (:func:`densnet_core.ir.ir_spectrum`
    of the dipole series), written with :func:`densnet_core.ir.write_ir`.

    Parameters
    ----------
    out_dir
        The run's output folder (reads ``timeseries.parquet``; writes ``ir_spectrum.parquet``,
        ``ir_peaks.parquet`` and ``ir_spectrum.png``).
    settings
        The run's settings (time step, fs; temperature, K).
    formula
        Chemical formula for the plot's title.
    reference
        Called (only when the spectrum is computed) for a harmonic reference to draw on the
        same axes: a dict with ``frequencies_cm1``, ``intensities_km_mol`` and ``label``.

    Returns
    -------
    dict
        ``computed`` and ``n_samples``; when ``computed`` is False (fewer than
        :data:`MIN_IR_SAMPLES` production samples) a ``reason``, else ``spectrum``,
        ``peaks_file``, ``png`` (paths) and ``peaks``: a list of ``{"wavenumber_cm1",
        "intensity"}`` with ``nearest_harmonic_cm1`` when there is a reference.
    """
    from densnet_core.ir import ir_spectrum, write_ir

    ts = read_timeseries(out_dir)
    prod = ts[ts["phase"] == "production"]
    if len(prod) < MIN_IR_SAMPLES:
        reason = (
            f"too few production samples for an IR spectrum ({len(prod)}, need >= {MIN_IR_SAMPLES})"
        )
        return {"computed": False, "reason": reason, "n_samples": len(prod)}
    dip = np.stack(prod["dipole_au"].to_numpy())
    dt = settings.timestep_fs * float(np.median(np.diff(prod["step"].to_numpy())))
    wn, inten = ir_spectrum(dip, timestep_fs=dt, temperature_K=settings.temperature_K)
    ref = None if reference is None else reference()
    res = write_ir(
        out_dir,
        wn,
        inten,
        title=f"IR of {formula} from DenSNet MD at {settings.temperature_K:.0f} K",
        reference=ref,
    )
    peaks = [
        {"wavenumber_cm1": float(w), "intensity": float(i)}
        for w, i in zip(res["peaks"]["wavenumber_cm1"], res["peaks"]["intensity"], strict=True)
    ]
    if ref is not None:
        harmonic = np.asarray([f for f in ref["frequencies_cm1"] if f > 0], dtype=float)
        for p in peaks:
            p["nearest_harmonic_cm1"] = (
                float(harmonic[np.argmin(np.abs(harmonic - p["wavenumber_cm1"]))])
                if harmonic.size
                else None
            )
    return {
        "computed": True,
        "n_samples": len(prod),
        "spectrum": res["spectrum"],
        "peaks_file": res["peaks_file"],
        "png": res["png"],
        "peaks": peaks,
    }
