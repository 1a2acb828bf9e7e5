"""Density -> energy: an equivariant network from predicted density coefficients to E, and -dE/dR.

The second half of DenSNet. :class:`EnergyModel` maps the *predicted* auxiliary-basis density
coefficients (the output of :class:`~densnet_core.model.DensityModel`, per atom in e3nn order)
plus the geometry to atomic energies; :class:`DenSNetPotential` chains the two networks so that
energies, forces (autograd through both), dipoles and (when the density model has response
heads) polarizabilities all come from one forward pass.

Architecture of :class:`EnergyModel`
------------------------------------
* Input per atom A of element Z: x_A = (c_A - c_A^SAD) / s_Z, the atom's block of predicted
  coefficients (e3nn order: the element's irreps, PySCF shell order) minus the free-atom (SAD)
  prior block, divided per shell by a fixed scale s_Z (one number per irrep instance, the
  RMS of x over the training set, :meth:`EnergyModel.fit_normalization`; 1 before fitting).
  The prior is spherical (s shells only), so the subtraction is equivariant.
* Per element: ``o3.Linear(irreps_Z -> hidden_irreps)`` (equivariant: the 0e, 1o, 2e shells
  feed the matching hidden channels; the shells are first permuted into sorted, merged irreps
  so that the linear map has one weight block per irrep type) plus invariants: the squared
  norms |x_shell|^2 of every shell (all l, so the l = 3, 4 shells are seen too) and the
  element one-hot, through an ``o3.Linear`` to the hidden scalars.
* ``n_layers`` interaction blocks of the density model (:class:`densnet_core.model.Interaction`:
  MACE-lite neighbour density, channel-wise products, gated nonlinearity, residual) on a radius
  graph with the same Bessel x polynomial-envelope radial basis (C^2 at the cutoff, so forces
  are continuous when atoms cross it).
* Readout: ``o3.Linear(hidden -> readout_hidden x 0e)``, SiLU MLP -> one scalar per atom.
  Atomic energy E_A = e_ref[Z_A] + energy_scale * y_A (hartree); E = sum_A E_A.
* ``e_ref`` (per element, hartree) is fitted by least squares on the training energies
  (:meth:`EnergyModel.fit_reference_energies`: min-norm ``numpy.linalg.lstsq`` of
  E_mol ~ sum_Z n_Z e_ref[Z]; with a single composition, as for one molecule's MD data, the
  system is rank one and the min-norm solution reproduces the mean training energy exactly).
  ``energy_scale`` (hartree) is the RMS of the training force components (Eh/bohr times 1 bohr,
  NequIP's choice), so the network's outputs are O(1).

Units: atomic units throughout (positions bohr, energies hartree, forces hartree/bohr, dipoles
e·bohr, polarizabilities bohr^3). The ASE calculator (:mod:`densnet_core.calculator`) converts
to eV, Å, e·Å at the edge.

Forces: :meth:`DenSNetPotential.forward` makes a leaf copy of ``positions_bohr`` with
``requires_grad`` and differentiates E through the energy network *and* the density network
(the predicted coefficients depend on the positions); the radius graph is rebuilt per call and
is piecewise constant, which the envelope makes harmless. No finite differences. The density
model needs no hook for this: its forward reads ``batch["positions_bohr"]`` and every
position-dependent operation in it is differentiable (the dipole integrals of the batch, used
only for the dipole, are numpy constants; the energy does not use them).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from e3nn import o3
from torch import nn

from densnet_core.graph import (
    MoleculeInput,
    collate,
    element_gather_indices,
    radius_graph,
    reverse_edges,
)
from densnet_core.level import LevelOfTheory
from densnet_core.model import (
    DensityModel,
    EdgeGeometry,
    Interaction,
    RadialBasis,
    _fast_e3nn_build,
)

__all__ = [
    "ENERGY_PRESETS",
    "DenSNetPotential",
    "EnergyModel",
    "density_level",
]

ENERGY_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "cutoff_bohr": 6.0,
        "n_radial": 6,
        "envelope_p": 6,
        "lmax_sh": 2,
        "edge_mul": [8, 4, 4],
        "product_mul": 4,
        "hidden_irreps": "8x0e+4x1o+2x2e",
        "n_layers": 1,
        "radial_hidden": 8,
        "readout_hidden": 8,
        "avg_num_neighbors": 8.0,
    },
    "small": {
        "cutoff_bohr": 7.0,
        "n_radial": 8,
        "envelope_p": 6,
        "lmax_sh": 3,
        "edge_mul": [16, 8, 8, 4],
        "product_mul": 8,
        "hidden_irreps": "16x0e+8x1o+4x2e",
        "n_layers": 2,
        "radial_hidden": 16,
        "readout_hidden": 16,
        "avg_num_neighbors": 8.0,
    },
    "default": {
        "cutoff_bohr": 7.5,
        "n_radial": 8,
        "envelope_p": 6,
        "lmax_sh": 3,
        "edge_mul": [32, 16, 16, 8],
        "product_mul": 16,
        "hidden_irreps": "32x0e+16x1o+8x2e",
        "n_layers": 2,
        "radial_hidden": 32,
        "readout_hidden": 32,
        "avg_num_neighbors": 8.0,
    },
}


def density_level(level: LevelOfTheory) -> LevelOfTheory:
    """The level whose SAD prior and aux basis the density model uses.

    Labels made with ``polarizability=False`` (or ``forces=False``) have their own hash, but the
    same density, prior and aux basis as the full level: features are always built with the
    full level.
    """
    return level.full()


def _shell_index(irreps: o3.Irreps) -> tuple[torch.Tensor, int]:
    """(dim,) long: the irrep instance (shell) of every component, and the number of shells."""
    idx: list[int] = []
    k = 0
    for mul, ir in irreps:
        for _ in range(mul):
            idx += [k] * ir.dim
            k += 1
    return torch.tensor(idx, dtype=torch.long), k


class EnergyModel(nn.Module):
    """Equivariant network: predicted density coefficients + geometry -> atomic energies.

    Parameters (keyword-only; defaults are ``ENERGY_PRESETS["default"]``)
    ----------
    irreps_by_element
        Atomic number -> the element's aux irreps (as in the density model, PySCF shell order).
    prior_by_element
        Atomic number -> (M_Z,) SAD prior block in e3nn order (subtracted from the input), or
        None for zeros.
    cutoff_bohr, n_radial, envelope_p, lmax_sh, edge_mul, product_mul, radial_hidden,
    avg_num_neighbors
        As in :class:`~densnet_core.model.DensityModel`.
    hidden_irreps
        Node-feature irreps of the interaction blocks (must start with the 0e scalars).
    n_layers
        Number of interaction blocks (>= 1).
    readout_hidden
        Width of the scalar readout MLP.
    preset
        Name of the preset the values came from (recorded in the config only).
    """

    def __init__(
        self,
        *,
        irreps_by_element: Mapping[int, str | o3.Irreps],
        prior_by_element: Mapping[int, Sequence[float] | np.ndarray] | None = None,
        cutoff_bohr: float = ENERGY_PRESETS["default"]["cutoff_bohr"],
        n_radial: int = ENERGY_PRESETS["default"]["n_radial"],
        envelope_p: int = ENERGY_PRESETS["default"]["envelope_p"],
        lmax_sh: int = ENERGY_PRESETS["default"]["lmax_sh"],
        edge_mul: Sequence[int] = ENERGY_PRESETS["default"]["edge_mul"],
        product_mul: int = ENERGY_PRESETS["default"]["product_mul"],
        hidden_irreps: str = ENERGY_PRESETS["default"]["hidden_irreps"],
        n_layers: int = ENERGY_PRESETS["default"]["n_layers"],
        radial_hidden: int = ENERGY_PRESETS["default"]["radial_hidden"],
        readout_hidden: int = ENERGY_PRESETS["default"]["readout_hidden"],
        avg_num_neighbors: float = ENERGY_PRESETS["default"]["avg_num_neighbors"],
        preset: str | None = None,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        irreps_el = {int(z): o3.Irreps(ir) for z, ir in sorted(irreps_by_element.items())}
        self.elements: list[int] = list(irreps_el)
        self.irreps_by_element = irreps_el
        self.element_dims = {z: ir.dim for z, ir in irreps_el.items()}
        self.cutoff_bohr = float(cutoff_bohr)
        self.config: dict[str, Any] = {
            "irreps_by_element": {str(z): str(ir) for z, ir in irreps_el.items()},
            "cutoff_bohr": float(cutoff_bohr),
            "n_radial": int(n_radial),
            "envelope_p": int(envelope_p),
            "lmax_sh": int(lmax_sh),
            "edge_mul": [int(m) for m in edge_mul],
            "product_mul": int(product_mul),
            "hidden_irreps": str(o3.Irreps(hidden_irreps)),
            "n_layers": int(n_layers),
            "radial_hidden": int(radial_hidden),
            "readout_hidden": int(readout_hidden),
            "avg_num_neighbors": float(avg_num_neighbors),
            "preset": preset,
        }
        n_el = len(self.elements)
        z_max = max(self.elements)
        lookup = torch.full((z_max + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(self.elements)] = torch.arange(n_el)
        self.register_buffer("_element_lookup", lookup, persistent=False)

        hidden = o3.Irreps(hidden_irreps)
        n_hidden_scalars = sum(mul for mul, ir in hidden if ir == o3.Irrep("0e"))
        if hidden[0][1] != o3.Irrep("0e") or n_hidden_scalars == 0:
            raise ValueError("hidden_irreps must start with the 0e scalars")
        with _fast_e3nn_build():
            self.input_linear = nn.ModuleDict()
            self.input_invariants = nn.ModuleDict()
            for z, irreps_z in irreps_el.items():
                shell_idx, n_shells = _shell_index(irreps_z)
                self.register_buffer(f"_shell_idx_{z}", shell_idx, persistent=False)
                prior = (
                    torch.zeros(irreps_z.dim, dtype=torch.float64)
                    if prior_by_element is None or z not in prior_by_element
                    else torch.tensor(np.array(prior_by_element[z], dtype=np.float64))
                )
                if prior.shape != (irreps_z.dim,):
                    raise ValueError(f"element {z}: prior has shape {tuple(prior.shape)}")
                # persistent buffers: saved with the weights (the model is self-contained)
                self.register_buffer(f"prior_{z}", prior.clone())
                self.register_buffer(f"shell_scale_{z}", torch.ones(n_shells, dtype=torch.float64))
                # the shells sorted by irrep and merged ("10x0e+8x1o+..."): one weight block per
                # irrep type instead of one per shell, many fewer small ops per call
                srt = irreps_z.sort()
                offs = [0]
                for mul, ir in irreps_z:
                    offs.append(offs[-1] + mul * ir.dim)
                perm = torch.cat([torch.arange(offs[i], offs[i + 1]) for i in srt.inv])
                self.register_buffer(f"_sort_perm_{z}", perm, persistent=False)
                self.input_linear[str(z)] = o3.Linear(srt.irreps.simplify(), hidden)
                self.input_invariants[str(z)] = o3.Linear(
                    o3.Irreps(f"{n_shells}x0e"), o3.Irreps(f"{n_hidden_scalars}x0e")
                )
            self.embedding = o3.Linear(o3.Irreps(f"{n_el}x0e"), o3.Irreps(f"{n_hidden_scalars}x0e"))
            self.irreps_sh = o3.Irreps.spherical_harmonics(lmax_sh)
            self.spherical_harmonics = o3.SphericalHarmonics(
                self.irreps_sh, normalize=True, normalization="component"
            )
            self.radial_basis = RadialBasis(
                n_radial=n_radial, cutoff_bohr=cutoff_bohr, envelope_p=envelope_p
            )
            self.layers = nn.ModuleList(
                Interaction(
                    irreps_in=hidden,
                    irreps_out=hidden,
                    lmax_sh=lmax_sh,
                    edge_mul=edge_mul,
                    product_mul=product_mul,
                    n_elements=n_el,
                    n_radial=n_radial,
                    radial_hidden=radial_hidden,
                    avg_num_neighbors=avg_num_neighbors,
                    element_self_interaction=True,
                )
                for _ in range(n_layers)
            )
            self.readout = o3.Linear(hidden, o3.Irreps(f"{readout_hidden}x0e"))
        self.mlp = nn.Sequential(
            nn.SiLU(),
            nn.Linear(readout_hidden, readout_hidden),
            nn.SiLU(),
            nn.Linear(readout_hidden, 1),
        )
        self.register_buffer("e_ref_hartree", torch.zeros(n_el, dtype=torch.float64))
        self.register_buffer("energy_scale_hartree", torch.ones((), dtype=torch.float64))

    _FLOAT64_BUFFERS = ("e_ref_hartree", "energy_scale_hartree")

    def _apply(self, fn: Any, recurse: bool = True) -> EnergyModel:
        """As ``nn.Module._apply``, but the reference energies and the energy scale stay
        float64 (``.float()``/``.to(dtype)`` move them to the new device only)."""
        keep = {name: self._buffers[name] for name in self._FLOAT64_BUFFERS}
        super()._apply(fn, recurse)
        for name, old in keep.items():
            self._buffers[name] = old.to(device=self._buffers[name].device, dtype=torch.float64)
        return self

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def for_density_model(
        cls,
        density_model: DensityModel,
        *,
        level: LevelOfTheory,
        preset: str = "default",
        **overrides: Any,
    ) -> EnergyModel:
        """An energy model for a density model's elements and aux basis (SAD prior of ``level``)."""
        from densnet_core.featurize import get_featurizer

        if preset not in ENERGY_PRESETS:
            raise KeyError(f"unknown preset {preset!r}; choose from {sorted(ENERGY_PRESETS)}")
        feat = get_featurizer(density_level(level))
        prior = {z: feat.element(z).prior for z in density_model.elements}
        kwargs = {**copy.deepcopy(ENERGY_PRESETS[preset]), **overrides}
        return cls(
            irreps_by_element=density_model.irreps_by_element,
            prior_by_element=prior,
            preset=preset,
            **kwargs,
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EnergyModel:
        """Rebuild from ``model.config`` (the prior, scales and references come with the
        weights: they are persistent buffers of the state dict)."""
        cfg = dict(config)
        cfg["irreps_by_element"] = {int(z): ir for z, ir in cfg["irreps_by_element"].items()}
        return cls(**cfg)

    # ---- fitted constants --------------------------------------------------------------------
    def fit_reference_energies(
        self, numbers_list: Sequence[Sequence[int]], energies_hartree: Sequence[float]
    ) -> np.ndarray:
        """Least-squares per-element reference energies e_ref (hartree), stored in the model.

        Parameters
        ----------
        numbers_list
            (S,) atomic numbers of every training conformer.
        energies_hartree
            (S,) their total energies, Eh.

        Returns
        -------
        np.ndarray
            (n_elements,) e_ref, Eh, in ``self.elements`` order (min-norm solution of
            E_s ~ sum_Z n_sZ e_Z; exact mean for a single composition).
        """
        counts = np.zeros((len(numbers_list), len(self.elements)))
        col = {z: k for k, z in enumerate(self.elements)}
        for i, nums in enumerate(numbers_list):
            for z in nums:
                counts[i, col[int(z)]] += 1
        e = np.asarray(energies_hartree, dtype=np.float64)
        sol, *_ = np.linalg.lstsq(counts, e, rcond=None)
        with torch.no_grad():
            self.e_ref_hartree.copy_(torch.as_tensor(sol, dtype=self.e_ref_hartree.dtype))
        return sol

    def fit_energy_scale(self, forces_hartree_per_bohr: Sequence[np.ndarray]) -> float:
        """Set ``energy_scale_hartree`` to the RMS training force component (Eh/bohr x 1 bohr)."""
        f = np.concatenate(
            [np.asarray(x, dtype=np.float64).reshape(-1) for x in forces_hartree_per_bohr]
        )
        scale = float(np.sqrt(np.mean(f * f))) if f.size else 1.0
        scale = scale if scale > 0 else 1.0
        with torch.no_grad():
            self.energy_scale_hartree.fill_(scale)
        return scale

    @torch.no_grad()
    def fit_normalization(
        self, numbers_list: Sequence[Sequence[int]], coeffs_list: Sequence[np.ndarray]
    ) -> None:
        """Per-shell input scales s_Z: the RMS of (c - prior) per irrep instance.

        Parameters
        ----------
        numbers_list
            (S,) atomic numbers of every conformer.
        coeffs_list
            (S,) flat (M_s,) density coefficients (e3nn order), e.g. the density model's
            predictions on the training set.
        """
        acc: dict[int, list[np.ndarray]] = {z: [] for z in self.elements}
        for nums, c in zip(numbers_list, coeffs_list, strict=True):
            c = np.asarray(c, dtype=np.float64)
            off = 0
            for z in nums:
                z = int(z)
                d = self.element_dims[z]
                acc[z].append(c[off : off + d] - getattr(self, f"prior_{z}").cpu().numpy())
                off += d
        for z, blocks in acc.items():
            if not blocks:
                continue
            x = np.stack(blocks)  # (n, d)
            idx = getattr(self, f"_shell_idx_{z}").cpu().numpy()
            n_shells = int(idx.max()) + 1
            ss = np.zeros(n_shells)
            cnt = np.zeros(n_shells)
            np.add.at(ss, idx, (x * x).sum(0))
            np.add.at(cnt, idx, x.shape[0])
            rms = np.sqrt(ss / np.maximum(cnt, 1))
            rms = np.where(rms > 1e-8, rms, 1.0)
            getattr(self, f"shell_scale_{z}").copy_(torch.as_tensor(rms))

    # ---- forward -----------------------------------------------------------------------------
    def forward(
        self, batch: Mapping[str, torch.Tensor], density_coeffs: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Atomic and total energies of a batch.

        Parameters
        ----------
        batch
            From :func:`densnet_core.graph.collate` (numbers, positions_bohr, batch,
            atom_coef_offset; ``elem{Z}_atoms/_coefs`` and ``n_electrons_ref`` are used when
            present). The edges are always rebuilt with this model's cutoff.
        density_coeffs
            (M,) density coefficients, e3nn order (the density model's ``density_coeffs``).

        Returns
        -------
        dict
            ``atomic_energies_hartree`` (A,), ``energy_hartree`` (B,).
        """
        numbers = batch["numbers"]
        pos = batch["positions_bohr"]
        mol = batch["batch"]
        n_mol = int(batch["n_electrons_ref"].shape[0]) if "n_electrons_ref" in batch else None
        if n_mol is None:
            n_mol = int(mol.max()) + 1 if mol.numel() else 0
        lookup = self._element_lookup
        el = lookup[numbers.clamp(0, lookup.shape[0] - 1)]
        el = torch.where(numbers < lookup.shape[0], el, torch.full_like(el, -1))
        if bool((el < 0).any()):
            bad = sorted(set(numbers[el < 0].tolist()))
            raise ValueError(f"elements {bad} are not supported by this energy model")
        dtype = pos.dtype
        node_attr = torch.nn.functional.one_hot(el, len(self.elements)).to(dtype)
        gather = (
            batch
            if any(k.startswith("elem") for k in batch)
            else element_gather_indices(numbers, batch["atom_coef_offset"], self.element_dims)
        )
        x = self.embedding(node_attr)
        pad = None
        for z in self.elements:
            key = f"elem{z}_atoms"
            if key not in gather:
                continue
            atoms, coefs = gather[key], gather[f"elem{z}_coefs"]
            d = self.element_dims[z]
            c = density_coeffs[coefs].reshape(-1, d)
            idx = getattr(self, f"_shell_idx_{z}")
            xz = (c - getattr(self, f"prior_{z}").to(dtype)) / getattr(self, f"shell_scale_{z}").to(
                dtype
            )[idx]
            sq = xz.new_zeros((xz.shape[0], int(idx.max()) + 1)).index_add_(1, idx, xz * xz)
            h = self.input_linear[str(z)](xz[:, getattr(self, f"_sort_perm_{z}")])
            inv = self.input_invariants[str(z)](sq)
            h = torch.cat([h[:, : inv.shape[1]] + inv, h[:, inv.shape[1] :]], dim=1)
            if pad is None:
                pad = x.new_zeros((x.shape[0], h.shape[1]))
            pad = pad.index_add(0, atoms, h)
        if pad is None:
            raise ValueError("empty batch")
        n_s = x.shape[1]
        feats = torch.cat([pad[:, :n_s] + x, pad[:, n_s:]], dim=1)

        edge_index = radius_graph(pos, mol, self.cutoff_bohr)
        src, dst = edge_index[0], edge_index[1]
        vec = pos[src] - pos[dst]
        edge_sh = self.spherical_harmonics(vec)
        edge_radial = self.radial_basis(vec.norm(dim=-1))
        # radial MLPs once per edge pair (an edge and its reverse have one length)
        rev = reverse_edges(edge_index, feats.shape[0])
        edges = EdgeGeometry.build(edge_index, edge_sh, edge_radial, feats.shape[0], reverse=rev)
        for layer in self.layers:
            feats = layer(feats, node_attr, edges)
        y = self.mlp(self.readout(feats)).squeeze(-1)
        # float64 sum: the reference energies (~ -40 Eh per heavy atom) would swamp float32
        e_atom = self.e_ref_hartree.double()[el] + self.energy_scale_hartree.double() * y.double()
        energy = e_atom.new_zeros(n_mol).index_add(0, mol, e_atom)
        return {"atomic_energies_hartree": e_atom, "energy_hartree": energy}


class DenSNetPotential(nn.Module):
    """Density model + energy model: energies, forces, dipoles (and polarizabilities).

    Parameters (keyword-only)
    ----------
    density_model
        The :class:`~densnet_core.model.DensityModel` (its output is the energy model's input).
    energy_model
        The :class:`EnergyModel` (same elements and aux irreps).
    level
        Level of theory of the labels (aux basis, SAD prior for the features).
    """

    def __init__(
        self, *, density_model: DensityModel, energy_model: EnergyModel, level: LevelOfTheory
    ) -> None:
        super().__init__()
        if {int(z) for z in density_model.elements} != {int(z) for z in energy_model.elements}:
            raise ValueError("density and energy models cover different elements")
        for z in energy_model.elements:
            if energy_model.element_dims[z] != density_model.element_dims[z]:
                raise ValueError(f"element {z}: density and energy aux dims differ")
        self.density = density_model
        self.energy = energy_model
        self.level = level

    @property
    def elements(self) -> list[int]:
        """Supported atomic numbers."""
        return list(self.density.elements)

    @property
    def has_response(self) -> bool:
        """Whether the density model predicts the field response (polarizabilities)."""
        return bool(self.density.has_response)

    def featurize(
        self, numbers: Sequence[int] | np.ndarray, positions_bohr: np.ndarray, charge: float = 0.0
    ) -> MoleculeInput:
        """Network input of one molecule (prior, charge and dipole integrals of the level)."""
        from densnet_core.featurize import get_featurizer

        return get_featurizer(density_level(self.level))(numbers, positions_bohr, charge)

    def collate(self, molecules: Sequence[MoleculeInput]) -> dict[str, torch.Tensor]:
        """Batch of molecules in this model's dtype and device (edges built in forward)."""
        p = next(self.density.parameters())
        return collate(
            molecules,
            element_dims=self.density.element_dims,
            cutoff_bohr=None,
            dtype=p.dtype,
            device=p.device,
        )

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        compute_forces: bool = True,
        compute_response: bool = False,
        create_graph: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Energies, forces, dipoles (and responses) of a batch.

        Parameters
        ----------
        batch
            From :meth:`collate` (or :func:`densnet_core.graph.collate`).
        compute_forces
            Differentiate E with respect to the positions (through both networks).
        compute_response
            Also predict the density response and the polarizability (density model with
            response heads only).
        create_graph
            Keep the graph of the force computation (needed to train on forces); default: when
            the module is in training mode.

        Returns
        -------
        dict
            ``energy_hartree`` (B,), ``atomic_energies_hartree`` (A,), ``dipole_au`` (B, 3)
            e·bohr (about ``batch["origin_bohr"]``), ``density_coeffs`` (M,), ``n_electrons``
            (B,); with forces ``forces_hartree_per_bohr`` (A, 3); with the response
            ``polarizability_au`` (B, 3, 3) bohr^3 and ``response_coeffs`` (3, M).
        """
        b = dict(batch)
        b.pop("edge_index", None)  # rebuilt from the (differentiable) positions below
        pos = b["positions_bohr"]
        if compute_forces:
            pos = pos.detach().clone().requires_grad_(True)
        b["positions_bohr"] = pos
        b["edge_index"] = radius_graph(pos, b["batch"], self.density.cutoff_bohr)
        do_resp = bool(compute_response) and self.has_response
        # MD batches are a few small molecules: opt_einsum's contraction-path search on every
        # 3-operand einsum of the tensor products costs more than the contraction itself
        # (ethanol: MD step 85-94 -> 65-68 ms, energy-training step of 2 configurations
        # 222-231 -> 148-193 ms; forces equal to float32 rounding). Screening batches
        # (DensityModel alone, 64 drug-sized molecules) gain nothing, so only this path does it.
        with (
            torch.backends.opt_einsum.flags(enabled=False),
            torch.set_grad_enabled(compute_forces or torch.is_grad_enabled()),
        ):
            dens = self.density(b, compute_response=do_resp)
            en = self.energy(b, dens["density_coeffs"])
            out = {**dens, **en}
            if compute_forces:
                cg = self.training if create_graph is None else bool(create_graph)
                (grad,) = torch.autograd.grad(
                    en["energy_hartree"].sum(), pos, create_graph=cg, retain_graph=cg
                )
                out["forces_hartree_per_bohr"] = -grad
        return out

    def energy_and_forces(
        self,
        numbers: Sequence[int] | np.ndarray,
        positions_bohr: np.ndarray,
        charge: float = 0.0,
        *,
        compute_response: bool = False,
    ) -> dict[str, np.ndarray | float]:
        """Energy, forces and dipole of one molecule, as numpy (atomic units).

        Parameters
        ----------
        numbers
            (N,) atomic numbers.
        positions_bohr
            (N, 3) bohr.
        charge
            Total charge, e.
        compute_response
            Also return the polarizability (needs response heads).

        Returns
        -------
        dict
            ``energy_hartree`` float, ``forces_hartree_per_bohr`` (N, 3),
            ``dipole_au`` (3,) e·bohr about the centre of nuclear charge, ``n_electrons``
            float; with the response ``polarizability_au`` (3, 3) bohr^3.
        """
        batch = self.collate([self.featurize(numbers, positions_bohr, charge)])
        was = self.training
        if was:  # eval() walks every submodule (~6 ms a step): only when needed
            self.eval()
        try:
            out = self(batch, compute_forces=True, compute_response=compute_response)
        finally:
            if was:
                self.train()
        res: dict[str, np.ndarray | float] = {
            "energy_hartree": float(out["energy_hartree"][0].detach()),
            "forces_hartree_per_bohr": out["forces_hartree_per_bohr"]
            .detach()
            .double()
            .cpu()
            .numpy(),
            "dipole_au": out["dipole_au"][0].detach().double().cpu().numpy(),
            "n_electrons": float(out["n_electrons"][0].detach()),
        }
        if "polarizability_au" in out:
            res["polarizability_au"] = out["polarizability_au"][0].detach().double().cpu().numpy()
        return res
