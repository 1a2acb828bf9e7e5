"""Deferred e3nn code generation (`densnet_core.deferred_codegen`) against the usual build.

A model loaded for prediction generates e3nn's code on first use. It must give exactly the
outputs of an eagerly built model (the shipped default model on real RDKit geometries with
PySCF integrals, float32 and float64), keep the model file's keys and values, and leave the
hidden blocks' code unbuilt (the point of it).
"""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from densnet_core.deferred_codegen import (
    DeferredGraph,
    _linear_sizes,
    deferred_e3nn_codegen,
    deferred_graphs,
)
from densnet_core.featurize import featurize
from densnet_core.level import DEFAULT_LEVEL
from densnet_core.model import PRESETS, DensityModel
from densnet_core.modelio import load_model
from densnet_core.predict import default_model_dir
from tests.core._geometries import rdkit_geometry

SMILES = ("CSc1ccc(Br)cc1NC=O", "OCC(=O)N", "Clc1ccc2[nH]ccc2c1", "CC(F)(F)S(=O)(=O)N")


@pytest.fixture(scope="module")
def molecules() -> list:
    return [featurize(*rdkit_geometry(s, seed=11), 0.0, level=DEFAULT_LEVEL) for s in SMILES]


@pytest.fixture(scope="module")
def models() -> tuple[DensityModel, DensityModel]:
    deferred, _ = load_model(default_model_dir(), deferred_codegen=True)
    eager, _ = load_model(default_model_dir())
    return deferred, eager


def _outputs(model: DensityModel, molecules: list, dtype: torch.dtype) -> dict:
    with torch.inference_mode():
        return model(model.collate(molecules, dtype=dtype))


def test_deferred_model_predicts_exactly_what_the_eager_one_does(models, molecules):
    deferred, eager = models
    graphs = deferred_graphs(deferred)
    built_at_load = {n for n, g in graphs.items() if g.built}
    assert graphs and built_at_load and len(built_at_load) < len(graphs)
    a = _outputs(deferred, molecules, torch.float32)
    b = _outputs(eager, molecules, torch.float32)
    for key in ("density_coeffs", "response_coeffs", "dipole_au", "polarizability_au"):
        assert torch.equal(a[key], b[key]), key
    # everything inference calls was built at load (so forked workers inherit it) ...
    assert {n for n, g in graphs.items() if g.built} == built_at_load
    groups = [g for g in deferred.element_readout.groups if g is not None]
    assert all(m.built for g in groups for m in g.modules() if isinstance(m, DeferredGraph))
    # ... and the hidden blocks, which run on component-major kernels, never are
    unbuilt = {n for n, g in graphs.items() if not g.built}
    for i in range(len(deferred.layers) - 1):
        assert f"layers.{i}.product._compiled_main_left_right" in unbuilt
        assert f"layers.{i}.lin_out._compiled_main" in unbuilt
    assert not any(isinstance(m, DeferredGraph) for m in eager.modules())


def test_deferred_model_file_keys_and_values_are_unchanged(models):
    deferred, eager = models
    unbuilt = {n for n, g in deferred_graphs(deferred).items() if not g.built}
    a, b = deferred.state_dict(), eager.state_dict()
    assert set(a) == set(b)  # (in the file's order while a graph is not built)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # saving reads the loaded entries of unbuilt graphs; it does not build them
    assert unbuilt and unbuilt == {n for n, g in deferred_graphs(deferred).items() if not g.built}
    # and they follow casts like the real buffers would
    a64 = load_model(default_model_dir(), deferred_codegen=True)[0].double().state_dict()
    b64 = load_model(default_model_dir())[0].double().state_dict()
    assert all(a64[k].dtype == b64[k].dtype and torch.equal(a64[k], b64[k]) for k in b64)


def test_deferred_model_casts_and_autograd(molecules):
    """``.double()`` reaches graphs built later; gradients flow through built graphs."""
    deferred, _ = load_model(default_model_dir(), deferred_codegen=True)
    eager, _ = load_model(default_model_dir())
    deferred.double()
    eager.double()
    a = _outputs(deferred, molecules, torch.float64)
    b = _outputs(eager, molecules, torch.float64)
    assert torch.allclose(a["polarizability_au"], b["polarizability_au"], rtol=0, atol=1e-10)
    built = [g for g in deferred_graphs(deferred).values() if g.built]
    assert built and all(t.dtype == torch.float64 for g in built for t in g.real_module().buffers())
    # with autograd the model runs e3nn's own blocks: every graph gets built, same result
    batch = deferred.collate(molecules[:2], dtype=torch.float64)
    batch["positions_bohr"].requires_grad_(True)
    out = deferred(batch, compute_response=False)
    (grad,) = torch.autograd.grad(out["dipole_au"].pow(2).sum(), batch["positions_bohr"])
    ref_batch = eager.collate(molecules[:2], dtype=torch.float64)
    ref_batch["positions_bohr"].requires_grad_(True)
    ref = eager(ref_batch, compute_response=False)
    (ref_grad,) = torch.autograd.grad(ref["dipole_au"].pow(2).sum(), ref_batch["positions_bohr"])
    assert torch.allclose(grad, ref_grad, rtol=0, atol=1e-10)
    assert all(g.built for n, g in deferred_graphs(deferred).items() if n.startswith("layers.0"))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_linear_sizes_match_e3nn(preset):
    """The weight and bias sizes computed without tracing equal e3nn's own, for every
    ``o3.Linear`` of every preset (the weights would not load otherwise)."""
    irreps = {1: "2x0e+1x1o", 6: "3x0e+2x1o+1x2e", 8: "3x0e+2x1o+1x2e+1x3o"}
    model = DensityModel.from_preset(preset, irreps_by_element=irreps)
    linears = [m for m in model.modules() if isinstance(m, o3.Linear)]
    assert linears
    for lin in linears:
        assert _linear_sizes(lin.irreps_out, lin.instructions) == (
            lin.weight_numel,
            lin.bias_numel,
        )
    biased = o3.Linear("4x0e+2x1o", "3x0e+1x1o", biases=True)
    empty = o3.Linear("2x1o", "3x0e")
    for lin in (biased, empty):
        assert _linear_sizes(lin.irreps_out, lin.instructions) == (
            lin.weight_numel,
            lin.bias_numel,
        )


def test_context_restores_e3nn():
    with deferred_e3nn_codegen():
        inside = o3.Linear("2x0e+1x1o", "3x0e+1x1o")
        tp = o3.FullyConnectedTensorProduct("2x0e+1x1o", "1x1o", "2x0e+1x1o")
    after = o3.Linear("2x0e+1x1o", "3x0e+1x1o")
    assert isinstance(inside._compiled_main, DeferredGraph)
    assert isinstance(tp._compiled_main_left_right, DeferredGraph)
    assert not isinstance(after._compiled_main, DeferredGraph)
    x = torch.randn(5, inside.irreps_in.dim)
    after.load_state_dict(inside.state_dict())
    assert torch.equal(inside(x), after(x))
    assert inside._compiled_main.built


def test_deferred_model_deep_copies_and_pickles_as_the_built_model(models, molecules):
    """A copy (e.g. EMA weights, a worker's pickle) holds the real graphs: same outputs."""
    import copy
    import pickle

    _, eager = models
    deferred, _ = load_model(default_model_dir(), deferred_codegen=True)  # its own: copies build
    ref = _outputs(eager, molecules, torch.float32)
    for clone in (copy.deepcopy(deferred), pickle.loads(pickle.dumps(deferred))):
        assert not deferred_graphs(clone)
        out = _outputs(clone, molecules, torch.float32)
        for key in ("density_coeffs", "response_coeffs", "dipole_au", "polarizability_au"):
            assert torch.equal(out[key], ref[key]), key
