"""The fused channel-wise tensor product (:mod:`densnet_core.channelwise`) against e3nn's."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from densnet_core.channelwise import FusedChannelwiseProduct, fused_product
from densnet_core.model import DensityModel


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


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


@pytest.mark.parametrize(
    ("irreps1", "irreps2", "l_max"),
    [
        ("4x0e", "4x0e+4x1o+4x2e+4x3o", 3),  # the first block's scalar-only input
        ("4x0e+4x1o", "4x0e+4x1o+4x2e+4x3o", 3),
        ("3x0e+3x1o", "3x0e+3x1o+3x2e+3x3o+3x4e+3x5o", 6),  # the readout block's paths
        ("2x1o+2x0e", "2x2e+2x0e", 3),  # odd orders of the irreps
    ],
)
def test_equals_e3nn(irreps1: str, irreps2: str, l_max: int) -> None:
    torch.manual_seed(0)
    tp = uuu_product(irreps1, irreps2, l_max)
    x1 = torch.randn(7, tp.irreps_in1.dim)
    x2 = torch.randn(7, tp.irreps_in2.dim)
    weight = torch.randn(tp.weight_numel)
    ref = tp(x1, x2, weight)
    fused = FusedChannelwiseProduct(tp)
    torch.testing.assert_close(fused(x1, x2, weight), ref, rtol=0, atol=1e-12)
    # written into the columns of a larger buffer, the rest untouched
    buf = torch.full((7, 5 + tp.irreps_out.dim), 9.0)
    fused(x1, x2, weight, out=buf[:, 5:])
    torch.testing.assert_close(buf[:, 5:], ref, rtol=0, atol=1e-12)
    assert (buf[:, :5] == 9.0).all()
    # after a prefix: the concatenation, without the copy
    prefix = torch.randn(7, 4)
    torch.testing.assert_close(
        fused.after(prefix, x1, x2, weight), torch.cat([prefix, ref], dim=1), rtol=0, atol=1e-12
    )
    # float32 inputs use float32 constants
    got32 = fused(x1.float(), x2.float(), weight.float())
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref, rtol=1e-4, atol=1e-4)
    # no atoms
    assert fused(x1[:0], x2[:0], weight).shape == (0, tp.irreps_out.dim)


def test_equals_the_model_blocks() -> None:
    """The products of a real model's blocks (hidden and readout) with their own weights."""
    torch.manual_seed(1)
    model = DensityModel.for_aux_basis("def2-universal-jkfit", [1, 6, 8], preset="small")
    model = model.double()
    products = [layer.product for layer in model.layers]
    products += [g.product for g in model.element_readout.groups if g is not None]
    for tp in products:
        weight = torch.randn(tp.weight_numel)
        x1 = torch.randn(5, tp.irreps_in1.dim)
        x2 = torch.randn(5, tp.irreps_in2.dim)
        # the same constants as the module's (float32-rounded: the model was built in float32)
        torch.testing.assert_close(
            fused_product(tp)(x1, x2, weight), tp(x1, x2, weight), rtol=0, atol=1e-12
        )
        assert fused_product(tp) is fused_product(tp)  # built once


def test_rejects_other_products() -> None:
    full = o3.FullyConnectedTensorProduct("2x0e+2x1o", "2x0e+2x1o", "2x0e+2x1o")
    with pytest.raises(ValueError, match="uuu"):
        FusedChannelwiseProduct(full)
