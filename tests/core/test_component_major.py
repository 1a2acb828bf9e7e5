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


def test_channelwise_product_equals_e3nn():
    """The readout block's kind of product ((0e + 1o) x (0e ... 3o), 'uuu'), its per-channel
    weights applied afterwards as the readout folds them into its linear map."""
    mul = 4
    left = o3.Irreps(f"{mul}x0e+{mul}x1o")
    right = o3.Irreps(f"{mul}x0e+{mul}x1o+{mul}x2e+{mul}x3o")
    mid, instr = [], []
    for i, (_, ir1) in enumerate(left):
        for j, (_, ir2) in enumerate(right):
            for ir3 in ir1 * ir2:
                if ir3.l <= 3:
                    instr.append((i, j, len(mid), "uuu", True))
                    mid.append((mul, ir3))
    tp = o3.TensorProduct(left, right, mid, instr).double()
    x1, x2 = _x(left, seed=1), _x(right, seed=2)
    want = tp(x1, x2)
    cm = ComponentMajorProduct(tp)
    left_cm = torch.cat(from_e3nn(x1, left), dim=0).contiguous()
    right_cm = [b.contiguous() for b in from_e3nn(x2, right)]
    blocks = cm(left_cm, right_cm, 7)
    weights = cm.channel_weights(tp.weight)
    scaled = [b * weights[o] for o, b in enumerate(blocks)]
    torch.testing.assert_close(to_e3nn(scaled, tp.irreps_out, 7), want, atol=1e-12, rtol=0)
