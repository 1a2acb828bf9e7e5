"""The tabulated radial weights of the inference path (`densnet_core.radial_table`).

Without autograd, a float32 model reads its edge weights w(r) = MLP(B(r)) from a cubic
Hermite table instead of evaluating the MLP per edge. The table must reproduce the function
to fourth order in the grid step, vanish from the cutoff on, stay below the float32 rounding
of the MLP on real molecules, and follow every change of the MLP's weights.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from densnet_core.basis import element_irreps
from densnet_core.featurize import featurize
from densnet_core.graph import collate, radius_graph
from densnet_core.level import DEFAULT_LEVEL
from densnet_core.model import DensityModel, EdgeGeometry, RadialBasis
from densnet_core.radial_table import CubicRadialTable
from densnet_core.units import BOHR_PER_ANGSTROM

AUX = DEFAULT_LEVEL.fit_auxbasis
ELEMENTS = (1, 6, 7, 8, 16)
CUTOFF = 7.5


def _geometry(smiles: str, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return numbers, mol.GetConformer().GetPositions() * BOHR_PER_ANGSTROM


MOLS = [_geometry("CSc1ccc(O)cc1NC=O"), _geometry("OCC(=O)N"), _geometry("c1ccncc1C#N")]


@pytest.fixture(scope="module")
def model64() -> DensityModel:
    torch.manual_seed(0)
    irreps = {z: element_irreps(z, AUX) for z in ELEMENTS}
    m = DensityModel.from_preset("small", irreps_by_element=irreps, aux_basis=AUX)
    return m.double().eval()


@pytest.fixture(scope="module")
def batch64(model64) -> dict:
    return collate(
        [featurize(n, p, 0.0, level=DEFAULT_LEVEL) for n, p in MOLS],
        element_dims=model64.element_dims,
        cutoff_bohr=None,
        dtype=torch.float64,
    )


def _to32(batch: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}


def _edges(model: DensityModel, batch: dict) -> EdgeGeometry:
    pos = batch["positions_bohr"]
    ei = radius_graph(pos, batch["batch"], model.cutoff_bohr)
    vec = pos[ei[0]] - pos[ei[1]]
    r = vec.norm(dim=-1)
    return EdgeGeometry.build(
        ei,
        model.spherical_harmonics(vec),
        model.radial_basis(r),
        pos.shape[0],
        distance=r,
        basis=model.radial_basis,
    )


def test_spline_reproduces_a_smooth_function_to_fourth_order():
    """The Bessel x envelope basis itself: error below 1e-7 of its scale at 256 intervals,
    shrinking ~16x per halving of the step; exactly zero from the cutoff on."""
    basis = RadialBasis(n_radial=8, cutoff_bohr=CUTOFF, envelope_p=6)
    r = torch.linspace(0.5, CUTOFF - 1e-9, 5001, dtype=torch.float64)
    exact = basis(r)
    scale = exact.abs().max()
    errors = {}
    for n in (64, 128, 256):
        table = CubicRadialTable(basis, cutoff_bohr=CUTOFF, n_intervals=n, dtype=torch.float64)
        assert table.coeffs.shape == (n + 1, 4, 8)
        errors[n] = float((table(r) - exact).abs().max() / scale)
        beyond = torch.tensor([CUTOFF, CUTOFF + 1e-6, 9.0, 50.0], dtype=torch.float64)
        assert torch.equal(table(beyond), torch.zeros(4, 8, dtype=torch.float64))
    assert errors[256] < 1e-7
    assert errors[64] / errors[128] > 10 and errors[128] / errors[256] > 10
    # at the knots the spline is the function itself
    table = CubicRadialTable(basis, cutoff_bohr=CUTOFF, n_intervals=128, dtype=torch.float64)
    knots = torch.arange(1, 128, dtype=torch.float64) * (CUTOFF / 128)
    torch.testing.assert_close(table(knots), basis(knots), atol=1e-12, rtol=0)


def test_float32_table_is_within_the_mlp_rounding(model64, batch64):
    """Every block's tabulated weights (float32 model, no autograd) differ from the float64
    MLP by less than 1e-6 of their scale, like the float32 MLP itself; with autograd on, or
    in float64, the block evaluates its MLP."""
    model32 = copy.deepcopy(model64).float()
    edges32 = _edges(model32, _to32(batch64))
    edges64 = _edges(model64, batch64)
    for block32, block64 in zip(model32.layers, model64.layers, strict=True):
        exact = block64.edge.radial(edges64.radial)
        scale = exact.abs().max()
        with torch.inference_mode():
            tabulated = block32.edge.radial_weights(edges32)
            mlp32 = block32.edge.radial(edges32.radial)
        assert block32.edge._radial_table is not None  # the table path ran
        err_table = float((tabulated.double() - exact).abs().max() / scale)
        err_mlp = float((mlp32.double() - exact).abs().max() / scale)
        assert err_table < 1e-6, (err_table, err_mlp)
        with torch.enable_grad():
            assert torch.equal(
                block32.edge.radial_weights(edges32), block32.edge.radial(edges32.radial)
            )
        with torch.inference_mode():
            assert torch.equal(block64.edge.radial_weights(edges64), exact)


def test_float32_predictions_agree_with_float64(model64, batch64):
    """Dipoles and polarizabilities of the float32 inference path (tables) against the float64
    model: within float32 rounding."""
    model32 = copy.deepcopy(model64).float()
    with torch.inference_mode():
        want = model64(batch64)
        got = model32(_to32(batch64))
    assert all(layer.edge._radial_table is not None for layer in model32.layers)
    assert want["dipole_au"].abs().max() > 1e-2
    torch.testing.assert_close(got["dipole_au"].double(), want["dipole_au"], atol=2e-4, rtol=0)
    torch.testing.assert_close(
        got["polarizability_au"].double(), want["polarizability_au"], atol=0, rtol=1e-4
    )


def test_table_follows_every_change_of_the_weights(model64, batch64):
    """An in-place update (an optimiser step), a state-dict load and a dtype round trip each
    rebuild the table: the weights always match the current MLP."""
    model32 = copy.deepcopy(model64).float()
    edges = _edges(model32, _to32(batch64))
    block = model32.layers[0].edge

    def check() -> None:
        with torch.inference_mode():
            got = block.radial_weights(edges)
        want = block.radial(edges.radial).detach()
        torch.testing.assert_close(got, want, atol=2e-6 * float(want.abs().max()), rtol=0)

    check()
    before = block._radial_table
    with torch.no_grad():
        for p in block.radial.parameters():
            p.mul_(1.5)
    check()
    assert block._radial_table is not before
    model32.load_state_dict(copy.deepcopy(model64).float().state_dict())
    check()
    model32.double().float()
    check()
