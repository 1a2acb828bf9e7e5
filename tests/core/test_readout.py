"""The per-element inference paths (`densnet_core.readout`, `densnet_core.self_interaction`)
against e3nn's full blocks.

Inference (no autograd) evaluates the readout block per group of elements on the irreps their
heads read; with autograd on, the model runs the full block. Both must give the same density,
response, dipole and polarizability (float64, real def2-universal-jkfit irreps for H, C, N, O,
S and Br, an RDKit geometry), and the skipped blocks must be exactly the unread ones.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from e3nn import o3

from densnet_core.basis import element_irreps
from densnet_core.component_major import from_e3nn, to_e3nn
from densnet_core.featurize import featurize
from densnet_core.graph import collate
from densnet_core.level import DEFAULT_LEVEL
from densnet_core.model import DensityModel, response_irreps
from densnet_core.modelio import load_model, save_model
from densnet_core.self_interaction import element_self_interaction_blocks
from tests.core._geometries import rdkit_geometry

AUX = DEFAULT_LEVEL.fit_auxbasis  # def2-universal-jkfit
ELEMENTS = (1, 6, 7, 8, 16, 35)


@pytest.fixture(scope="module")
def model() -> DensityModel:
    torch.manual_seed(0)
    irreps = {z: element_irreps(z, AUX) for z in ELEMENTS}
    m = DensityModel.from_preset(
        "small", irreps_by_element=irreps, aux_basis=AUX, charge_transfer=True
    ).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a live charge-transfer MLP (it starts at zero)
        for p in m.charge_transfer.mlp[-1].parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m.eval()


def _batch(model: DensityModel, mols: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Real PySCF integrals and SAD prior of the def2-universal-jkfit basis."""
    return collate(
        [featurize(n, p, 0.0, level=DEFAULT_LEVEL) for n, p in mols],
        element_dims=model.element_dims,
        cutoff_bohr=None,
        dtype=torch.float64,
    )


MOLS = [rdkit_geometry("CSc1ccc(Br)cc1NC=O"), rdkit_geometry("OCC(=O)N")]


def test_groups_skip_exactly_the_unread_irreps(model):
    """Hydrogen and C/N/O/S get restricted blocks, bromine (which reads everything) the full one."""
    readout = model.element_readout
    groups = [readout.groups[int(g)] for g in readout.group_of_element]
    by_z = dict(zip(model.elements, groups, strict=True))
    assert by_z[35] is None  # bromine's response reaches l = 6: the full block
    full = model.layers[-1].product
    for z in (1, 6, 8, 16):
        need = {ir for _, ir in model.irreps_by_element[z]}
        need |= {ir for _, ir in response_irreps(model.irreps_by_element[z])[0]}
        sub = by_z[z]
        assert {ir for _, ir in sub.product.irreps_out} <= need
        kept = {ir for _, ir in model.irreps_readout if ir in need}
        assert {ir for _, ir in sub.lin_out.irreps_out} == kept | {o3.Irrep("0e")}
        assert len(sub.product.instructions) < len(full.instructions)
    assert len(by_z[1].product.instructions) < len(by_z[6].product.instructions)
    assert not list(readout.parameters())


def test_per_element_self_interaction_equals_e3nn(model):
    """The hidden blocks' one-hot tensor product, per element on component-major blocks,
    equals e3nn's module (float64), for every element present or absent and for no atoms."""
    tp = model.layers[0].self_interaction
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, tp.irreps_in1.dim, generator=g, dtype=torch.float64)
    element = torch.tensor([0, 1, 1, 3, 5] * 8)  # elements 2 and 4 absent
    one_hot = torch.nn.functional.one_hot(element, len(model.elements)).double()

    def per_element(x: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        present = element.unique().tolist()
        by_element = [(e, torch.nonzero(element == e).squeeze(1)) for e in present]
        order = torch.argsort(torch.cat([idx for _, idx in by_element] or [element]))
        blocks = element_self_interaction_blocks(tp, from_e3nn(x, tp.irreps_in1), by_element, order)
        return to_e3nn(blocks, tp.irreps_out, x.shape[0])

    torch.testing.assert_close(per_element(x, element), tp(x, one_hot), atol=1e-12, rtol=0)
    assert per_element(x[:0], element[:0]).shape == (0, tp.irreps_out.dim)
    with pytest.raises(ValueError, match="per-element"):
        element_self_interaction_blocks(model.layers[-1].self_interaction, [], [], element)


def test_model_files_copies_and_casts_are_unaffected(model, tmp_path):
    """Nothing of the per-element block reaches a state_dict, not even from a copy (EMA weights
    and ensembles copy models); a saved model loads strictly and predicts the same; a float32
    cast moves the restricted blocks' constants too."""
    for m in (model, copy.deepcopy(model)):
        assert not [k for k in m.state_dict() if k.startswith("element_readout")]
    save_model(copy.deepcopy(model).float(), tmp_path / "m", level=DEFAULT_LEVEL, card={})
    loaded, _ = load_model(tmp_path / "m")
    batch = _batch(model, MOLS)
    batch32 = {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}
    with torch.no_grad():
        want = model(batch)["dipole_au"]
        got = loaded(batch32)["dipole_au"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=2e-4, rtol=0)


def test_inference_path_equals_the_full_block(model):
    """No-grad (per-element) and autograd (full block) outputs agree to 1e-10; the per-element
    features equal the full ones on the blocks an atom's heads read, and are zero elsewhere."""
    batch = _batch(model, MOLS)
    with torch.no_grad():
        fast = model(batch)
        feats_fast = model.node_features(batch)
    with torch.enable_grad():
        full = model(batch)
        feats_full = model.node_features(batch)
    for key in ("density_coeffs", "response_coeffs", "dipole_au", "polarizability_au"):
        torch.testing.assert_close(fast[key], full[key].detach(), atol=1e-10, rtol=0)
    assert full["polarizability_au"].abs().max() > 1e-2  # not trivially zero
    assert full["dipole_au"].abs().max() > 1e-2

    numbers = batch["numbers"]
    slices = model.irreps_readout.slices()
    n_zero = 0
    for z in model.elements:
        atoms = numbers == z
        if not bool(atoms.any()):
            continue
        need = {ir for _, ir in model.irreps_by_element[z]}
        need |= {ir for _, ir in response_irreps(model.irreps_by_element[z])[0]}
        for (_, ir), sl in zip(model.irreps_readout, slices, strict=True):
            got, want = feats_fast[atoms, sl], feats_full[atoms, sl].detach()
            if ir in need or ir == o3.Irrep("0e"):
                torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
            else:
                assert torch.count_nonzero(got) == 0
                n_zero += 1
    assert n_zero > 0


def test_inference_path_batched_equals_one_by_one_and_rotates(model):
    """Per-element grouping across a batch changes nothing, and dipole and polarizability
    rotate as Q mu and Q alpha Q^T (float64, no grad)."""
    with torch.no_grad():
        both = model(_batch(model, MOLS))
        for i, mol in enumerate(MOLS):
            one = model(_batch(model, [mol]))
            torch.testing.assert_close(
                one["dipole_au"][0], both["dipole_au"][i], atol=1e-10, rtol=0
            )
            torch.testing.assert_close(
                one["polarizability_au"][0], both["polarizability_au"][i], atol=1e-10, rtol=0
            )
        torch.manual_seed(5)
        rot = o3.rand_matrix(dtype=torch.float64)
        numbers, pos = MOLS[0]
        a = model(_batch(model, [(numbers, pos)]))
        b = model(_batch(model, [(numbers, pos @ rot.numpy().T)]))
    torch.testing.assert_close(b["dipole_au"][0], rot @ a["dipole_au"][0], atol=1e-8, rtol=0)
    torch.testing.assert_close(
        b["polarizability_au"][0], rot @ a["polarizability_au"][0] @ rot.T, atol=1e-8, rtol=0
    )
