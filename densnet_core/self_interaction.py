"""The element-dependent self-interaction of the hidden blocks, computed per element.

Every hidden interaction block of :class:`~densnet_core.model.DensityModel` adds
``o3.FullyConnectedTensorProduct(h, one_hot(element))``: with a one-hot second factor this is
a different linear map of h for every element, but e3nn evaluates it as the full outer product
h (x) one_hot times all elements' weights (n_elements times the work, ~2 ms per drug-like
molecule in the ``wide`` preset). :func:`element_self_interaction_blocks` gives the same numbers
from the same weights, on component-major blocks (:mod:`densnet_core.component_major`), as one
matrix product per element present and per irrep; ``tests/core/test_readout.py`` checks it
against e3nn's module. Used without autograd (inference); training runs e3nn's module.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3

__all__ = ["element_self_interaction_blocks", "per_element_form"]


def per_element_form(tp: torch.nn.Module) -> bool:
    """True when ``tp`` is (irreps) x (n x 0e) with 'uvw' weights, as the model builds it."""
    return (
        isinstance(tp, o3.FullyConnectedTensorProduct)
        and len(tp.irreps_in2) == 1
        and tp.irreps_in2[0].ir == o3.Irrep("0e")
        and tp.internal_weights
        and all(ins.connection_mode == "uvw" and ins.has_weight for ins in tp.instructions)
    )


def _scaled_weights(tp: o3.FullyConnectedTensorProduct) -> list[torch.Tensor]:
    """Per instruction: its weights (mul1, n_elements, mul_out) times e3nn's path weight and
    the 1/sqrt(2l+1) of the (l x 0 -> l) Clebsch-Gordan coefficient."""
    weights = []
    start = 0
    for ins in tp.instructions:
        mul1, n_el, mul_out = ins.path_shape
        d = tp.irreps_out[ins.i_out].ir.dim
        n = mul1 * n_el * mul_out
        scale = ins.path_weight / math.sqrt(d)
        weights.append(tp.weight[start : start + n].view(mul1, n_el, mul_out) * scale)
        start += n
    return weights


def element_self_interaction_blocks(
    tp: o3.FullyConnectedTensorProduct,
    blocks: list[torch.Tensor],
    atoms_by_element: list[tuple[int, torch.Tensor]],
    order: torch.Tensor,
) -> list[torch.Tensor | None]:
    """``tp(x, one_hot(element))`` on component-major blocks, one matrix product per element
    present and per instruction.

    Parameters
    ----------
    tp
        The block's ``FullyConnectedTensorProduct(irreps_in, n_elements x 0e, irreps_out)``
        (of the per-element form the model builds).
    blocks
        Per block of ``tp.irreps_in1``: (d * A, mul).
    atoms_by_element
        (element index, atom indices (A_e,)) for every element present; together every atom
        once.
    order
        (A,) long: the position of every atom in the concatenation of those atom indices.

    Returns
    -------
    list
        Per block of ``tp.irreps_out``: (d * A, mul_out), None where no input reaches it.
    """
    if not per_element_form(tp):
        raise ValueError("not a per-element self-interaction")
    n = order.shape[0]
    if n == 0:
        return [tp.weight.new_zeros((0, mul)) for mul, _ in tp.irreps_out]
    per_out: list[list[torch.Tensor]] = [[] for _ in tp.irreps_out]
    for ins, w in zip(tp.instructions, _scaled_weights(tp), strict=True):
        mul1, _, mul_out = ins.path_shape
        d = tp.irreps_out[ins.i_out].ir.dim
        x = blocks[ins.i_in1].view(d, n, mul1)
        parts = [
            (x.index_select(1, idx).view(-1, mul1) @ w[:, e, :]).view(d, -1, mul_out)
            for e, idx in atoms_by_element
        ]
        per_out[ins.i_out].append(torch.cat(parts, dim=1).index_select(1, order).view(d * n, -1))
    out: list[torch.Tensor | None] = []
    for terms in per_out:
        total = None
        for t in terms:
            total = t if total is None else total + t
        out.append(total)
    return out
