"""Equivariant linear maps and channel-wise products on component-major feature blocks.

e3nn stores a block of ``mul`` copies of an irrep of dimension ``d`` channel-major: an atom's
features are ``(mul, d)`` flattened. Every ``o3.Linear`` instruction then contracts over the
channel index in the middle, which e3nn's generated code does as an einsum that copies its
input into a matrix layout and its output back, and its channel-wise products copy every
path's result into its output columns. On the readout block of the ``wide`` preset these
copies were ~40 % of the block's time.

Here a block is held **component-major**: a ``(d * n, mul)`` matrix whose row ``i * n + a`` is
component ``i`` of atom ``a`` (a ``(d, n, mul)`` array). Then

- a linear map of one block is one matrix product ``X @ W`` of the block, with no copy (rows
  of every component share the weights), accumulated over the input blocks of each output;
- the channel-wise product of a ``(D1, n * mul)`` left factor and a ``(d2, n * mul)`` right
  block is one matrix product ``M.T @ outer`` of every path's Clebsch-Gordan constants with
  their outer product, and its result rows are the output blocks, already component-major.

Only the conversion into and out of this layout copies (once per block). The numbers are those
of the e3nn modules, evaluated with their own weights (``tests/core/test_readout.py`` checks
the readout block built on this against e3nn's full block in float64). Used without autograd
(inference); training runs e3nn's modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from e3nn import o3

from densnet_core.deferred_codegen import DeferredGraph

__all__ = [
    "ComponentMajorLinear",
    "ComponentMajorProduct",
    "cast_once",
    "from_e3nn",
    "to_e3nn",
]

Blocks = list[torch.Tensor]


def from_e3nn(x: torch.Tensor, irreps: o3.Irreps) -> Blocks:
    """Split e3nn-layout features into component-major blocks.

    Parameters
    ----------
    x
        (n, irreps.dim) features in e3nn's layout.
    irreps
        Their irreps.

    Returns
    -------
    list of torch.Tensor
        Per block of ``irreps``: (d * n, mul). Scalar blocks are views of ``x`` (no copy).
    """
    n = x.shape[0]
    out = []
    for (mul, ir), sl in zip(irreps, irreps.slices(), strict=True):
        block = x[:, sl]
        if ir.dim == 1:
            out.append(block)
        else:
            out.append(block.reshape(n, mul, ir.dim).permute(2, 0, 1).reshape(ir.dim * n, mul))
    return out


def to_e3nn(blocks: Sequence[torch.Tensor | None], irreps: o3.Irreps, n: int) -> torch.Tensor:
    """Join component-major blocks into e3nn-layout features (missing blocks as zeros).

    Parameters
    ----------
    blocks
        Per block of ``irreps``: (d * n, mul), or None for a block of zeros.
    irreps
        Their irreps.
    n
        Number of atoms.

    Returns
    -------
    torch.Tensor
        (n, irreps.dim).
    """
    like = next(b for b in blocks if b is not None)
    parts = []
    for (mul, ir), block in zip(irreps, blocks, strict=True):
        if block is None:
            parts.append(like.new_zeros((n, mul * ir.dim)))
        elif ir.dim == 1:
            parts.append(block)
        else:
            parts.append(block.reshape(ir.dim, n, mul).permute(1, 2, 0).reshape(n, mul * ir.dim))
    return torch.cat(parts, dim=1)


class ComponentMajorLinear:
    """An ``o3.Linear``'s instructions, evaluated on component-major blocks.

    Parameters
    ----------
    linear
        The ``o3.Linear`` whose instructions (and weight layout) to follow; its weights are
        passed at every call (its own, or a slice of a larger module's in the same order).

    Raises
    ------
    ValueError
        For a linear map with biases.
    """

    def __init__(self, linear: Any) -> None:
        if any(ins.i_in == -1 for ins in linear.instructions):
            raise ValueError("biases are not supported")
        self.irreps_in = linear.irreps_in
        self.irreps_out = linear.irreps_out
        # per output block: (input block, weight start, mul_in, mul_out, path weight)
        self.paths: list[list[tuple[int, int, int, int, float]]] = [[] for _ in linear.irreps_out]
        start = 0
        for ins in linear.instructions:
            mul_in, mul_out = ins.path_shape
            self.paths[ins.i_out].append(
                (ins.i_in, start, int(mul_in), int(mul_out), float(ins.path_weight))
            )
            start += mul_in * mul_out
        self.weight_numel = start

    def __call__(
        self,
        blocks: Sequence[torch.Tensor | None],
        weight: torch.Tensor,
        *,
        scale: Mapping[int, torch.Tensor] | None = None,
        add: Sequence[torch.Tensor | None] | None = None,
    ) -> list[torch.Tensor | None]:
        """The linear map.

        Parameters
        ----------
        blocks
            Per input block: (d * n, mul_in), or None for a block of zeros.
        weight
            (weight_numel,) flat weights in the module's order.
        scale
            Optional per-channel factors of input blocks, {block: (mul_in,)}: the block is
            read as ``block * scale[block]`` (folded into the weights, not applied to the block).
        add
            Optional per output block: a (d * n, mul_out) term to add (or None).

        Returns
        -------
        list
            Per output block: (d * n, mul_out), or None where no input reaches it.
        """
        if weight.shape[-1] != self.weight_numel:
            raise ValueError(f"{weight.shape[-1]} weights for a map with {self.weight_numel}")
        out: list[torch.Tensor | None] = []
        for o, paths in enumerate(self.paths):
            acc = None if add is None else add[o]
            for i_in, start, mul_in, mul_out, pw in paths:
                x = blocks[i_in]
                if x is None:
                    continue
                w = weight[start : start + mul_in * mul_out].view(mul_in, mul_out) * pw
                if scale is not None and i_in in scale:
                    w = w * scale[i_in].unsqueeze(1)
                acc = x @ w if acc is None else acc.addmm(x, w)
            out.append(acc)
        return out


def cast_once(
    cache: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]],
    constants: list[torch.Tensor],
    like: torch.Tensor,
) -> list[torch.Tensor]:
    """``constants`` in the dtype and on the device of ``like``, cast once per (dtype, device)
    and kept in ``cache``."""
    key = (like.dtype, like.device)
    if key not in cache:
        cache[key] = [c.to(dtype=like.dtype, device=like.device) for c in constants]
    return cache[key]


def _wigner_3j(tp: Any, l1: int, l2: int, l3: int) -> torch.Tensor:
    """The module's own Clebsch-Gordan constant for a path (float64), so that the product
    reproduces it exactly (a model built in float32 keeps float32-rounded constants); e3nn's
    exact value where its generated code has none (the specialised l1 = 0 and 1 x 1 -> 1
    paths)."""
    compiled = getattr(tp, "_compiled_main_left_right", None)
    name = f"_w3j_{l1}_{l2}_{l3}"
    if isinstance(compiled, DeferredGraph):  # a model loaded for prediction
        own = compiled.constant(name)
    else:
        own = getattr(compiled, name, None)
    if isinstance(own, torch.Tensor):
        return own.detach().to(device="cpu", dtype=torch.float64)
    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64)


class ComponentMajorProduct:
    """A channel-wise (``"uuu"``) ``o3.TensorProduct`` on component-major blocks.

    For every path (l1, l2 -> l3)

        out[n, u, k] = path_weight * w[u] * sum_ij C[i, j, k] x1[n, u, i] x2[n, u, j]

    with C the Wigner 3j symbol. e3nn's generated code evaluates each path on its own (an
    outer product, an einsum with C, a reshape and a copy per path; 20 paths in the readout
    block). Here the left blocks are stacked, their outer product with one right block is
    formed once, and one matrix holding every path's ``path_weight * C`` that reads that right
    block maps it to those paths' outputs.

    Parameters
    ----------
    tp
        The tensor product: every instruction ``"uuu"`` with weights, every irrep of both
        inputs and of the output with the same multiplicity, one instruction per output block.

    Raises
    ------
    ValueError
        For any other tensor product.

    Notes
    -----
    The per-channel path weights are *not* applied: :meth:`channel_weights` returns them per
    output block, for the caller to fold into the linear map that follows.
    """

    def __init__(self, tp: Any) -> None:
        muls = {m for m, _ in (*tp.irreps_in1, *tp.irreps_in2, *tp.irreps_out)}
        if len(muls) != 1 or not all(
            ins.connection_mode == "uuu" and ins.has_weight for ins in tp.instructions
        ):
            raise ValueError("needs 'uuu' instructions with weights and one multiplicity")
        self.mul = muls.pop()
        self.irreps_out = tp.irreps_out
        in1, in2, out = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
        # rows of each left block in the stacked (D1, n * mul) left factor
        row, self.left_rows = 0, []
        for _, ir in in1:
            self.left_rows.append((row, row + ir.dim))
            row += ir.dim
        self.groups: list[dict[str, Any]] = []
        where: dict[int, tuple[int, int, int]] = {}  # output block -> (group, row0, row1)
        for i2 in sorted({ins.i_in2 for ins in tp.instructions}):
            paths = [ins for ins in tp.instructions if ins.i_in2 == i2]
            blocks1 = sorted({ins.i_in1 for ins in paths})
            if blocks1 != list(range(blocks1[0], blocks1[-1] + 1)):
                raise ValueError("a path group reads non-adjacent left blocks")
            r0, r1 = self.left_rows[blocks1[0]][0], self.left_rows[blocks1[-1]][1]
            l2, d2 = in2[i2].ir.l, in2[i2].ir.dim
            n_cols = sum(out[ins.i_out].ir.dim for ins in paths)
            matrix = torch.zeros(r1 - r0, d2, n_cols, dtype=torch.float64)
            col = 0
            for ins in paths:
                l1, l3 = in1[ins.i_in1].ir.l, out[ins.i_out].ir.l
                d1, d3 = 2 * l1 + 1, 2 * l3 + 1
                o = self.left_rows[ins.i_in1][0] - r0
                matrix[o : o + d1, :, col : col + d3] = float(ins.path_weight) * _wigner_3j(
                    tp, l1, l2, l3
                )
                if ins.i_out in where:
                    raise ValueError("two instructions write the same output block")
                where[ins.i_out] = (len(self.groups), col, col + d3)
                col += d3
            self.groups.append(
                {
                    "left": (r0, r1),
                    "right": (i2, d2),
                    # (n_cols, D1 * d2), float64
                    "matrix_t": matrix.reshape((r1 - r0) * d2, n_cols).T.contiguous(),
                }
            )
        if sorted(where) != list(range(len(out))):
            raise ValueError("every output block needs exactly one instruction")
        self.outputs = [where[i] for i in range(len(out))]  # (group, first row, end row)
        # weights of each output block's instruction in the flat weight vector
        self.weight_start = [0] * len(out)
        for k, ins in enumerate(tp.instructions):
            self.weight_start[ins.i_out] = k * self.mul
        self._cast: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}

    def _matrices(self, like: torch.Tensor) -> list[torch.Tensor]:
        return cast_once(self._cast, [g["matrix_t"] for g in self.groups], like)

    def channel_weights(self, weight: torch.Tensor) -> dict[int, torch.Tensor]:
        """{output block: (mul,) its per-channel weights} from the flat (weight_numel,)."""
        return {o: weight[s : s + self.mul] for o, s in enumerate(self.weight_start)}

    def __call__(self, left: torch.Tensor, right: Sequence[torch.Tensor], n: int) -> Blocks:
        """The product without its per-channel weights.

        Parameters
        ----------
        left
            (D1 * n, mul) contiguous: the first input's blocks stacked component-major (rows
            of block ``b`` at ``left_rows[b]`` times n).
        right
            Per block of the second input: (d2 * n, mul) contiguous.
        n
            Number of atoms.

        Returns
        -------
        list of torch.Tensor
            Per output block: (d3 * n, mul), views of one result per path group.
        """
        n_mul = n * self.mul
        lhs = left.view(self.left_rows[-1][1], n_mul)  # (D1, n * mul)
        results = []
        for g, m_t in zip(self.groups, self._matrices(left), strict=True):
            a, b = g["left"]
            i2, d2 = g["right"]
            r = right[i2].view(d2, n_mul)
            outer = (lhs[a:b].unsqueeze(1) * r.unsqueeze(0)).reshape((b - a) * d2, n_mul)
            results.append(m_t @ outer)  # (n_cols, n * mul)
        return [results[g][c0:c1].view((c1 - c0) * n, self.mul) for g, c0, c1 in self.outputs]


def gate_blocks(
    gate: Any, y: Sequence[torch.Tensor | None], gated: Sequence[int], n: int
) -> list[torch.Tensor | None]:
    """e3nn's ``Gate`` on component-major blocks.

    Parameters
    ----------
    gate
        The ``e3nn.nn.Gate`` (input: one block of scalars and gates, then the gated blocks).
    y
        Component-major blocks of (a part of) the gate's input: ``y[0]`` (n, scalars + gates),
        then ``y[1 + k]`` the gated block ``gated[k]``.
    gated
        Index in ``gate.irreps_gated`` of each block after the first.
    n
        Number of atoms.

    Returns
    -------
    list
        Per block of ``gate.irreps_out``: (d * n, mul), None for gated blocks not given.
    """
    ns = gate.irreps_scalars.dim
    starts = [0]
    for mul, _ in gate.irreps_gated:
        starts.append(starts[-1] + mul)
    y0 = y[0]
    if y0 is None:
        raise ValueError("the gate needs its scalars")
    gates = gate.act_gates(y0[:, ns:])
    out: list[torch.Tensor | None] = [gate.act_scalars(y0[:, :ns])]
    out += [None] * len(gate.irreps_gated)
    for k, b in enumerate(gated):
        block = y[1 + k]
        if block is None:
            continue
        mul, ir = gate.irreps_gated[b]
        g = gates[:, starts[b] : starts[b] + mul]
        out[1 + b] = (block.view(ir.dim, n, mul) * g).view(ir.dim * n, mul)
    return out


def simple_gate(gate: Any) -> bool:
    """True when the gate's input is one block of 0e scalars and gates, then the gated blocks
    (what :func:`gate_blocks` handles; the model's gates are built so)."""
    ns, ng = gate.irreps_scalars.dim, gate.irreps_gates.dim
    return (
        gate.irreps_scalars == o3.Irreps(f"{ns}x0e")
        and o3.Irreps(f"{ns + ng}x0e") + gate.irreps_gated == gate.irreps_in
    )


def rows_of(block: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The rows of atoms ``idx`` (m,) of a (d * n, mul) block: (d * m, mul)."""
    d = block.shape[0] // n
    if d == 1:
        return block.index_select(0, idx)
    return block.view(d, n, block.shape[1]).index_select(1, idx).view(d * idx.numel(), -1)


def block_maps(
    lin_left: Any, lin_right: Any, product: Any, lin_out: Any
) -> dict[str, ComponentMajorLinear | ComponentMajorProduct]:
    """The maps of an interaction block (or of its restriction) on component-major blocks."""
    return {
        "lin_left": ComponentMajorLinear(lin_left),
        "lin_right": ComponentMajorLinear(lin_right),
        "product": ComponentMajorProduct(product),
        "lin_out": ComponentMajorLinear(lin_out),
    }


def gate_input(
    maps: Mapping[str, Any],
    x: Sequence[torch.Tensor],
    a: Sequence[torch.Tensor],
    n: int,
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    self_interaction: Sequence[torch.Tensor | None],
) -> list[torch.Tensor | None]:
    """An interaction block up to its gate: ``lin_out([A, Linear(x) (x) Linear(A)]) + si``.

    Parameters
    ----------
    maps
        From :func:`block_maps`.
    x, a
        Per block of the node features and of the neighbour density: (d * n, mul).
    n
        Number of atoms.
    weights
        Flat weights of ``lin_left``, ``lin_right``, the product and ``lin_out``.
    self_interaction
        Per block of the gate's input: the self-interaction term (d * n, mul), or None.

    Returns
    -------
    list
        Per block of the gate's input: (d * n, mul), None where nothing reaches it.
    """
    w_left, w_right, w_product, w_out = weights
    left = torch.cat(maps["lin_left"](x, w_left), dim=0)
    right = maps["lin_right"](a, w_right)
    p = maps["product"](left, right, n)
    scale = {len(a) + o: w for o, w in maps["product"].channel_weights(w_product).items()}
    return maps["lin_out"]([*a, *p], w_out, scale=scale, add=self_interaction)
