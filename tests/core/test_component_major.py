"""Component-major blocks (`densnet_core.component_major`) against e3nn's modules (float64)."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from densnet_core.component_major import (
    ComponentMajorLinear,
    ComponentMajorProduct,
    from_e3nn,
    to_e3nn,
)

IRREPS = o3.Irreps("5x0e+3x1o+2x1e+4x2e+2x3o")


def _x(irreps: o3.Irreps | str, n: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, o3.Irreps(irreps).dim, generator=g, dtype=torch.float64)


def test_layout_round_trip_and_rows():
    """Row i * n + a of a block is component i of atom a; zeros where a block is missing."""
    x = _x(IRREPS)
    blocks = from_e3nn(x, IRREPS)
    torch.testing.assert_close(to_e3nn(blocks, IRREPS, 7), x, atol=0, rtol=0)
    # block 3 (4x2e) starts after 5 + 3*3 + 2*3 = 20 columns; atom 2, channel 1, component 4
    assert blocks[3].shape == (5 * 7, 4)
    assert blocks[3][4 * 7 + 2, 1] == x[2, 20 + 1 * 5 + 4]
    blocks[1] = None
    y = to_e3nn(blocks, IRREPS, 7)
    assert torch.count_nonzero(y[:, 5:14]) == 0
    torch.testing.assert_close(y[:, 14:], x[:, 14:], atol=0, rtol=0)


def test_linear_equals_e3nn_with_scales_and_added_terms():
    """Every output block, with per-channel input scales folded in and terms added."""
    out_irreps = o3.Irreps("6x0e+2x1o+3x2e+1x3e")  # 3e is reached by no input
    lin = o3.Linear(IRREPS, out_irreps).double()
    x = _x(IRREPS)
    scale = {2: torch.linspace(0.5, 2.0, 2, dtype=torch.float64)}
    x_scaled = x.clone()
    x_scaled[:, 14:20] = (x[:, 14:20].view(7, 2, 3) * scale[2].view(1, 2, 1)).view(7, 6)
    want = lin(x_scaled)
    cm = ComponentMajorLinear(lin)
    got = cm(from_e3nn(x, IRREPS), lin.weight, scale=scale)
    assert got[3] is None
    got[3] = torch.zeros(7 * 7, 1, dtype=torch.float64)
    torch.testing.assert_close(to_e3nn(got, out_irreps, 7), want, atol=1e-12, rtol=0)
    extra = [torch.ones(7, 6, dtype=torch.float64), None, None, None]
    plus = cm(from_e3nn(x, IRREPS), lin.weight, scale=scale, add=extra)
    torch.testing.assert_close(plus[0], want[:, :6] + 1.0, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="weights for a map"):
        cm(from_e3nn(x, IRREPS), lin.weight[:-1])


def uuu_product(irreps1: str, irreps2: str, l_max: int) -> o3.TensorProduct:
    """Every 'uuu' path of irreps1 x irreps2 up to l_max (outputs in instruction order)."""
    in1, in2 = o3.Irreps(irreps1), o3.Irreps(irreps2)
    mul = in1[0].mul
    out, instructions = [], []
    for i1, (_, ir1) in enumerate(in1):
        for i2, (_, ir2) in enumerate(in2):
            for ir3 in ir1 * ir2:
                if ir3.l <= l_max:
                    instructions.append((i1, i2, len(out), "uuu", True))
                    out.append((mul, ir3))
    return o3.TensorProduct(in1, in2, o3.Irreps(out), instructions)


def _product(tp: o3.TensorProduct, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor):
    """``tp(x1, x2, weight)`` through :class:`ComponentMajorProduct`, its per-channel weights
    applied afterwards (the interaction blocks fold them into their linear map instead)."""
    n = x1.shape[0]
    cm = ComponentMajorProduct(tp)
    left = torch.cat(from_e3nn(x1, tp.irreps_in1), dim=0).contiguous()
    right = [b.contiguous() for b in from_e3nn(x2, tp.irreps_in2)]
    weights = cm.channel_weights(weight)
    blocks = [b * weights[o] for o, b in enumerate(cm(left, right, n))]
    return to_e3nn(blocks, tp.irreps_out, n) if n else x1.new_zeros((0, tp.irreps_out.dim))


@pytest.mark.parametrize(
    ("irreps1", "irreps2", "l_max"),
    [
        ("4x0e", "4x0e+4x1o+4x2e+4x3o", 3),  # the first block's scalar-only input
        ("4x0e+4x1o", "4x0e+4x1o+4x2e+4x3o", 3),
        ("3x0e+3x1o", "3x0e+3x1o+3x2e+3x3o+3x4e+3x5o", 6),  # the readout block's paths
        ("2x1o+2x0e", "2x2e+2x0e", 3),  # odd orders of the irreps
    ],
)
def test_channelwise_product_equals_e3nn(irreps1: str, irreps2: str, l_max: int):
    tp = uuu_product(irreps1, irreps2, l_max).double()
    x1, x2 = _x(tp.irreps_in1, seed=1), _x(tp.irreps_in2, seed=2)
    weight = torch.randn(tp.weight_numel, generator=torch.Generator().manual_seed(3)).double()
    want = tp(x1, x2, weight)
    torch.testing.assert_close(_product(tp, x1, x2, weight), want, atol=1e-12, rtol=0)
    # float32 inputs use float32 constants
    got32 = _product(tp, x1.float(), x2.float(), weight.float())
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, rtol=1e-4, atol=1e-4)
    # no atoms
    assert _product(tp, x1[:0], x2[:0], weight).shape == (0, tp.irreps_out.dim)


def test_channelwise_products_of_the_model_blocks():
    """The products of a real model's blocks (hidden and readout groups) with their own
    weights and their own float32-rounded Clebsch-Gordan constants."""
    from densnet_core.model import DensityModel

    torch.manual_seed(1)
    model = DensityModel.for_aux_basis("def2-universal-jkfit", [1, 6, 8], preset="small")
    model = model.double()
    products = [layer.product for layer in model.layers]
    products += [g.product for g in model.element_readout.groups if g is not None]
    for tp in products:
        weight = torch.randn(tp.weight_numel, dtype=torch.float64)
        x1, x2 = _x(tp.irreps_in1, n=5, seed=4), _x(tp.irreps_in2, n=5, seed=5)
        torch.testing.assert_close(
            _product(tp, x1, x2, weight), tp(x1, x2, weight), atol=1e-12, rtol=0
        )


def test_channelwise_product_rejects_other_products():
    full = o3.FullyConnectedTensorProduct("2x0e+2x1o", "2x0e+2x1o", "2x0e+2x1o")
    with pytest.raises(ValueError, match="uuu"):
        ComponentMajorProduct(full)
