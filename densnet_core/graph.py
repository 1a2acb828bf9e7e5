"""Graphs and batches for the density network: radius graphs and flat, disjoint batches.

A batch of molecules is one disjoint graph. Atoms of all molecules are concatenated (molecule
by molecule), and so are their auxiliary-basis coefficient blocks (atom by atom, each block in
e3nn order: the element's irreps, shells in PySCF order, components in e3nn's real spherical
harmonic order). Every per-coefficient quantity (prior coefficients, charge integrals, dipole
integrals) is flat over that concatenation.

Units: positions in bohr, integrals in atomic units (charge integrals in e per coefficient
unit, dipole integrals in bohr per coefficient unit).

Batch keys (all ``torch.Tensor``; ``A`` atoms, ``E`` directed edges, ``M`` coefficients,
``B`` molecules):

===================  ==============  =====================================================
key                  shape, dtype    meaning
===================  ==============  =====================================================
numbers              (A,) long       atomic numbers
positions_bohr       (A, 3) float    Cartesian positions, bohr
batch                (A,) long       molecule index of every atom, 0..B-1, non-decreasing
charge               (B,) float      total charge, e
n_electrons_ref      (B,) float      number of electrons sum(Z) - charge
origin_bohr          (B, 3) float    origin the dipole integrals (and dipoles) refer to, bohr
edge_index           (2, E) long     (source, target) pairs within a molecule, r < cutoff
coef_atom_index      (M,) long       atom of every coefficient
coef_mol_index       (M,) long       molecule of every coefficient
atom_coef_offset     (A,) long       index of the first coefficient of every atom
prior_coeffs         (M,) float      SAD prior, e3nn order (zeros when not given)
charge_ints          (M,) float      q_mu = int chi_mu, e3nn order
dipole_ints          (3, M) float    d_mu = int (r - origin) chi_mu, e3nn order, bohr
elem{Z}_atoms        (A_Z,) long     the atoms of element Z (one pair of keys per element
elem{Z}_coefs        (A_Z * M_Z,)    present), and the flat coefficient indices of their
                     long            blocks, atom-major
===================  ==============  =====================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "MoleculeInput",
    "NeighbourTable",
    "centre_of_nuclear_charge",
    "collate",
    "element_gather_indices",
    "neighbour_table",
    "radius_graph",
]


@dataclass
class MoleculeInput:
    """One molecule, as numpy arrays, ready to be collated.

    Attributes
    ----------
    numbers
        (N,) int: atomic numbers.
    positions_bohr
        (N, 3) float: Cartesian positions, bohr.
    charge
        Total charge, e.
    prior_coeffs
        (M,) float: SAD prior coefficients in e3nn order, or None for zeros.
    charge_ints
        (M,) float: charge integrals q_mu = int chi_mu in e3nn order, or None (zeros: the
        electron-count projection is then skipped for this molecule, see
        :func:`densnet_core.model.project_electron_count`).
    dipole_ints
        (3, M) float: dipole integrals int (r - origin) chi_mu in e3nn order, bohr, or None.
    origin_bohr
        (3,) float: the origin of ``dipole_ints`` and of the predicted dipole, bohr. None means
        the centre of nuclear charge (the project's convention for ``dipole_au``).
    """

    numbers: np.ndarray
    positions_bohr: np.ndarray
    charge: float = 0.0
    prior_coeffs: np.ndarray | None = None
    charge_ints: np.ndarray | None = None
    dipole_ints: np.ndarray | None = None
    origin_bohr: np.ndarray | None = None


def centre_of_nuclear_charge(numbers: np.ndarray, positions_bohr: np.ndarray) -> np.ndarray:
    """Centre of nuclear charge sum_A Z_A R_A / sum_A Z_A, (3,) bohr."""
    z = np.asarray(numbers, dtype=float)
    return (z[:, None] * np.asarray(positions_bohr, dtype=float)).sum(0) / z.sum()


def radius_graph(
    positions_bohr: torch.Tensor, batch: torch.Tensor, cutoff_bohr: float
) -> torch.Tensor:
    """All directed pairs (i, j), i != j, of the same molecule with |r_i - r_j| < cutoff.

    O(sum_m n_m^2) memory and time, fully vectorised (no Python loop over molecules).

    Parameters
    ----------
    positions_bohr
        (A, 3): positions, bohr.
    batch
        (A,) long: molecule index of every atom; atoms of a molecule must be contiguous and
        molecules in increasing order (as :func:`collate` builds them).
    cutoff_bohr
        Cutoff radius, bohr.

    Returns
    -------
    torch.Tensor
        (2, E) long: ``edge_index[0]`` the source (neighbour) atom, ``edge_index[1]`` the target
        atom that receives the message. Both directions of every pair are present.
    """
    device = positions_bohr.device
    n_atoms = positions_bohr.shape[0]
    if n_atoms == 0:
        return torch.zeros((2, 0), dtype=torch.long, device=device)
    if bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("radius_graph: atoms must be sorted by molecule (batch non-decreasing)")
    n_mol = int(batch[-1]) + 1
    sizes = torch.bincount(batch, minlength=n_mol)
    starts = torch.cumsum(sizes, 0) - sizes
    n_pairs = sizes * sizes
    pair_mol = torch.repeat_interleave(torch.arange(n_mol, device=device), n_pairs)
    pair_start = torch.cumsum(n_pairs, 0) - n_pairs
    local = torch.arange(int(n_pairs.sum()), device=device) - pair_start[pair_mol]
    size = sizes[pair_mol]
    i = starts[pair_mol] + torch.div(local, size, rounding_mode="floor")
    j = starts[pair_mol] + local % size
    with torch.no_grad():
        d2 = (positions_bohr[i] - positions_bohr[j]).pow(2).sum(-1)
        keep = (d2 < cutoff_bohr * cutoff_bohr) & (i != j)
    return torch.stack([j[keep], i[keep]])


def reverse_edges(edge_index: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """For every directed edge (src, dst), the index of the edge (dst, src).

    Parameters
    ----------
    edge_index
        (2, E) long, both directions of every pair present (as :func:`radius_graph` gives,
        already ordered by (dst, src); any other order is sorted first).
    n_atoms
        Number of atoms A.

    Returns
    -------
    torch.Tensor
        (E,) long ``rev`` with ``edge_index[:, rev] == edge_index.flip(0)``.

    Raises
    ------
    ValueError
        If some edge has no reverse.
    """
    src, dst = edge_index[0], edge_index[1]
    key = dst * n_atoms + src
    wanted = src * n_atoms + dst
    if key.numel() and bool((key[1:] < key[:-1]).any()):
        order = torch.argsort(key)
        pos = torch.searchsorted(key[order], wanted).clamp_(max=max(key.numel() - 1, 0))
        rev = order[pos]
    else:
        rev = torch.searchsorted(key, wanted).clamp_(max=max(key.numel() - 1, 0))
    if key.numel() and not bool((key[rev] == wanted).all()):
        raise ValueError("reverse_edges: some edge has no reverse in the graph")
    return rev


@dataclass(frozen=True)
class NeighbourTable:
    """Every atom's incoming edges as rows of dense, zero-padded tables, one table per group
    of atoms of similar in-degree.

    A neighbour sum ``out_i = sum_{e: dst_e = i} f(e)`` over a radius graph is, per atom, a
    short dense reduction; laid out as (A_b, K_b, ...) it becomes batched matrix products
    (``torch.bmm``), which on a CPU are about twice as fast as gathering an (E, C) message
    tensor and scattering it back with ``index_add_``. One table with K the largest in-degree
    of the batch would be about half empty (in-degrees 4-24, mean 12, in 64 ChEMBL molecules
    with the 7.5 bohr cutoff: 1.96 slots per edge); the atoms are therefore sorted by
    in-degree and cut into at most :data:`MAX_GROUPS` groups, each padded to its own largest
    in-degree, at the cuts that minimise the slots (1.14 slots per edge in that batch).

    Attributes
    ----------
    slot
        (E,) long: position of every edge in the flattened slots of all groups (group after
        group, each (A_b, K_b) row-major).
    pad_index
        (S,) long, S = sum_b A_b K_b: the edge in every slot, E for the empty slots
        (:meth:`gather`: one ``index_select`` of the edge values with a zero row appended).
    groups
        Per group, in slot order: (A_b, K_b).
    atom_order
        (A,) long: the atoms in group order (row r of the stacked groups is atom
        ``atom_order[r]``).
    position
        (A,) long: the row of every atom in the stacked groups (the inverse of ``atom_order``).
    n_atoms
        A, the number of atoms.
    """

    slot: torch.Tensor
    pad_index: torch.Tensor
    groups: tuple[tuple[int, int], ...]
    atom_order: torch.Tensor
    position: torch.Tensor
    n_atoms: int

    @property
    def permuted(self) -> bool:
        """False when there is one group: its rows are the atoms in their own order."""
        return len(self.groups) > 1

    @property
    def k(self) -> int:
        """The largest number of incoming edges of any atom (0 without edges)."""
        return max((k for _, k in self.groups), default=0)

    def split(self, slots: torch.Tensor) -> list[torch.Tensor]:
        """(S, C) values of every slot -> per group (A_b, K_b, C) views."""
        out, start = [], 0
        for a, k in self.groups:
            out.append(slots[start : start + a * k].view(a, k, slots.shape[1]))
            start += a * k
        return out

    def pad(self, edge_values: torch.Tensor) -> list[torch.Tensor]:
        """(E, C) per-edge values -> per group (A_b, K_b, C), zeros in the unused slots
        (differentiable)."""
        zero = edge_values.new_zeros((1, edge_values.shape[1]))
        return self.gather(torch.cat([edge_values, zero]))

    def gather(self, edge_values: torch.Tensor) -> list[torch.Tensor]:
        """(E + 1, C) per-edge values whose last row is zero -> per group (A_b, K_b, C)
        (differentiable; one ``index_select`` writes every slot once)."""
        return self.split(edge_values.index_select(0, self.pad_index))

    def to_atoms(self, rows: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Values whose ``dim`` runs over the stacked groups' rows -> the same in atom order
        (contiguous)."""
        return rows.index_select(dim, self.position) if self.permuted else rows.contiguous()


MAX_GROUPS = 4
"""Most atom groups of a :class:`NeighbourTable` (every group costs a few small matrix
products per l and layer)."""

GROUP_COST_SLOTS = 256
"""What one more group costs, in slots, when :func:`neighbour_table` chooses the cuts."""


def _degree_groups(counts: np.ndarray) -> list[tuple[int, int]]:
    """Cut atoms sorted by in-degree into groups minimising sum_b (A_b K_b) + cost per group.

    Parameters
    ----------
    counts
        (A,) in-degrees, sorted ascending.

    Returns
    -------
    list of (A_b, K_b)
        The groups in that order (K_b: the group's largest in-degree).
    """
    values, n_per = np.unique(counts, return_counts=True)
    n_vals = len(values)
    first = np.concatenate([[0], np.cumsum(n_per)])  # atoms before each distinct value
    # best[g][j]: least cost of the first j distinct values in g groups; cut[g][j]: last start
    inf = float("inf")
    best = np.full((MAX_GROUPS + 1, n_vals + 1), inf)
    cut = np.zeros((MAX_GROUPS + 1, n_vals + 1), dtype=int)
    best[0, 0] = 0.0
    for g in range(1, MAX_GROUPS + 1):
        for j in range(1, n_vals + 1):
            for i in range(j):  # the g-th group holds the distinct values i..j-1
                cost = best[g - 1, i] + (first[j] - first[i]) * values[j - 1] + GROUP_COST_SLOTS
                if cost < best[g, j]:
                    best[g, j], cut[g, j] = cost, i
    g = int(np.argmin(best[:, n_vals]))
    groups, j = [], n_vals
    while g > 0:
        i = int(cut[g, j])
        groups.append((int(first[j] - first[i]), int(values[j - 1])))
        j, g = i, g - 1
    return groups[::-1]


def neighbour_table(edge_dst: torch.Tensor, n_atoms: int) -> NeighbourTable:
    """The :class:`NeighbourTable` of a graph's receiving atoms.

    Parameters
    ----------
    edge_dst
        (E,) long: receiving atom of every edge (``edge_index[1]``), in any order.
    n_atoms
        A, the number of atoms.

    Returns
    -------
    NeighbourTable
        Edges keep their relative order within each atom's row; atoms of equal in-degree keep
        their relative order.
    """
    n_atoms = int(n_atoms)
    n_edges = int(edge_dst.shape[0])
    device = edge_dst.device
    counts = torch.bincount(edge_dst, minlength=n_atoms)
    atom_order = torch.argsort(counts, stable=True)
    groups = _degree_groups(counts[atom_order].cpu().numpy()) if n_atoms else []
    if len(groups) <= 1:  # one table: the atoms keep their order
        atom_order = torch.arange(n_atoms, device=device)
        groups = [(n_atoms, int(counts.max()))] if n_atoms else []
    position = torch.empty_like(atom_order)
    position[atom_order] = torch.arange(n_atoms, device=device)
    # first slot of every row of the stacked groups
    row_start = np.zeros(n_atoms, dtype=np.int64)
    row, slot0 = 0, 0
    for a, k in groups:
        row_start[row : row + a] = slot0 + k * np.arange(a)
        row, slot0 = row + a, slot0 + a * k
    order = torch.argsort(edge_dst, stable=True)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(edge_dst)
    rank[order] = torch.arange(n_edges, device=device) - first[edge_dst[order]]
    slot = torch.as_tensor(row_start, device=device)[position[edge_dst]] + rank
    pad_index = torch.full((slot0,), n_edges, dtype=torch.long, device=device)
    pad_index[slot] = torch.arange(n_edges, device=device)
    return NeighbourTable(
        slot=slot,
        pad_index=pad_index,
        groups=tuple(groups),
        atom_order=atom_order,
        position=position,
        n_atoms=n_atoms,
    )


def element_gather_indices(
    numbers: torch.Tensor,
    atom_coef_offset: torch.Tensor,
    element_dims: Mapping[int, int],
) -> dict[str, torch.Tensor]:
    """Per-element atom indices and flat coefficient indices (keys ``elem{Z}_atoms/_coefs``).

    Parameters
    ----------
    numbers
        (A,) long: atomic numbers.
    atom_coef_offset
        (A,) long: index of every atom's first coefficient in the flat coefficient vector.
    element_dims
        Number of auxiliary functions M_Z of every element.

    Returns
    -------
    dict
        For every element Z present: ``elem{Z}_atoms`` (A_Z,) and ``elem{Z}_coefs``
        (A_Z * M_Z,), the latter atom-major (all of the first atom's block, then the next).
    """
    out: dict[str, torch.Tensor] = {}
    for z, dim in element_dims.items():
        atoms = torch.nonzero(numbers == int(z)).flatten()
        if atoms.numel() == 0:
            continue
        ar = torch.arange(int(dim), device=numbers.device)
        out[f"elem{int(z)}_atoms"] = atoms
        out[f"elem{int(z)}_coefs"] = (atom_coef_offset[atoms][:, None] + ar[None, :]).flatten()
    return out


def collate(
    molecules: Sequence[MoleculeInput],
    *,
    element_dims: Mapping[int, int],
    cutoff_bohr: float | None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Build one flat, disjoint batch from per-molecule numpy inputs.

    Parameters
    ----------
    molecules
        The molecules, each a :class:`MoleculeInput`.
    element_dims
        M_Z, the number of auxiliary functions of every supported element (the model's
        ``element_dims``). An element outside it raises ``KeyError``.
    cutoff_bohr
        Radius-graph cutoff, bohr; None leaves ``edge_index`` out (the model then builds it).
    dtype
        Floating dtype of the float tensors (float32 for speed, float64 for checks).
    device
        Where to put the tensors.

    Returns
    -------
    dict[str, torch.Tensor]
        The batch; keys and shapes in the module docstring.
    """
    if len(molecules) == 0:
        raise ValueError("collate: no molecules")
    numbers_l, pos_l, batch_l, prior_l, q_l, d_l, origin_l, charge_l = ([] for _ in range(8))
    for m_idx, mol in enumerate(molecules):
        z = np.asarray(mol.numbers, dtype=np.int64).reshape(-1)
        pos = np.asarray(mol.positions_bohr, dtype=np.float64).reshape(-1, 3)
        if pos.shape[0] != z.shape[0]:
            raise ValueError(f"molecule {m_idx}: {z.shape[0]} numbers, {pos.shape[0]} positions")
        try:
            m = int(sum(int(element_dims[int(a)]) for a in z))
        except KeyError as exc:
            raise KeyError(f"molecule {m_idx}: element {exc.args[0]} not supported") from None
        numbers_l.append(z)
        pos_l.append(pos)
        batch_l.append(np.full(z.shape[0], m_idx, dtype=np.int64))
        charge_l.append(float(mol.charge))
        origin = (
            centre_of_nuclear_charge(z, pos)
            if mol.origin_bohr is None
            else np.asarray(mol.origin_bohr, dtype=np.float64).reshape(3)
        )
        origin_l.append(origin)
        for arr, lst, shape, name in (
            (mol.prior_coeffs, prior_l, (m,), "prior_coeffs"),
            (mol.charge_ints, q_l, (m,), "charge_ints"),
            (mol.dipole_ints, d_l, (3, m), "dipole_ints"),
        ):
            if arr is None:
                lst.append(np.zeros(shape))
                continue
            a = np.asarray(arr, dtype=np.float64)
            if a.shape != shape:
                raise ValueError(f"molecule {m_idx}: {name} has shape {a.shape}, want {shape}")
            lst.append(a)

    def f(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=dtype, device=device)

    def i64(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.long, device=device)

    numbers = np.concatenate(numbers_l)
    dims = np.array([int(element_dims[int(a)]) for a in numbers], dtype=np.int64)
    offsets = np.cumsum(dims) - dims
    batch = np.concatenate(batch_l)
    coef_atom = np.repeat(np.arange(numbers.shape[0]), dims)
    charge = np.array(charge_l)
    n_el = np.bincount(batch, weights=numbers.astype(np.float64), minlength=len(molecules))
    out = {
        "numbers": i64(numbers),
        "positions_bohr": f(np.concatenate(pos_l)),
        "batch": i64(batch),
        "charge": f(charge),
        "n_electrons_ref": f(n_el - charge),
        "origin_bohr": f(np.stack(origin_l)),
        "coef_atom_index": i64(coef_atom),
        "coef_mol_index": i64(batch[coef_atom]),
        "atom_coef_offset": i64(offsets),
        "prior_coeffs": f(np.concatenate(prior_l)),
        "charge_ints": f(np.concatenate(q_l)),
        "dipole_ints": f(np.concatenate(d_l, axis=1)),
    }
    if cutoff_bohr is not None:
        out["edge_index"] = radius_graph(out["positions_bohr"], out["batch"], cutoff_bohr)
    out.update(element_gather_indices(out["numbers"], out["atom_coef_offset"], element_dims))
    return out
