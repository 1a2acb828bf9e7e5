"""The readout block evaluated per group of elements, on the irreps each group's heads read.

The last interaction block of :class:`~densnet_core.model.DensityModel` outputs the readout
irreps: the union over all elements of what the density and response heads need (l up to 6
and the pseudo-tensors, for bromine's response). A hydrogen atom's heads read only
0e, 1o, 1e, 2e, 2o and 3o; a first- or second-row atom's stop at 5o. Every output block of the
readout block (channel-wise product path, ``o3.Linear`` row, gate) depends only on its own
irrep, and the heads are ``o3.Linear`` maps that connect equal irreps only, so an atom's
unread blocks never reach the density. :class:`ElementReadout` computes, for every group of
elements with the same needs, only the blocks that group reads: the product paths, output
rows and gates of the other irreps are skipped, and their columns of the readout features are
zero. The result is exactly what the full block gives on the blocks that are read (the
weights are the full block's own, sliced at every call, so training sees the same parameters
and gradients); ``tests/core/test_readout.py`` checks this against the full block.

On ~50-atom drug-like molecules (about 45 % hydrogen) the block's channel-wise product is
about half the work of the full one (hydrogen: 693 of 2,860 Clebsch-Gordan elements per
channel; C, N, O, F, P, S, Cl: 2,068).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from e3nn import o3
from torch import nn

from densnet_core.component_major import (
    ComponentMajorLinear,
    block_maps,
    from_e3nn,
    gate_blocks,
    gate_input,
    rows_of,
    to_e3nn,
)

__all__ = ["ElementReadout", "weight_offsets"]


def weight_offsets(module: Any) -> dict[tuple[int, ...], tuple[int, int]]:
    """Where each instruction's weights sit in an e3nn module's flat weight vector.

    Parameters
    ----------
    module
        An ``o3.Linear`` (keys ``(i_in, i_out)``) or ``o3.TensorProduct`` (keys
        ``(i_in1, i_in2, i_out)``; instructions without weights are left out).

    Returns
    -------
    dict
        key -> (start, stop) in ``module.weight`` (shape (weight_numel,)).
    """
    out: dict[tuple[int, ...], tuple[int, int]] = {}
    start = 0
    for ins in module.instructions:
        if isinstance(module, o3.Linear):
            key: tuple[int, ...] = (ins.i_in, ins.i_out)
        else:
            if not ins.has_weight:
                continue
            key = (ins.i_in1, ins.i_in2, ins.i_out)
        n = math.prod(ins.path_shape)
        out[key] = (start, start + n)
        start += n
    if start != module.weight_numel:
        raise AssertionError(f"weight layout of {type(module).__name__} not understood")
    return out


def _index(ranges: Iterable[tuple[int, int]]) -> torch.Tensor:
    parts = [torch.arange(a, b) for a, b in ranges]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _path_weights(module: Any) -> list[float]:
    return [float(ins.path_weight) for ins in module.instructions]


class _Group(nn.Module):
    """The readout block restricted to the output irreps ``keep`` (parameter-free)."""

    def __init__(self, layer: Any, keep: set[o3.Irrep]) -> None:
        super().__init__()
        gate = layer.gate
        prod = layer.product
        n_a = len(layer.edge.irreps_out)
        ns, ng = gate.irreps_scalars.dim, gate.irreps_gates.dim
        gated = gate.irreps_gated
        if o3.Irreps(f"{ns + ng}x0e") + gated != gate.irreps_in:
            raise AssertionError(f"unexpected gate layout {gate.irreps_in}")

        # product: the output blocks (one per path) whose irrep is kept
        kept_p = [k for k, (_, ir) in enumerate(prod.irreps_out) if ir in keep]
        new_p = {k: i for i, k in enumerate(kept_p)}
        instr = [
            (ins.i_in1, ins.i_in2, new_p[ins.i_out], ins.connection_mode, ins.has_weight)
            for ins in prod.instructions
            if ins.i_out in new_p
        ]
        self.product = o3.TensorProduct(
            prod.irreps_in1,
            prod.irreps_in2,
            o3.Irreps([prod.irreps_out[k] for k in kept_p]),
            instr,
            internal_weights=False,
            shared_weights=True,
        )
        full = weight_offsets(prod)
        sub = weight_offsets(self.product)
        back_p = {i: k for k, i in new_p.items()}
        self.register_buffer(
            "product_weight_index",
            _index(full[(i1, i2, back_p[o])] for (i1, i2, o) in sub),
            persistent=False,
        )
        if _path_weights(self.product) != [
            float(ins.path_weight) for ins in prod.instructions if ins.i_out in new_p
        ]:
            raise AssertionError("product path normalisation differs from the full block's")

        # gate input: every scalar and gate, then the kept gated blocks
        kept_g = [b for b, (_, ir) in enumerate(gated) if ir in keep]
        gate_in = o3.Irreps(f"{ns + ng}x0e") + o3.Irreps([gated[b] for b in kept_g])
        out_full = {0: 0, **{i + 1: b + 1 for i, b in enumerate(kept_g)}}  # sub block -> full

        # lin_out: [A_i, kept product blocks] -> gate input
        in_full = {i: i for i in range(n_a)}
        in_full.update({n_a + i: n_a + k for i, k in enumerate(kept_p)})
        self.lin_out = o3.Linear(
            layer.edge.irreps_out + self.product.irreps_out,
            gate_in,
            internal_weights=False,
            shared_weights=True,
        )
        self.register_buffer(
            "lin_out_weight_index",
            self._linear_index(layer.lin_out, self.lin_out, in_full, out_full),
            persistent=False,
        )
        self.self_interaction = o3.Linear(
            layer.irreps_in, gate_in, internal_weights=False, shared_weights=True
        )
        self.register_buffer(
            "self_interaction_weight_index",
            self._linear_index(
                layer.self_interaction,
                self.self_interaction,
                {i: i for i in range(len(layer.irreps_in))},
                out_full,
            ),
            persistent=False,
        )

        self.kept_gated = kept_g  # the gated blocks of the gate's output this group computes

    @staticmethod
    def _linear_index(
        full: o3.Linear, sub: o3.Linear, in_full: Mapping[int, int], out_full: Mapping[int, int]
    ) -> torch.Tensor:
        offsets = weight_offsets(full)
        ranges = []
        for ins in sub.instructions:
            key = (in_full[ins.i_in], out_full[ins.i_out])
            a, b = offsets[key]
            n = math.prod(ins.path_shape)
            if b - a != n:
                raise AssertionError(f"block {key}: {b - a} weights in the full map, {n} here")
            ranges.append((a, b))
        return _index(ranges)

    def forward(
        self, layer: Any, xb: list[torch.Tensor], ab: list[torch.Tensor], n: int
    ) -> torch.Tensor:
        """The block on this group's ``n`` atoms: their features and neighbour density as
        component-major blocks (:mod:`densnet_core.component_major`; (d * n, mul) per block
        of ``irreps_in`` and of the neighbour density) -> (n, irreps_out) readout features in
        e3nn's layout, zero on the blocks this group does not read.

        The product's per-channel weights are folded into ``lin_out``; the only copy is the
        conversion of the result.
        """
        maps = self.__dict__.get("_component_major")
        if maps is None:
            maps = block_maps(layer.lin_left, layer.lin_right, self.product, self.lin_out)
            maps["self_interaction"] = ComponentMajorLinear(self.self_interaction)
            self.__dict__["_component_major"] = maps
        weights = (
            layer.lin_left.weight,
            layer.lin_right.weight,
            layer.product.weight.index_select(0, self.product_weight_index),
            layer.lin_out.weight.index_select(0, self.lin_out_weight_index),
        )
        w_si = layer.self_interaction.weight.index_select(0, self.self_interaction_weight_index)
        y = gate_input(maps, xb, ab, n, weights, maps["self_interaction"](xb, w_si))
        gate = layer.gate
        return to_e3nn(gate_blocks(gate, y, self.kept_gated, n), gate.irreps_out, n)


class ElementReadout(nn.Module):
    """The readout block per group of elements with equal needs (see the module docstring).

    Holds no parameters: the weights are those of the ``Interaction`` passed to
    :meth:`forward` (the model's last block), so the model file is unchanged.

    Parameters
    ----------
    layer
        The readout :class:`~densnet_core.model.Interaction` (no residual, plain ``o3.Linear``
        self-interaction).
    needs
        Per element (in the model's element order): the irreps its heads read.
    """

    def __init__(self, layer: Any, needs: Sequence[set[o3.Irrep]]) -> None:
        super().__init__()
        if layer.residual or layer.element_self_interaction:
            raise ValueError("the readout block has no residual and a plain self-interaction")
        everything = {ir for _, ir in layer.irreps_out}
        signatures: list[frozenset[o3.Irrep]] = []
        group_of: list[int] = []
        for need in needs:
            sig = frozenset((set(need) | {o3.Irrep("0e")}) & everything)
            if sig not in signatures:
                signatures.append(sig)
            group_of.append(signatures.index(sig))
        # kept out of the module tree (a plain list): their buffers are constants that must
        # never reach a state_dict, and a module copy (EMA weights, ensembles) would otherwise
        # re-register the compiled Clebsch-Gordan buffers as persistent; ``_apply`` below
        # still moves and casts them with the model
        self._groups: list[_Group | None] = [
            None if sig == everything else _Group(layer, set(sig)) for sig in signatures
        ]
        self.register_buffer("group_of_element", torch.tensor(group_of), persistent=False)
        self.dim = layer.irreps_out.dim

    @property
    def groups(self) -> tuple[nn.Module | None, ...]:
        """Per group: its restricted block, or None where the group reads every irrep."""
        return tuple(self._groups)

    def _apply(self, fn: Any, recurse: bool = True) -> ElementReadout:
        super()._apply(fn, recurse)
        for group in self._groups:
            if group is not None:
                group._apply(fn, recurse)
        return self

    def forward(
        self, layer: Any, x: torch.Tensor | list[torch.Tensor], element: torch.Tensor, edges: Any
    ) -> torch.Tensor:
        """The readout features (A, irreps_readout) of every atom.

        Parameters
        ----------
        layer
            The model's readout block (its weights are used).
        x
            (A, irreps_in) node features entering the block, or the same as component-major
            blocks ((d * A, mul) per block of ``irreps_in``).
        element
            (A,) long: index of every atom's element in the model's element list.
        edges
            The batch's :class:`~densnet_core.model.EdgeGeometry`.

        Returns
        -------
        torch.Tensor
            (A, irreps_readout); the blocks an atom's element does not read are zero.
        """
        if isinstance(x, torch.Tensor):
            n = x.shape[0]
            xb = from_e3nn(x, layer.irreps_in)
        else:
            n = element.shape[0]
            xb = list(x)
        ab = layer.edge.blocks(xb[0], edges)
        gid = self.group_of_element.index_select(0, element)
        rows, values = [], []
        for g, group in enumerate(self._groups):
            idx = torch.nonzero(gid == g).squeeze(1)
            m = idx.numel()
            if m == 0:
                continue
            xg = [rows_of(b, idx, n) for b in xb]
            ag = [rows_of(b, idx, n) for b in ab]
            if group is None:  # every irrep read: e3nn's full block
                xg_e3nn = to_e3nn(xg, layer.irreps_in, m)
                values.append(layer.update(xg_e3nn, to_e3nn(ag, layer.edge.irreps_out, m), None))
            else:
                values.append(group(layer, xg, ag, m))
            rows.append(idx)
        idx = torch.cat(rows)
        return xb[0].new_zeros((n, self.dim)).index_copy(0, idx, torch.cat(values))
