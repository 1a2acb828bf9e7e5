"""e3nn's channel-wise (``"uuu"``) tensor product as one matrix product per second-input irrep.

The interaction blocks couple the node features ``x1`` (few irreps, l <= 1) with the neighbour
density ``x2`` (l up to 5) channel by channel: for every path (l1, l2 -> l3)

    out[n, u, k] = path_weight * w[u] * sum_ij C[i, j, k] x1[n, u, i] x2[n, u, j]

with C the Wigner 3j symbol. e3nn's generated code evaluates each path on its own (an outer
product, an einsum with C, a reshape and a copy per path; 20 paths in the readout block).
:class:`FusedChannelwiseProduct` stacks the components of the first input's irreps, forms
their outer product with one irrep of the second input once, and multiplies it by one
matrix holding every path's ``path_weight * C`` that reads that irrep; the per-channel
weights scale the result. The numbers are those of the e3nn module (checked in float64 in
``tests/core/test_channelwise.py``); only the order of the floating-point sums differs.

Used on the inference paths (no autograd) of :mod:`densnet_core.model` and
:mod:`densnet_core.readout`; training runs e3nn's modules.
"""

from __future__ import annotations

from typing import Any

import torch
from e3nn import o3

__all__ = ["FusedChannelwiseProduct", "cast_once", "fused_product"]


def _wigner_3j(tp: Any, l1: int, l2: int, l3: int) -> torch.Tensor:
    """The module's own Clebsch-Gordan constant for a path (float64), so that the fused
    product reproduces it exactly (a model built in float32 keeps float32-rounded constants);
    e3nn's exact value where its generated code has none (the specialised l1 = 0 and
    1 x 1 -> 1 paths)."""
    compiled = getattr(tp, "_compiled_main_left_right", None)
    own = getattr(compiled, f"_w3j_{l1}_{l2}_{l3}", None)
    if isinstance(own, torch.Tensor):
        return own.detach().to(device="cpu", dtype=torch.float64)
    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64)


class FusedChannelwiseProduct:
    """The constants of one ``"uuu"`` :class:`e3nn.o3.TensorProduct`, and its evaluation.

    Parameters
    ----------
    tp
        A tensor product whose instructions are all ``"uuu"`` with weights, every irrep of
        both inputs and of the output having the same multiplicity.

    Raises
    ------
    ValueError
        For any other tensor product.
    """

    def __init__(self, tp: Any) -> None:
        muls = {m for m, _ in (*tp.irreps_in1, *tp.irreps_in2, *tp.irreps_out)}
        if len(muls) != 1 or not all(
            ins.connection_mode == "uuu" and ins.has_weight for ins in tp.instructions
        ):
            raise ValueError("needs 'uuu' instructions with weights and one multiplicity")
        self.mul = muls.pop()
        self.dim_out = tp.irreps_out.dim
        in1, in2, out = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
        s1, s2 = in1.slices(), in2.slices()
        # weights of each instruction in the flat weight vector (in instruction order)
        w_start = [k * self.mul for k in range(len(tp.instructions))]
        self.groups: list[dict[str, Any]] = []
        where: dict[int, tuple[int, int, int]] = {}  # output block -> (group, col0, col1)
        for i2 in sorted({ins.i_in2 for ins in tp.instructions}):
            paths = [(k, ins) for k, ins in enumerate(tp.instructions) if ins.i_in2 == i2]
            blocks1 = sorted({ins.i_in1 for _, ins in paths})
            offset1, d1_total = {}, 0
            for b in blocks1:
                offset1[b] = d1_total
                d1_total += in1[b].ir.dim
            l2, d2 = in2[i2].ir.l, in2[i2].ir.dim
            n_cols = sum(out[ins.i_out].ir.dim for _, ins in paths)
            matrix = torch.zeros(d1_total, d2, n_cols, dtype=torch.float64)
            weight_index = torch.zeros(self.mul, n_cols, dtype=torch.long)
            col = 0
            for k, ins in paths:
                l1, l3 = in1[ins.i_in1].ir.l, out[ins.i_out].ir.l
                d1, d3 = 2 * l1 + 1, 2 * l3 + 1
                c = _wigner_3j(tp, l1, l2, l3)  # (d1, d2, d3)
                o = offset1[ins.i_in1]
                matrix[o : o + d1, :, col : col + d3] = float(ins.path_weight) * c
                weight_index[:, col : col + d3] = (w_start[k] + torch.arange(self.mul)).unsqueeze(1)
                if ins.i_out in where:
                    raise ValueError("two instructions write the same output block")
                where[ins.i_out] = (len(self.groups), col, col + d3)
                col += d3
            self.groups.append(
                {
                    "in1": [(s1[b].start, s1[b].stop, in1[b].ir.dim) for b in blocks1],
                    "in2": (s2[i2].start, s2[i2].stop, d2),
                    "matrix": matrix.reshape(d1_total * d2, n_cols),
                    "weight_index": weight_index,
                    "d1": d1_total,
                    "n_cols": n_cols,
                }
            )
        if sorted(where) != list(range(len(out))):
            raise ValueError("every output block needs exactly one instruction")
        self.outputs = [where[i] for i in range(len(out))]
        self.columns = [(sl.start, sl.stop) for sl in out.slices()]  # of each output block
        self._cast: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}

    def _matrices(self, like: torch.Tensor) -> list[torch.Tensor]:
        return cast_once(self._cast, [g["matrix"] for g in self.groups], like)

    def __call__(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        weight: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The tensor product.

        Parameters
        ----------
        x1
            (n, irreps_in1.dim) first input (e3nn layout: per irrep, channel-major).
        x2
            (n, irreps_in2.dim) second input.
        weight
            (weight_numel,) the module's flat weights (``tp.weight`` or a slice of a larger
            module's weights in the same order).
        out
            Optional (n, irreps_out.dim) tensor to write into (e.g. the columns of a larger
            buffer; its last dimension must have stride 1).

        Returns
        -------
        torch.Tensor
            (n, irreps_out.dim), as ``tp(x1, x2, weight)`` (``out`` when given).
        """
        n, u = x1.shape[0], self.mul
        if out is None:
            out = x1.new_empty((n, self.dim_out))
        results = []
        for g, m in zip(self.groups, self._matrices(x1), strict=True):
            parts = [x1[:, a:b].reshape(n, u, d) for a, b, d in g["in1"]]
            left = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)  # (n, u, D1)
            a, b, d2 = g["in2"]
            right = x2[:, a:b].reshape(n, u, d2)
            outer = (left.unsqueeze(3) * right.unsqueeze(2)).reshape(n * u, g["d1"] * d2)
            y = (outer @ m).view(n, u, g["n_cols"])  # every path reading this irrep of x2
            y.mul_(weight[g["weight_index"].to(weight.device)])  # per channel and path
            results.append(y)
        for (g, c0, c1), (o0, o1) in zip(self.outputs, self.columns, strict=True):
            out[:, o0:o1].view(n, u, c1 - c0).copy_(results[g][:, :, c0:c1])
        return out

    def after(
        self, prefix: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """``torch.cat([prefix, tp(x1, x2, weight)], dim=1)``, the product written straight
        into its columns (no concatenation copy); ``prefix`` is (n, k)."""
        n, k = prefix.shape
        both = prefix.new_empty((n, k + self.dim_out))
        both[:, :k] = prefix
        self(x1, x2, weight, out=both[:, k:])
        return both


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


def fused_product(tp: Any) -> FusedChannelwiseProduct:
    """The :class:`FusedChannelwiseProduct` of ``tp``, built once and kept on the module."""
    fused = tp.__dict__.get("_densnet_fused")
    if fused is None:
        fused = FusedChannelwiseProduct(tp)
        tp.__dict__["_densnet_fused"] = fused
    return fused
