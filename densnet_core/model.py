"""The equivariant density network: nuclear positions -> auxiliary-basis density coefficients.

Architecture (NequIP / MACE-lite, e3nn on torch)
------------------------------------------------
* Element one-hot -> ``o3.Linear`` -> scalar node features ``embed_dim x 0e``.
* Edges: radius graph within each molecule (cutoff ``cutoff_bohr``). Edge features are
  ``n_radial`` Bessel functions sqrt(2/r_c) sin(n pi r / r_c) / r times the polynomial envelope
  u(r / r_c) of order ``envelope_p`` (u, u' and u'' vanish at r_c, so every output is C^2 as
  an atom crosses the cutoff), and real spherical harmonics Y^l(r_hat), l <= ``lmax_sh``
  ("component" normalisation).
* ``n_layers`` interaction blocks (MACE-lite, see :class:`Interaction`): the neighbour density
  A_i = sum_j R(r_ij) s_j Y(r_hat_ij) from the neighbours' scalar features s_j (e3nn's
  Convolution "uvu" pattern with weights from an MLP of the radial features, written out as an
  outer product because the inputs are scalars; divided by sqrt(``avg_num_neighbors``)); a
  channel-wise "uuu" ``o3.TensorProduct`` of the atom's own features (l <= 1) with A_i, which
  makes three-body terms, l up to 5 and the pseudo-tensors; ``o3.Linear``; self-interaction
  (element-dependent ``FullyConnectedTensorProduct`` in the hidden blocks, ``o3.Linear`` in the
  readout block); ``e3nn.nn.Gate``; residual connection whenever input and output irreps
  agree. Only scalars travel along edges (MACE's "L = 0 messages" choice): every per-edge
  operation is an outer product, and all Clebsch-Gordan work is per atom, which is what makes
  ~50-atom molecules fast on a CPU. All blocks but the last output ``hidden_irreps``; the last
  ("readout") block outputs the readout irreps, built from the heads' needs: every (l, parity)
  of the density heads, and for the response heads every irrep of irreps_Z (x) 1o, up to
  l_max + 1 and including pseudo-tensors (1e, 2o, 3e, 4o, ...). Without autograd the readout
  block is evaluated per group of elements on the irreps their heads read
  (:class:`~densnet_core.readout.ElementReadout`; same numbers, a fraction of the work).
* Density heads: for every element Z an ``o3.Linear(readout, irreps_Z)``, irreps_Z the aux
  shells of Z in PySCF shell order with parity (-1)^l (components in e3nn order). Applied once
  per element per batch (atoms grouped by element, results scattered with precomputed
  indices). Prediction = ``prior_coeffs`` (SAD, from the batch) + Delta.
* Response heads: for every element an ``o3.Linear(readout, irreps_Z (x) 1o decomposed)``
  followed by the fixed, orthogonal inverse Clebsch-Gordan map (built from ``o3.wigner_3j``)
  to a (n_Z, 3) tensor per atom: d c_mu / d E_j, j Cartesian (x, y, z). In e3nn >= 0.5 the
  l = 1 irrep is ordered (x, y, z) and ``Irrep("1o").D_from_matrix(R) == R`` (checked at run
  time in the tests), so e3nn's l = 1 index *is* the Cartesian index.

Constraints
-----------
* Electron count: the density is projected onto {c : q . c = N} per molecule with the
  minimal Euclidean change in coefficient space, c <- c + q (N - q.c) / (q.q), q the charge
  integrals (nonzero on s functions only, so only s coefficients move). N = sum Z - charge.
* Each response column c^(j) is projected onto q . c^(j) = 0 the same way (a uniform field
  moves no charge in or out of the molecule).

Observables (computed from the predicted coefficients, never regressed separately)
---------------------------------------------------------------------------------
N = sum_mu q_mu c_mu; mu = sum_A Z_A (R_A - O) - sum_mu d_mu c_mu (e bohr; d = int (r - O)
chi, about the batch's ``origin_bohr``); alpha_ij = -sum_mu d_i,mu c^(j)_mu, symmetrised.

Dtype: float32 by default, ``model.double()`` for float64 (the tests check equivariance in
float64). Units: positions and cutoff in bohr; coefficients in the aux basis' own units.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import e3nn
import torch
from e3nn import o3
from e3nn.math import _normalize_activation
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn

from densnet_core.component_major import block_maps, gate_blocks, gate_input, simple_gate
from densnet_core.graph import (
    MoleculeInput,
    NeighbourTable,
    collate,
    element_gather_indices,
    neighbour_table,
    radius_graph,
    reverse_edges,
)
from densnet_core.readout import ElementReadout
from densnet_core.self_interaction import element_self_interaction_blocks, per_element_form

__all__ = [
    "PRESETS",
    "DensityModel",
    "EdgeGeometry",
    "PolynomialEnvelope",
    "dipole_au",
    "electron_count",
    "irreps_read_by_heads",
    "polarizability_au",
    "project_electron_count",
    "response_irreps",
]

# Presets: the architecture knobs only. The element irreps (the aux basis) are always given.
#: ways of imposing the electron count (DensityModel ``count_projection``)
COUNT_PROJECTIONS: tuple[str, ...] = ("euclidean", "prior")

PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "cutoff_bohr": 7.0,
        "n_radial": 8,
        "envelope_p": 6,
        "lmax_sh": 5,
        "edge_mul": [16, 8, 8, 4, 4, 2],
        "product_mul": 8,
        "embed_dim": 16,
        "hidden_irreps": "16x0e+8x1o+4x2e",
        "n_layers": 2,
        "radial_hidden": 16,
        "readout_mul": [16, 8, 8, 4, 4, 2, 2, 2],
        "readout_pseudo_mul": [0, 4, 4, 2, 2, 2, 2, 2],
        "avg_num_neighbors": 10.0,
        "response": True,
        "count_projection": "prior",
        "charge_transfer": True,
    },
    "default": {
        "cutoff_bohr": 7.5,
        "n_radial": 8,
        "envelope_p": 6,
        "lmax_sh": 5,
        "edge_mul": [32, 16, 16, 8, 8, 4],
        "product_mul": 16,
        "embed_dim": 32,
        "hidden_irreps": "32x0e+16x1o+8x2e",
        "n_layers": 3,
        "radial_hidden": 32,
        "readout_mul": [32, 16, 16, 8, 8, 4, 4, 2],
        "readout_pseudo_mul": [0, 8, 8, 4, 4, 4, 2, 2],
        "avg_num_neighbors": 12.0,
        "response": True,
        "count_projection": "prior",
        "charge_transfer": True,
    },
    # "default" with every multiplicity doubled (embedding, hidden irreps, edge and product
    # channels, radial MLP, readouts). Same cutoff, depth and lmax.
    "wide": {
        "cutoff_bohr": 7.5,
        "n_radial": 8,
        "envelope_p": 6,
        "lmax_sh": 5,
        "edge_mul": [64, 32, 32, 16, 16, 8],
        "product_mul": 32,
        "embed_dim": 64,
        "hidden_irreps": "64x0e+32x1o+16x2e",
        "n_layers": 3,
        "radial_hidden": 64,
        "readout_mul": [64, 32, 32, 16, 16, 8, 8, 4],
        "readout_pseudo_mul": [0, 16, 16, 8, 8, 8, 4, 4],
        "avg_num_neighbors": 12.0,
        "response": True,
        "count_projection": "prior",
        "charge_transfer": True,
    },
}


def _as_plain(value: Any) -> Any:
    """Sequences as lists, so that a tuple override equals the preset's list."""
    return list(value) if isinstance(value, tuple | list) else value


#: e3nn's activation moments <f(z)^n> (z ~ N(0, 1), one million fixed-seed samples), by
#: (function, n, dtype, device); see :func:`_cached_moment`
_MOMENTS: dict[tuple[Any, int, Any, str], torch.Tensor] = {}
#: e3nn's own ``moment`` (restored after every build)
_E3NN_MOMENT = _normalize_activation.moment


def _cached_moment(f: Any, n: int, dtype: Any = None, device: Any = None) -> torch.Tensor:
    """e3nn's ``moment`` (the normalisation constant of every gate activation), memoised.

    e3nn computes it from 10^6 fixed-seed normal samples in float64 for every ``Gate``
    activation it builds: ~0.4 s of a wide model's 1.2 s load, for a handful of distinct
    functions. The samples are seeded, so the value is the same every time; a module ``f``
    (whose parameters could change) is not memoised.
    """
    if isinstance(f, nn.Module):
        return _E3NN_MOMENT(f, n, dtype=dtype, device=device)
    key = (f, n, dtype, str(device))
    if key not in _MOMENTS:
        _MOMENTS[key] = _E3NN_MOMENT(f, n, dtype=dtype, device=device)
    return _MOMENTS[key]


@contextlib.contextmanager
def _fast_e3nn_build() -> Iterator[None]:
    """Build e3nn modules without opt_einsum path search or TorchScript (restored afterwards),
    with the gate activations' normalisation moments memoised (:func:`_cached_moment`).

    The einsum path search was ~70 % of the model's construction time and buys nothing
    measurable for these small per-atom contractions. Scripting the generated tensor-product
    code (``jit_script_fx``) cost ~4 CPU-s per default model build and made inference no faster:
    ``Predictor`` on 300 ChEMBL conformers, 1 thread, 15.76 ms/molecule scripted vs 15.17 plain,
    identical dipoles (load 5.67 vs 1.72 CPU-s).
    """
    saved = e3nn.get_optimization_defaults()
    e3nn.set_optimization_defaults(optimize_einsums=False, jit_script_fx=False)
    _normalize_activation.moment = _cached_moment
    try:
        yield
    finally:
        _normalize_activation.moment = _E3NN_MOMENT
        e3nn.set_optimization_defaults(
            optimize_einsums=saved["optimize_einsums"], jit_script_fx=saved["jit_script_fx"]
        )


# ------------------------------------------------------------------------------------------
# Radial features
# ------------------------------------------------------------------------------------------
class PolynomialEnvelope(nn.Module):
    """Smooth cutoff u(x), x = r / r_c: 1 at x = 0; u, u', u'' = 0 at x >= 1 (DimeNet/NequIP).

    u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x < 1, else 0.
    """

    def __init__(self, *, p: int = 6) -> None:
        super().__init__()
        self.p = int(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Envelope of (...) reduced distances -> (...)."""
        p = self.p
        u = (
            1.0
            - (p + 1) * (p + 2) / 2 * x.pow(p)
            + p * (p + 2) * x.pow(p + 1)
            - p * (p + 1) / 2 * x.pow(p + 2)
        )
        return u * (x < 1.0).to(x.dtype)


class RadialBasis(nn.Module):
    """Bessel functions times the envelope: (E,) distances in bohr -> (E, n_radial)."""

    def __init__(self, *, n_radial: int, cutoff_bohr: float, envelope_p: int) -> None:
        super().__init__()
        self.cutoff = float(cutoff_bohr)
        self.n_radial = int(n_radial)
        self.envelope = PolynomialEnvelope(p=envelope_p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """(E,) bohr -> (E, n_radial)."""
        n = torch.arange(1, self.n_radial + 1, dtype=r.dtype, device=r.device)
        x = r / self.cutoff
        bessel = math.sqrt(2.0 / self.cutoff) * torch.sin(math.pi * n * x[:, None]) / r[:, None]
        return bessel * self.envelope(x)[:, None]


# ------------------------------------------------------------------------------------------
# Interaction block
# ------------------------------------------------------------------------------------------
def _gate_for(irreps_out: o3.Irreps) -> Gate:
    """A Gate whose output is ``irreps_out``: SiLU/tanh on scalars, sigmoid-gated l > 0."""
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
    acts = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
    return Gate(scalars, acts, gates, [torch.sigmoid] * len(gates), gated)


@dataclass(frozen=True)
class EdgeGeometry:
    """What the interaction blocks need of a batch's radius graph, built once per forward pass.

    Attributes
    ----------
    table
        The edges regrouped by receiving atom (:class:`~densnet_core.graph.NeighbourTable`):
        atoms grouped by in-degree, one zero-padded (A_b, K_b) table per group.
    sh_t
        Per l = 0..lmax, per group of the table: (A_b, 2l + 1, K_b) spherical harmonics Y^l of
        every edge direction in the table (transposed, contiguous), zeros in the unused slots.
    pair_radial
        (P + 1, n_radial): radial basis of one edge of every pair (P = E / 2) and a zero row.
        A function of the edge length is evaluated once per pair.
    slot_pair, slot_src
        (S,) long per slot of the table: the pair of its edge (P, the zero row, for the
        empty slots) and its neighbour (source) atom (0 for the empty slots, whose radial row
        is zero).
    """

    table: NeighbourTable
    sh_t: tuple[tuple[torch.Tensor, ...], ...]
    pair_radial: torch.Tensor
    slot_pair: torch.Tensor
    slot_src: torch.Tensor

    @classmethod
    def build(
        cls,
        edge_index: torch.Tensor,
        edge_sh: torch.Tensor,
        edge_radial: torch.Tensor,
        n_atoms: int,
        *,
        reverse: torch.Tensor | None = None,
    ) -> EdgeGeometry:
        """From edge_index (2, E) (both directions of every pair), edge_sh (E, (lmax+1)^2)
        and edge_radial (E, n_radial); ``reverse`` (E,) long, the index of every edge's
        reverse, is computed (:func:`~densnet_core.graph.reverse_edges`) when not given."""
        table = neighbour_table(edge_index[1], n_atoms)
        padded = table.pad(edge_sh)
        lmax = math.isqrt(edge_sh.shape[1]) - 1
        sh_t = tuple(
            tuple(p[:, :, l * l : (l + 1) ** 2].transpose(1, 2).contiguous() for p in padded)
            for l in range(lmax + 1)
        )
        src = edge_index[0]
        if reverse is None:
            reverse = reverse_edges(edge_index, n_atoms)
        edge = torch.arange(reverse.shape[0], device=reverse.device)
        first = torch.minimum(edge, reverse)  # the pair's edge with the lower index
        keep = first == edge
        pair_of_edge = (torch.cumsum(keep, 0) - 1).index_select(0, first)
        pair_of_edge = torch.cat([pair_of_edge, keep.sum().reshape(1)])  # + P: zero row
        zero = edge_radial.new_zeros((1, edge_radial.shape[1]))
        return cls(
            table=table,
            sh_t=sh_t,
            pair_radial=torch.cat([edge_radial[keep], zero]),
            slot_pair=pair_of_edge.index_select(0, table.pad_index),
            slot_src=torch.cat([src, src.new_zeros(1)]).index_select(0, table.pad_index),
        )


class EdgeDensity(nn.Module):
    """Equivariant neighbour density A_i = sum_j R(r_ij) s_j Y(r_hat_ij) (an e3nn "uvu" conv).

    The messages are e3nn's Convolution with scalar neighbour features: for every l and
    channel u, m_ij[u, l, m] = w_ul(r_ij) s_j[u, l] Y^l_m(r_hat_ij), weights w from an MLP of the
    radial features (no biases, so w -> 0 with the envelope at the cutoff). With scalar inputs
    the Clebsch-Gordan coefficient of the 0 x l -> l path is the identity, so the tensor
    product is an outer product; it is written out here (no CG contraction per edge), which
    makes it several times faster on CPU than the generic ``o3.TensorProduct``. The neighbour
    sum runs per atom on the zero-padded neighbour tables (atoms grouped by in-degree), one
    ``torch.bmm`` per l and group: A_i[u, l, :] = sum_k w s[k, u] Y^l[k, :], which is about
    twice as fast as building the (E, sum_l mul_l (2l+1)) messages and scattering them back.
    The factors w and s are gathered straight into the tables' slots.

    Parameters
    ----------
    n_scalars
        Number of scalar node features s.
    muls
        Channels per l (l = 0..len(muls)-1); the output irreps are ``muls[l] x l(-1)^l``.
    n_radial, radial_hidden
        Radial MLP sizes.
    avg_num_neighbors
        The neighbour sum is divided by sqrt(avg_num_neighbors).
    """

    def __init__(
        self,
        *,
        n_scalars: int,
        muls: Sequence[int],
        n_radial: int,
        radial_hidden: int,
        avg_num_neighbors: float,
    ) -> None:
        super().__init__()
        self.muls = [int(m) for m in muls]
        self.irreps_out = o3.Irreps([(m, (l, (-1) ** l)) for l, m in enumerate(self.muls) if m > 0])
        n_ch = sum(self.muls)
        self.lin = o3.Linear(o3.Irreps(f"{n_scalars}x0e"), o3.Irreps(f"{n_ch}x0e"))
        self.radial = FullyConnectedNet([n_radial, radial_hidden, n_ch], torch.nn.functional.silu)
        self.norm = 1.0 / math.sqrt(float(avg_num_neighbors))

    def forward(self, s: torch.Tensor, edges: EdgeGeometry) -> torch.Tensor:
        """(A, n_scalars) -> (A, irreps_out), e3nn layout (per l: channel-major, then m)."""
        n_atoms = s.shape[0]
        parts = [
            edges.table.to_atoms(a_l.transpose(1, 2)).view(n_atoms, -1)
            for a_l in self._per_l(s, edges)
        ]
        return torch.cat(parts, dim=1) * self.norm

    def blocks(self, s: torch.Tensor, edges: EdgeGeometry) -> list[torch.Tensor]:
        """(A, n_scalars) -> per block of irreps_out: (d * A, mul), component-major
        (:mod:`densnet_core.component_major`): the same numbers as :meth:`forward`."""
        out = []
        for a_l in self._per_l(s, edges):
            d, mul = a_l.shape[1], a_l.shape[2]
            a_t = edges.table.to_atoms(a_l.transpose(0, 1), dim=1)  # (2l + 1, A, mul)
            out.append(a_t.view(d * s.shape[0], mul).mul_(self.norm))
        return out

    def _per_l(self, s: torch.Tensor, edges: EdgeGeometry) -> list[torch.Tensor]:
        """Per l with channels: the neighbour sum (A, 2l + 1, mul) before the 1/sqrt norm,
        its rows in the table's group order (``edges.table.to_atoms`` gives atom order)."""
        if len(edges.sh_t) < len(self.muls):
            raise ValueError(f"edge spherical harmonics up to l = {len(self.muls) - 1} needed")
        # w depends on the length alone: once per pair, then to both directions and straight
        # into the table's slots; the MLP has no biases, so the empty slots (the zero row of
        # pair_radial) get w = 0
        w = self.radial(edges.pair_radial).index_select(0, edges.slot_pair)  # (S, n_ch)
        # e3nn's Linear returns a column-major (A, n_ch) here: row gathers from it copy element
        # by element (~6x slower than from the row-major copy, 64 drug-like molecules)
        g = self.lin(s).contiguous().index_select(0, edges.slot_src)
        g = g * w if torch.is_grad_enabled() else g.mul_(w)
        gp = edges.table.split(g)  # per group (A_b, K_b, n_ch)
        out = []
        c0 = 0
        for l, mul in enumerate(self.muls):
            if mul:
                # (A_b, 2l + 1, K_b) @ (A_b, K_b, mul) -> (A_b, 2l + 1, mul), stacked
                parts = [
                    torch.bmm(sh, gb[:, :, c0 : c0 + mul])
                    for sh, gb in zip(edges.sh_t[l], gp, strict=True)
                ]
                if len(parts) == 1:
                    out.append(parts[0])
                else:  # several groups, or none (no atoms)
                    out.append(torch.cat(parts) if parts else g.new_zeros((0, 2 * l + 1, mul)))
            c0 += mul
        return out


class Interaction(nn.Module):
    """One interaction block (MACE-lite).

    1. Neighbour density A_i = sum_j R(r_ij) s_j Y(r_hat_ij) from the *scalar* features s_j of
       the neighbours (:class:`EdgeDensity`; MACE's "L = 0 messages" choice: everything
       per-edge is cheap, all angular coupling happens per atom).
    2. Products with the atom's own equivariant features: a channel-wise ("uuu")
       ``o3.TensorProduct`` of Linear(h_i) and Linear(A_i), restricted to the irreps needed
       next (this creates three-body terms, pseudo-tensors such as 1e = 1o x 1o, and l up to
       l_h + l_A).
    3. ``o3.Linear`` of [A_i, products] plus an element-dependent self-interaction
       (``FullyConnectedTensorProduct`` of h_i with the element one-hot), gated nonlinearity
       (``e3nn.nn.Gate``), residual connection when input and output irreps agree.

    Parameters
    ----------
    irreps_in, irreps_out
        Node-feature irreps in and out.
    lmax_sh
        Maximum l of the neighbour density (the edge spherical harmonics).
    edge_mul
        Channels per l of the neighbour density (last entry repeats).
    product_mul
        Channels of the uuu product.
    n_elements, n_radial, radial_hidden, avg_num_neighbors
        As in :class:`DensityModel`.
    element_self_interaction
        Self-interaction as a ``FullyConnectedTensorProduct`` with the element one-hot (True),
        or a plain ``o3.Linear`` (False: used for the readout block, whose output is several
        times wider and is followed by per-element heads anyway).
    """

    def __init__(
        self,
        *,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        lmax_sh: int,
        edge_mul: Sequence[int],
        product_mul: int,
        n_elements: int,
        n_radial: int,
        radial_hidden: int,
        avg_num_neighbors: float,
        element_self_interaction: bool = True,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.n_scalars = sum(mul for mul, ir in self.irreps_in if ir == o3.Irrep("0e"))
        if self.irreps_in[0][1] != o3.Irrep("0e") or self.n_scalars == 0:
            raise ValueError("node irreps must start with the 0e scalars")
        self.gate = _gate_for(self.irreps_out)
        wanted = {ir for _, ir in self.gate.irreps_in}

        # l of the neighbour density: up to what the output can use (directly, or via 1o x A^l)
        lmax_a = min(int(lmax_sh), max(ir.l for _, ir in self.irreps_out) + 1)
        muls = [int(edge_mul[min(l, len(edge_mul) - 1)]) for l in range(lmax_a + 1)]
        self.edge = EdgeDensity(
            n_scalars=self.n_scalars,
            muls=muls,
            n_radial=n_radial,
            radial_hidden=radial_hidden,
            avg_num_neighbors=avg_num_neighbors,
        )
        irreps_a = self.edge.irreps_out

        # channel-wise products h_i x A_i -> irreps wanted by the gate
        c = int(product_mul)
        # the left factor is limited to l <= 1: 1o x A^l already gives every l +- 1 and every
        # pseudo-tensor (1e, 2o, 3e, 4o), and l = 2 on the left would triple the path count
        left = o3.Irreps([(c, ir) for ir in sorted({ir for _, ir in self.irreps_in if ir.l <= 1})])
        right = o3.Irreps([(c, ir) for _, ir in irreps_a])
        mid: list[tuple[int, o3.Irrep]] = []
        instr: list[tuple[int, int, int, str, bool]] = []
        for i, (_, ir1) in enumerate(left):
            for j, (_, ir2) in enumerate(right):
                for ir3 in ir1 * ir2:
                    if ir3 in wanted:
                        instr.append((i, j, len(mid), "uuu", True))
                        mid.append((c, ir3))
        reached = {ir for _, ir in mid} | {ir for _, ir in irreps_a}
        missing = wanted - reached
        if missing:
            raise ValueError(
                f"irreps {sorted(map(str, missing))} cannot be reached from {self.irreps_in} "
                f"and l <= {lmax_sh}; raise lmax_sh or the l of hidden_irreps"
            )
        srt = o3.Irreps(mid).sort()
        instr = [(i, j, srt.p[k], m, t) for i, j, k, m, t in instr]  # sorted[p[k]] = mid[k]
        self.lin_left = o3.Linear(self.irreps_in, left)
        self.lin_right = o3.Linear(irreps_a, right)
        self.product = o3.TensorProduct(left, right, srt.irreps, instr)
        self.irreps_cat = (irreps_a + srt.irreps).simplify()
        self.lin_out = o3.Linear(irreps_a + srt.irreps, self.gate.irreps_in)
        if element_self_interaction:
            self.self_interaction = o3.FullyConnectedTensorProduct(
                self.irreps_in, o3.Irreps(f"{n_elements}x0e"), self.gate.irreps_in
            )
        else:
            self.self_interaction = o3.Linear(self.irreps_in, self.gate.irreps_in)
        self.element_self_interaction = bool(element_self_interaction)
        self.residual = self.irreps_in == self.irreps_out

    def forward(
        self, x: torch.Tensor, node_attr: torch.Tensor, edges: EdgeGeometry
    ) -> torch.Tensor:
        """(A, irreps_in) node features, (A, n_elements) one-hot -> (A, irreps_out)."""
        return self.update(x, self.edge(x[:, : self.n_scalars], edges), node_attr)

    def update(
        self, x: torch.Tensor, a: torch.Tensor, node_attr: torch.Tensor | None
    ) -> torch.Tensor:
        """The block after the neighbour sum: (A, irreps_in) features and (A, irreps_A)
        neighbour density ``a`` -> (A, irreps_out).

        ``node_attr`` (A, n_elements) one-hot feeds the element self-interaction (unused by the
        readout block, whose self-interaction is a plain linear map).
        """
        p = self.product(self.lin_left(x), self.lin_right(a))
        if self.element_self_interaction:
            si = self.self_interaction(x, node_attr)
        else:
            si = self.self_interaction(x)
        out = self.gate(self.lin_out(torch.cat([a, p], dim=1)) + si)
        return out + x if self.residual else out

    def update_component_major(
        self,
        x: list[torch.Tensor],
        a: list[torch.Tensor],
        atoms_by_element: list[tuple[int, torch.Tensor]],
        order: torch.Tensor,
    ) -> list[torch.Tensor | None]:
        """:meth:`update` with the element self-interaction, on component-major blocks
        (:mod:`densnet_core.component_major`; inference only).

        Parameters
        ----------
        x, a
            Per block of ``irreps_in`` and of the neighbour density: (d * A, mul).
        atoms_by_element, order
            The atoms of every element present, as for
            :func:`~densnet_core.self_interaction.element_self_interaction_blocks`.

        Returns
        -------
        list
            Per block of ``irreps_out``: (d * A, mul).
        """
        n = order.shape[0]
        maps = self.__dict__.get("_component_major")
        if maps is None:
            maps = block_maps(self.lin_left, self.lin_right, self.product, self.lin_out)
            self.__dict__["_component_major"] = maps
        weights = (self.lin_left.weight, self.lin_right.weight, self.product.weight)
        si = element_self_interaction_blocks(self.self_interaction, x, atoms_by_element, order)
        y = gate_input(maps, x, a, n, (*weights, self.lin_out.weight), si)
        out = gate_blocks(self.gate, y, list(range(len(self.gate.irreps_gated))), n)
        if self.residual:
            out = [xb if o is None else o + xb for o, xb in zip(out, x, strict=True)]
        return out


# ------------------------------------------------------------------------------------------
# Response: irreps_Z (x) 1o and its inverse Clebsch-Gordan map
# ------------------------------------------------------------------------------------------
def response_irreps(irreps_z: o3.Irreps | str) -> tuple[o3.Irreps, torch.Tensor]:
    """Decomposed irreps of irreps_Z (x) 1o (sorted, simplified) and the map back to a tensor.

    Computed once per irreps string (a model build asks twice per element; ~0.17 s of the
    default model's start-up); the returned tensor is a fresh copy.

    Parameters
    ----------
    irreps_z
        The element's density irreps (dimension d).

    Returns
    -------
    irreps
        The decomposition, sorted by (l, parity) and simplified (dimension 3 d).
    W
        (3 d, 3 d) float64, orthogonal: a vector z in the decomposition maps to the tensor
        T = (z @ W).reshape(d, 3), T[mu, j] transforming as irreps_Z on mu and as 1o (e3nn
        order = Cartesian x, y, z) on j.
    """
    irreps, w = _response_irreps_cached(str(o3.Irreps(irreps_z)))
    return irreps, w.clone()


@functools.lru_cache(maxsize=64)
def _response_irreps_cached(irreps_str: str) -> tuple[o3.Irreps, torch.Tensor]:
    irreps_z = o3.Irreps(irreps_str)
    chunks: list[tuple[int, o3.Irrep]] = []
    blocks: list[tuple[int, int, int, int]] = []  # (row offset mu, l, chunk offset, l_out)
    mu0 = 0
    one = o3.Irrep("1o")
    for mul, ir in irreps_z:
        for _ in range(mul):
            for ir_out in ir * one:
                blocks.append((mu0, ir.l, len(chunks), ir_out.l))
                chunks.append((1, ir_out))
            mu0 += ir.dim
    irreps_u = o3.Irreps(chunks)
    d = irreps_z.dim
    w_u = torch.zeros(3 * d, d, 3, dtype=torch.float64)
    offs = [0]
    for _, ir in irreps_u:
        offs.append(offs[-1] + ir.dim)
    for mu, l, c, l_out in blocks:
        cg = o3.wigner_3j(l, 1, l_out, dtype=torch.float64)  # (2l+1, 3, 2l_out+1)
        w_u[offs[c] : offs[c] + 2 * l_out + 1, mu : mu + 2 * l + 1, :] = math.sqrt(
            2 * l_out + 1
        ) * cg.permute(2, 0, 1)
    srt = irreps_u.sort()
    rows = torch.cat(
        [torch.arange(offs[srt.inv[k]], offs[srt.inv[k] + 1]) for k in range(len(irreps_u))]
    )
    w = w_u.reshape(3 * d, 3 * d)[rows]
    return srt.irreps.simplify(), w


def irreps_read_by_heads(irreps_z: o3.Irreps, response: bool) -> set[o3.Irrep]:
    """The irreps an element's density heads (and, with ``response``, its response heads) read
    from the readout features: those of irreps_Z, and of irreps_Z (x) 1o."""
    needed = {ir for _, ir in irreps_z}
    if response:
        needed |= {ir for _, ir in response_irreps(irreps_z)[0]}
    return needed


def _readout_irreps(
    irreps_by_element: Mapping[int, o3.Irreps],
    readout_mul: Sequence[int],
    readout_pseudo_mul: Sequence[int],
    response: bool,
) -> o3.Irreps:
    needed: set[o3.Irrep] = set()
    for irreps in irreps_by_element.values():
        needed |= irreps_read_by_heads(irreps, response)
    out = []
    for ir in sorted(needed):
        natural = ir.p == (-1) ** ir.l
        muls = readout_mul if natural else readout_pseudo_mul
        mul = int(muls[min(ir.l, len(muls) - 1)])
        if mul <= 0:
            raise ValueError(f"readout multiplicity for {ir} is {mul}, need > 0")
        out.append((mul, ir))
    return o3.Irreps(out)


# ------------------------------------------------------------------------------------------
# Constraints and observables (also used by the training code)
# ------------------------------------------------------------------------------------------
def _scatter_sum(x: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum (..., K) over its last axis into n bins -> (..., n)."""
    out = x.new_zeros((*x.shape[:-1], n))
    return out.index_add_(-1, index, x)


def project_electron_count(
    coeffs: torch.Tensor,
    charge_ints: torch.Tensor,
    coef_mol_index: torch.Tensor,
    n_electrons: torch.Tensor,
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """Change the coefficients along ``direction`` u so that q . c = N exactly, per molecule.

    c <- c + u (N - q.c) / (q.u), molecule by molecule (sums in float64). u = q (the default)
    is the minimal Euclidean change. u = the SAD prior coefficients adds or removes a multiple
    of the superposed neutral free-atom densities: each atom gets a share of the correction in
    proportion to its own electrons, centred on its nucleus, so the dipole about the centre of
    nuclear charge does not change (sum_A Z_A (R_A - O) = 0), nor does the polarizability when
    it is a response that is projected. The q direction puts the correction where the s
    functions are and moves the dipole by (correction) x (offset of that charge pattern): a
    few debye for a drug-sized molecule with electrons to spare. A molecule with q . u = 0
    (no charge integrals given) is left unchanged.

    Parameters
    ----------
    coeffs
        (..., M): coefficients, e3nn order; leading axes (e.g. 3 field directions) are
        projected independently.
    charge_ints
        (M,): q_mu = int chi_mu.
    coef_mol_index
        (M,) long: molecule of every coefficient.
    n_electrons
        (B,) or (..., B): target electron count per molecule (0 for responses).
    direction
        (M,): u, e.g. the prior coefficients; None = ``charge_ints``.

    Returns
    -------
    torch.Tensor
        (..., M) projected coefficients, dtype of ``coeffs``.
    """
    n_mol = int(n_electrons.shape[-1])
    q64 = charge_ints.double()
    u64 = q64 if direction is None else direction.double()
    qc = _scatter_sum(coeffs.double() * q64, coef_mol_index, n_mol)
    qu = _scatter_sum(q64 * u64, coef_mol_index, n_mol)
    ok = qu.abs() > 1e-12
    lam = torch.where(ok, (n_electrons.double() - qc) / torch.where(ok, qu, 1.0), 0.0)
    return coeffs + (u64 * lam.index_select(-1, coef_mol_index)).to(coeffs.dtype)


def electron_count(
    coeffs: torch.Tensor,
    charge_ints: torch.Tensor,
    coef_mol_index: torch.Tensor,
    n_mol: int | None = None,
) -> torch.Tensor:
    """N = sum_mu q_mu c_mu per molecule, e.

    Parameters
    ----------
    coeffs
        (..., M): coefficients (or responses).
    charge_ints
        (M,): charge integrals.
    coef_mol_index
        (M,) long: molecule of every coefficient.
    n_mol
        Number of molecules B (default: max index + 1).

    Returns
    -------
    torch.Tensor
        (..., B).
    """
    n = int(coef_mol_index.max()) + 1 if n_mol is None else int(n_mol)
    return _scatter_sum(coeffs * charge_ints, coef_mol_index, n)


def dipole_au(
    coeffs: torch.Tensor,
    dipole_ints: torch.Tensor,
    coef_mol_index: torch.Tensor,
    numbers: torch.Tensor,
    positions_bohr: torch.Tensor,
    batch: torch.Tensor,
    origin_bohr: torch.Tensor,
) -> torch.Tensor:
    """Dipole moment mu = sum_A Z_A (R_A - O) - sum_mu d_mu c_mu, e bohr, per molecule.

    Parameters
    ----------
    coeffs
        (M,): electron-density coefficients (e3nn order).
    dipole_ints
        (3, M): d_mu = int (r - O) chi_mu, bohr, about each molecule's ``origin_bohr``.
    coef_mol_index
        (M,) long.
    numbers
        (A,) long: nuclear charges Z_A.
    positions_bohr
        (A, 3) bohr.
    batch
        (A,) long: molecule of every atom.
    origin_bohr
        (B, 3) bohr.

    Returns
    -------
    torch.Tensor
        (B, 3) e bohr.
    """
    n_mol = origin_bohr.shape[0]
    z = numbers.to(positions_bohr.dtype)
    nuc = z[:, None] * (positions_bohr - origin_bohr[batch])
    nuc = positions_bohr.new_zeros((n_mol, 3)).index_add_(0, batch, nuc)
    elec = _scatter_sum(dipole_ints * coeffs, coef_mol_index, n_mol)  # (3, B)
    return nuc - elec.T


def polarizability_au(
    response: torch.Tensor,
    dipole_ints: torch.Tensor,
    coef_mol_index: torch.Tensor,
    n_mol: int,
    *,
    symmetrize: bool = True,
) -> torch.Tensor:
    """Static polarizability alpha_ij = -sum_mu d_i,mu dc_mu/dE_j, bohr^3, per molecule.

    Parameters
    ----------
    response
        (3, M): response coefficients dc/dE_j (j = x, y, z), charge-neutral per molecule (then
        the origin of ``dipole_ints`` does not matter).
    dipole_ints
        (3, M) bohr.
    coef_mol_index
        (M,) long.
    n_mol
        Number of molecules B.
    symmetrize
        Return (alpha + alpha^T) / 2.

    Returns
    -------
    torch.Tensor
        (B, 3, 3) a0^3.
    """
    prod = dipole_ints[:, None, :] * response[None, :, :]  # (3 i, 3 j, M)
    alpha = -_scatter_sum(prod, coef_mol_index, n_mol).permute(2, 0, 1)
    if symmetrize:
        alpha = 0.5 * (alpha + alpha.transpose(1, 2))
    return alpha


class ChargeTransfer(nn.Module):
    """Antisymmetric pairwise charge flows t_AB from the scalar readout features.

    t_AB = [g(s_A, s_B, b(r_AB)) - g(s_B, s_A, b(r_AB))] u(r_AB / r_c): electrons that flow
    from atom B to atom A (e), with s the 0e channels of the readout features, b the radial
    basis, u the polynomial envelope and g an MLP whose last layer starts at zero (no flow).

    g is evaluated once per directed edge: g(s_B, s_A, b) of edge B -> A is g(s_A, s_B, b) of
    the reverse edge (:func:`~densnet_core.graph.reverse_edges`). Its first layer is linear in
    [s_A, s_B, b], so it is applied to the atoms' features once per atom and gathered per
    edge (W [s_A, s_B, b] = W_A s_A + W_B s_B + W_b b): the same function at a sixth of the
    work on ~12 neighbours per atom.
    """

    def __init__(self, irreps_readout: o3.Irreps, *, n_radial: int, hidden: int) -> None:
        super().__init__()
        idx = []
        for (_mul, ir), sl in zip(irreps_readout, irreps_readout.slices(), strict=True):
            if ir == o3.Irrep("0e"):
                idx.extend(range(sl.start, sl.stop))
        if not idx:
            raise ValueError("charge transfer needs scalar (0e) readout channels")
        self.register_buffer("_scalar_index", torch.tensor(idx, dtype=torch.long), persistent=False)
        self.n_scalar = len(idx)
        self.mlp = nn.Sequential(
            nn.Linear(2 * self.n_scalar + n_radial, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )
        with torch.no_grad():
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.zero_()
        self.envelope = PolynomialEnvelope()

    def forward(
        self,
        feats: torch.Tensor,
        edge_index: torch.Tensor,
        r: torch.Tensor,
        radial: torch.Tensor,
        cutoff_bohr: float,
        *,
        reverse: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Net electrons flowing into every atom, (A,) e; they sum to zero per molecule.

        Parameters
        ----------
        feats
            (A, irreps_readout) readout features.
        edge_index
            (2, E) long, src -> dst, both directions of every pair.
        r
            (E,) distances, bohr.
        radial
            (E, n_radial) radial basis of ``r``.
        cutoff_bohr
            Cutoff of the envelope, bohr.
        reverse
            (E,) long, the reverse of every edge (:func:`~densnet_core.graph.reverse_edges`;
            computed here when not given).
        """
        s = feats.index_select(1, self._scalar_index)
        src, dst = edge_index[0], edge_index[1]
        first, n = self.mlp[0], self.n_scalar
        w = first.weight  # (hidden, 2 n + n_radial): [receiving atom, sending atom, radial]
        to_dst = s @ w[:, :n].T  # (A, hidden), row-major: whole-row gathers below
        from_src = s @ w[:, n : 2 * n].T
        h = torch.addmm(first.bias, radial, w[:, 2 * n :].T)
        h = h + to_dst.index_select(0, dst) + from_src.index_select(0, src)
        g = self.mlp[1:](h).squeeze(1)  # g(s_dst, s_src, b) per edge
        rev = reverse_edges(edge_index, feats.shape[0]) if reverse is None else reverse
        t = (g - g[rev]) * self.envelope(r / cutoff_bohr)
        return feats.new_zeros(feats.shape[0]).index_add_(0, dst, t)


def localise_delta_charges(
    delta: torch.Tensor,
    flow: torch.Tensor,
    charge_ints: torch.Tensor,
    coef_atom_index: torch.Tensor,
    prior: torch.Tensor | None,
) -> torch.Tensor:
    """Replace every atom's Δ electron count by the charge that flowed to it.

    Per atom A the Δ coefficients change along u_A (the atom's SAD prior block scaled to one
    electron; the charge integrals where an atom has no prior) so that
    sum_{mu in A} q_mu delta_mu = flow_A. The shape of Δ within each atom is otherwise the
    heads' own.

    Parameters
    ----------
    delta
        (M,) Δ coefficients from the heads.
    flow
        (A,) electrons each atom receives (:class:`ChargeTransfer`).
    charge_ints
        (M,) q_mu.
    coef_atom_index
        (M,) long: atom of every coefficient.
    prior
        (M,) SAD prior coefficients or None.

    Returns
    -------
    torch.Tensor
        (M,) Δ with atomic electron counts ``flow``.
    """
    n_atoms = flow.shape[0]
    q = charge_ints

    def per_atom(x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(n_atoms).index_add_(0, coef_atom_index, x)

    u = q if prior is None else prior
    norm = per_atom(q * u)
    if prior is not None:  # atoms without a prior block fall back to the charge integrals
        missing = (norm.abs() < 1e-8)[coef_atom_index]
        u = torch.where(missing, q, u)
        norm = per_atom(q * u)
    norm = torch.where(norm.abs() > 1e-12, norm, torch.ones_like(norm))
    excess = flow - per_atom(q * delta)  # (A,) electrons to add to each atom's Δ
    return delta + u * (excess / norm)[coef_atom_index]


# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------
class DensityModel(nn.Module):
    """Equivariant network predicting density (and density-response) coefficients.

    Parameters (keyword-only; defaults are ``PRESETS["default"]``)
    ----------
    irreps_by_element
        Atomic number -> the element's aux irreps (string or ``o3.Irreps``), shells in PySCF
        order, parity (-1)^l, e.g. ``{1: "3x0e+1x1o+1x2e", 6: "6x0e+4x1o+3x2e+1x3o+1x4e"}``.
    aux_basis
        Name of the auxiliary basis the irreps come from (recorded in the config only).
    cutoff_bohr
        Radius-graph cutoff, bohr.
    n_radial
        Number of Bessel functions.
    envelope_p
        Order of the polynomial envelope.
    lmax_sh
        Maximum l of the edge spherical harmonics (and of the neighbour density).
    edge_mul
        Channels per l of the neighbour density in every block (last entry repeats).
    product_mul
        Channels of the per-atom channel-wise tensor products.
    embed_dim
        Number of scalar features from the element embedding.
    hidden_irreps
        Node-feature irreps between interaction blocks.
    n_layers
        Number of interaction blocks (the last one outputs the readout irreps).
    radial_hidden
        Hidden width of the radial MLPs.
    readout_mul, readout_pseudo_mul
        Readout multiplicity per l for natural-parity irreps (l e, l odd -> o) and for
        pseudo-tensors (needed by the response heads only); the last entry repeats.
    avg_num_neighbors
        Messages are divided by sqrt(avg_num_neighbors).
    response
        Build the density-response heads (and so the polarizability).
    count_projection
        How the exact electron count (and the zero charge of the responses) is imposed:
        ``"prior"`` along the SAD prior (leaves the dipole and polarizability unchanged; the
        presets' choice) or ``"euclidean"`` along the charge integrals (the minimal coefficient
        change; the default for configs that predate the option). ``"prior"`` falls back to
        the charge-integral direction for a batch built without a prior. See
        :func:`project_electron_count`.
    charge_transfer
        Make the Δ density's atomic charges local (the presets' choice; False for configs that
        predate the option): every atom's Δ is first made neutral (along that atom's own SAD
        prior), then receives the charge that flows to it from its neighbours, q_A = sum_B t_AB
        with t_AB = g(s_A, s_B, r_AB) - g(s_B, s_A, r_AB) (antisymmetric, so the flows sum to
        zero; s = the scalar readout features, g an MLP, times the cutoff envelope, so it is
        smooth at the cutoff). Electrons then move only between atoms closer than the cutoff,
        and the Δ of any fragment farther than that from the rest is neutral by construction.
        Without it, the heads' free atomic charges add up to a net charge that grows with the
        molecule (~+0.03 e per atom on drug-sized molecules) and the global electron-count
        projection removes it elsewhere: tens of debye of spurious dipole. The response is not
        affected (a field does move charge across the molecule).
    preset
        Name of the preset the values came from (recorded in the config only).
    """

    def __init__(
        self,
        *,
        irreps_by_element: Mapping[int, str | o3.Irreps],
        aux_basis: str | None = None,
        cutoff_bohr: float = PRESETS["default"]["cutoff_bohr"],
        n_radial: int = PRESETS["default"]["n_radial"],
        envelope_p: int = PRESETS["default"]["envelope_p"],
        lmax_sh: int = PRESETS["default"]["lmax_sh"],
        edge_mul: Sequence[int] = PRESETS["default"]["edge_mul"],
        product_mul: int = PRESETS["default"]["product_mul"],
        embed_dim: int = PRESETS["default"]["embed_dim"],
        hidden_irreps: str = PRESETS["default"]["hidden_irreps"],
        n_layers: int = PRESETS["default"]["n_layers"],
        radial_hidden: int = PRESETS["default"]["radial_hidden"],
        readout_mul: Sequence[int] = PRESETS["default"]["readout_mul"],
        readout_pseudo_mul: Sequence[int] = PRESETS["default"]["readout_pseudo_mul"],
        avg_num_neighbors: float = PRESETS["default"]["avg_num_neighbors"],
        response: bool = PRESETS["default"]["response"],
        count_projection: str = "euclidean",
        charge_transfer: bool = False,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        if count_projection not in COUNT_PROJECTIONS:
            raise ValueError(
                f"count_projection must be one of {COUNT_PROJECTIONS}, got {count_projection!r}"
            )
        self.count_projection = count_projection
        with _fast_e3nn_build():
            self._build(
                irreps_by_element=irreps_by_element,
                aux_basis=aux_basis,
                cutoff_bohr=cutoff_bohr,
                n_radial=n_radial,
                envelope_p=envelope_p,
                lmax_sh=lmax_sh,
                edge_mul=edge_mul,
                product_mul=product_mul,
                embed_dim=embed_dim,
                hidden_irreps=hidden_irreps,
                n_layers=n_layers,
                radial_hidden=radial_hidden,
                readout_mul=readout_mul,
                readout_pseudo_mul=readout_pseudo_mul,
                avg_num_neighbors=avg_num_neighbors,
                response=response,
                charge_transfer=charge_transfer,
                preset=preset,
            )

    def _build(
        self,
        *,
        irreps_by_element: Mapping[int, str | o3.Irreps],
        aux_basis: str | None,
        cutoff_bohr: float,
        n_radial: int,
        envelope_p: int,
        lmax_sh: int,
        edge_mul: Sequence[int],
        product_mul: int,
        embed_dim: int,
        hidden_irreps: str,
        n_layers: int,
        radial_hidden: int,
        readout_mul: Sequence[int],
        readout_pseudo_mul: Sequence[int],
        avg_num_neighbors: float,
        response: bool,
        charge_transfer: bool,
        preset: str | None,
    ) -> None:
        irreps_el = {int(z): o3.Irreps(ir) for z, ir in sorted(irreps_by_element.items())}
        for z, irreps in irreps_el.items():
            for _, ir in irreps:
                if ir.p != (-1) ** ir.l:
                    raise ValueError(f"element {z}: {ir} does not have parity (-1)^l")
        self.elements: list[int] = list(irreps_el)
        self.irreps_by_element = irreps_el
        self.element_dims: dict[int, int] = {z: ir.dim for z, ir in irreps_el.items()}
        self.cutoff_bohr = float(cutoff_bohr)
        self.has_response = bool(response)
        self.config: dict[str, Any] = {
            "irreps_by_element": {str(z): str(ir) for z, ir in irreps_el.items()},
            "aux_basis": aux_basis,
            "cutoff_bohr": float(cutoff_bohr),
            "n_radial": int(n_radial),
            "envelope_p": int(envelope_p),
            "lmax_sh": int(lmax_sh),
            "edge_mul": [int(m) for m in edge_mul],
            "product_mul": int(product_mul),
            "embed_dim": int(embed_dim),
            "hidden_irreps": str(o3.Irreps(hidden_irreps)),
            "n_layers": int(n_layers),
            "radial_hidden": int(radial_hidden),
            "readout_mul": [int(m) for m in readout_mul],
            "readout_pseudo_mul": [int(m) for m in readout_pseudo_mul],
            "avg_num_neighbors": float(avg_num_neighbors),
            "response": bool(response),
            "count_projection": self.count_projection,
            "charge_transfer": bool(charge_transfer),
            "preset": preset,
        }

        # element index lookup (Z -> 0..n_el-1); -1 for unsupported elements
        z_max = max(self.elements)
        lookup = torch.full((z_max + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(self.elements)] = torch.arange(len(self.elements))
        self.register_buffer("_element_lookup", lookup, persistent=False)

        n_el = len(self.elements)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax_sh)
        self.spherical_harmonics = o3.SphericalHarmonics(
            self.irreps_sh, normalize=True, normalization="component"
        )
        self.radial_basis = RadialBasis(
            n_radial=n_radial, cutoff_bohr=cutoff_bohr, envelope_p=envelope_p
        )
        self.irreps_embed = o3.Irreps(f"{embed_dim}x0e")
        self.embedding = o3.Linear(o3.Irreps(f"{n_el}x0e"), self.irreps_embed)
        self.irreps_readout = _readout_irreps(
            irreps_el, readout_mul, readout_pseudo_mul, self.has_response
        )
        layers = []
        irreps = self.irreps_embed
        for k in range(n_layers):
            out = self.irreps_readout if k == n_layers - 1 else o3.Irreps(hidden_irreps)
            layers.append(
                Interaction(
                    irreps_in=irreps,
                    irreps_out=out,
                    lmax_sh=lmax_sh,
                    edge_mul=edge_mul,
                    product_mul=product_mul,
                    n_elements=n_el,
                    n_radial=n_radial,
                    radial_hidden=radial_hidden,
                    avg_num_neighbors=avg_num_neighbors,
                    element_self_interaction=k < n_layers - 1,
                )
            )
            irreps = out
        self.layers = nn.ModuleList(layers)

        readout_set = {ir for _, ir in self.irreps_readout}
        self.heads = nn.ModuleDict()
        self.response_heads = nn.ModuleDict()
        # inverse CG maps: constants rebuilt from the config, kept in float64 outside the
        # state_dict and out of reach of .to()/.float(), cast per call (float32-rounded maps
        # would break float64 equivariance at the 1e-7 level)
        self._cg_inv: dict[int, torch.Tensor] = {}
        self._cg_cache: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
        self.charge_transfer: nn.Module | None = None
        if charge_transfer:
            n_scalar = sum(mul for mul, ir in self.irreps_readout if ir == o3.Irrep("0e"))
            self.charge_transfer = ChargeTransfer(
                self.irreps_readout, n_radial=n_radial, hidden=radial_hidden
            )
            assert n_scalar == self.charge_transfer.n_scalar
        for z, irreps_z in irreps_el.items():
            self.heads[str(z)] = o3.Linear(self.irreps_readout, irreps_z.simplify())
            if self.has_response:
                irreps_r, w = response_irreps(irreps_z)
                assert {ir for _, ir in irreps_r} <= readout_set
                self.response_heads[str(z)] = o3.Linear(self.irreps_readout, irreps_r)
                self._cg_inv[z] = w
        # the readout block per group of elements, on the irreps their heads read
        needs = [irreps_read_by_heads(ir, self.has_response) for ir in irreps_el.values()]
        self.element_readout = ElementReadout(self.layers[-1], needs)
        # False: e3nn's full readout block and one-hot self-interaction in inference too
        self.use_element_readout = True

    # ---- construction helpers ---------------------------------------------------------------
    @classmethod
    def from_preset(
        cls,
        name: str,
        *,
        irreps_by_element: Mapping[int, str | o3.Irreps],
        aux_basis: str | None = None,
        **overrides: Any,
    ) -> DensityModel:
        """Build from ``PRESETS[name]`` with keyword overrides.

        The config records ``preset`` as ``name`` when the overrides change nothing, and as
        ``"name+custom"`` when they do (the config's own values are what counts).
        """
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        base = copy.deepcopy(PRESETS[name])
        changed = any(
            k not in base or _as_plain(v) != _as_plain(base[k]) for k, v in overrides.items()
        )
        kwargs = {**base, **overrides}
        label = f"{name}+custom" if changed else name
        return cls(irreps_by_element=irreps_by_element, aux_basis=aux_basis, preset=label, **kwargs)

    @classmethod
    def for_aux_basis(
        cls, aux_basis: str, elements: Sequence[int | str], preset: str = "default", **overrides
    ) -> DensityModel:
        """Build for an aux basis by name (irreps from :mod:`densnet_core.basis`)."""
        from densnet_core.basis import element_irreps

        irreps = {}
        for el in elements:
            ir = o3.Irreps(element_irreps(el, aux_basis))
            z = el if isinstance(el, int) else _symbol_to_z(el)
            irreps[int(z)] = ir
        return cls.from_preset(preset, irreps_by_element=irreps, aux_basis=aux_basis, **overrides)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, deferred_codegen: bool = False
    ) -> DensityModel:
        """Rebuild from ``model.config`` (e.g. after a JSON round trip; keys may be strings).

        ``deferred_codegen``: e3nn's generated code is built on first use
        (:mod:`densnet_core.deferred_codegen`; for prediction, where most of it is never
        called).
        """
        from densnet_core.deferred_codegen import deferred_e3nn_codegen

        cfg = dict(config)
        cfg["irreps_by_element"] = {int(z): ir for z, ir in cfg["irreps_by_element"].items()}
        with deferred_e3nn_codegen() if deferred_codegen else contextlib.nullcontext():
            return cls(**cfg)

    def collate(
        self,
        molecules: Sequence[MoleculeInput],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> dict[str, torch.Tensor]:
        """:func:`densnet_core.graph.collate` with this model's element dims and cutoff."""
        p = next(self.parameters())
        return collate(
            molecules,
            element_dims=self.element_dims,
            cutoff_bohr=self.cutoff_bohr,
            dtype=p.dtype if dtype is None else dtype,
            device=p.device if device is None else device,
        )

    # ---- forward ----------------------------------------------------------------------------
    def _cg_matrix(self, z: int, like: torch.Tensor) -> torch.Tensor:
        key = (z, like.dtype, like.device)
        w = self._cg_cache.get(key)
        if w is None:
            w = self._cg_inv[z].to(dtype=like.dtype, device=like.device)
            self._cg_cache[key] = w
        return w

    def node_features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Readout features (A, irreps_readout) of every atom.

        Without autograd (inference) the readout block runs per group of elements
        (:mod:`densnet_core.readout`): the blocks an atom's heads never read are then zero,
        every other block is what the full block gives."""
        return self._features_and_edges(batch)[0]

    def _features_and_edges(
        self, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Readout features (A, irreps_readout), edge_index (2, E), distances (E,) bohr, the
        radial basis (E, n_radial) and the reverse of every edge (E,) long."""
        numbers = batch["numbers"]
        pos = batch["positions_bohr"]
        if "edge_index" in batch:
            edge_index = batch["edge_index"]
        else:
            edge_index = radius_graph(pos, batch["batch"], self.cutoff_bohr)
        src, dst = edge_index[0], edge_index[1]
        lookup = self._element_lookup
        el = lookup[numbers.clamp(0, lookup.shape[0] - 1)]
        el = torch.where(numbers < lookup.shape[0], el, torch.full_like(el, -1))
        if bool((el < 0).any()):
            bad = sorted(set(numbers[el < 0].tolist()))
            raise ValueError(f"elements {bad} are not supported by this model")
        node_attr = torch.nn.functional.one_hot(el, len(self.elements)).to(pos.dtype)
        vec = pos[src] - pos[dst]  # from the receiving atom to its neighbour
        r = vec.norm(dim=-1)
        edge_sh = self.spherical_harmonics(vec)
        edge_radial = self.radial_basis(r)
        x = self.embedding(node_attr)
        rev = reverse_edges(edge_index, x.shape[0])
        edges = EdgeGeometry.build(edge_index, edge_sh, edge_radial, x.shape[0], reverse=rev)
        # the per-element inference paths (exact; autograd runs e3nn's own blocks)
        per_element = self.use_element_readout and not torch.is_grad_enabled()
        if per_element and self._component_major_ok():
            # the same blocks on component-major features (densnet_core.component_major)
            atoms_by_element = [
                (int(e), torch.nonzero(el == e).squeeze(1)) for e in torch.unique(el).tolist()
            ]
            order = torch.argsort(torch.cat([idx for _, idx in atoms_by_element]))
            blocks: list[Any] = [x]  # the embedding: one block of scalars
            for layer in self.layers[:-1]:
                a = layer.edge.blocks(blocks[0], edges)
                blocks = layer.update_component_major(blocks, a, atoms_by_element, order)
            x = self.element_readout(self.layers[-1], blocks, el, edges)
            return x, edge_index, r, edge_radial, rev
        for layer in self.layers[:-1]:  # training, or a model built outside the presets
            x = layer(x, node_attr, edges)
        if per_element:
            x = self.element_readout(self.layers[-1], x, el, edges)
        else:
            x = self.layers[-1](x, node_attr, edges)
        return x, edge_index, r, edge_radial, rev

    def build_inference_graphs(self) -> None:
        """Generate now the e3nn code that inference calls, for a model built with deferred
        code generation (:mod:`densnet_core.deferred_codegen`; a no-op otherwise): once, here,
        rather than in every worker forked from this process. The hidden blocks' own graphs
        stay unbuilt where they run on component-major kernels (their weights are read, their
        code is not).
        """
        from densnet_core.deferred_codegen import DeferredGraph

        skip: set[int] = set()
        if self._component_major_ok():
            replaced = ("product", "self_interaction", "lin_left", "lin_right", "lin_out", "gate")
            for layer in self.layers[:-1]:
                for name in replaced:
                    skip.update(id(m) for m in getattr(layer, name).modules())
        groups = [g for g in self.element_readout.groups if g is not None]
        for module in [*self.modules(), *(m for g in groups for m in g.modules())]:
            if isinstance(module, DeferredGraph) and id(module) not in skip:
                module.real_module()

    def _component_major_ok(self) -> bool:
        """Whether the hidden blocks can run on component-major blocks: one leading block of
        all scalars, per-element self-interactions and plain gates (true of every preset)."""
        ok = self.__dict__.get("_cm_ok")
        if ok is None:
            ok = len(self.layers[0].irreps_in) == 1 and all(
                layer.element_self_interaction
                and per_element_form(layer.self_interaction)
                and layer.irreps_in[0][0] == layer.n_scalars
                and simple_gate(layer.gate)
                for layer in self.layers[:-1]
            )
            self.__dict__["_cm_ok"] = ok
        return ok

    def forward(
        self, batch: Mapping[str, torch.Tensor], *, compute_response: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Predict the density, its response and the observables for a batch.

        Parameters
        ----------
        batch
            From :func:`densnet_core.graph.collate` (keys and shapes there). Needs at least
            numbers, positions_bohr, batch, coef_mol_index, n_electrons_ref, charge_ints,
            dipole_ints, origin_bohr; prior_coeffs, edge_index and the per-element gather
            indices are used when present and otherwise built.
        compute_response
            Also predict the response (default: when the model has response heads).

        Returns
        -------
        dict
            ``density_coeffs`` (M,), ``delta_coeffs`` (M,) (before the projection),
            ``n_electrons`` (B,) e, ``dipole_au`` (B, 3) e bohr; with the response:
            ``response_coeffs`` (3, M) dc/dE_j, ``polarizability_au`` (B, 3, 3) a0^3.
        """
        do_resp = self.has_response if compute_response is None else bool(compute_response)
        if do_resp and not self.has_response:
            raise ValueError("this model has no response heads")
        feats, edge_index, edge_r, edge_radial, rev = self._features_and_edges(batch)
        numbers = batch["numbers"]
        n_coef = batch["coef_mol_index"].shape[0]
        n_mol = batch["n_electrons_ref"].shape[0]
        if any(k.startswith("elem") for k in batch):
            gather = batch
        else:
            gather = element_gather_indices(numbers, batch["atom_coef_offset"], self.element_dims)

        idx_l, val_l, ridx_l, rval_l = [], [], [], []
        for z in self.elements:
            key = f"elem{z}_atoms"
            if key not in gather:
                continue
            atoms, coefs = gather[key], gather[f"elem{z}_coefs"]
            f = feats.index_select(0, atoms)
            idx_l.append(coefs)
            val_l.append(self.heads[str(z)](f).reshape(-1))
            if do_resp:
                zr = self.response_heads[str(z)](f)  # (n_Z, 3 d)
                t = zr @ self._cg_matrix(z, zr)  # (n_Z, 3 d) = (n_Z, d, 3) flat
                ridx_l.append(coefs)
                rval_l.append(t.reshape(-1, 3))
        idx = torch.cat(idx_l)
        delta = feats.new_zeros(n_coef).index_copy(0, idx, torch.cat(val_l))
        prior = batch.get("prior_coeffs")
        q = batch["charge_ints"]
        cmol = batch["coef_mol_index"]
        if self.charge_transfer is not None:
            flow = self.charge_transfer(
                feats, edge_index, edge_r, edge_radial, self.cutoff_bohr, reverse=rev
            )
            delta = localise_delta_charges(delta, flow, q, batch["coef_atom_index"], prior)
        coeffs = delta if prior is None else prior + delta
        u = prior if self.count_projection == "prior" and prior is not None else None
        coeffs = project_electron_count(coeffs, q, cmol, batch["n_electrons_ref"], u)
        out = {
            "density_coeffs": coeffs,
            "delta_coeffs": delta,
            "n_electrons": electron_count(coeffs, q, cmol, n_mol),
            "dipole_au": dipole_au(
                coeffs,
                batch["dipole_ints"],
                cmol,
                numbers,
                batch["positions_bohr"],
                batch["batch"],
                batch["origin_bohr"],
            ),
        }
        if do_resp:
            resp = feats.new_zeros((n_coef, 3)).index_copy(0, idx, torch.cat(rval_l)).T
            resp = project_electron_count(resp, q, cmol, feats.new_zeros((3, n_mol)), u)
            out["response_coeffs"] = resp
            out["polarizability_au"] = polarizability_au(resp, batch["dipole_ints"], cmol, n_mol)
        return out


def _symbol_to_z(symbol: str) -> int:
    from pyscf.data.elements import charge

    return int(charge(symbol))
