"""Tiny DenSNet potentials for the MD/IR tests (seconds to build, no training data)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from densnet_core.energy_model import DenSNetPotential, EnergyModel
from densnet_core.level import DEFAULT_LEVEL
from densnet_core.model import DensityModel
from tests._torch_threads import one_torch_thread  # noqa: F401 - autouse fixture

TINY_DENSITY = {
    "n_layers": 1,
    "edge_mul": [4, 4, 2, 2, 2],
    "product_mul": 4,
    "embed_dim": 8,
    "hidden_irreps": "8x0e+4x1o+2x2e",
    "radial_hidden": 8,
    "readout_mul": [4, 2, 2, 2, 2, 2],
    "readout_pseudo_mul": [0, 2, 2, 2, 2, 2],
}


def tiny_potential(
    elements: Sequence[int] = (1, 8),
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    response: bool = False,
    perturb: float = 0.05,
) -> DenSNetPotential:
    """An untrained tiny density + energy model; weights perturbed so the density Δ is not 0.

    The reference energies are set to -0.5 Eh (H), -75 Eh (O), -37.8 Eh (C) so totals look
    like real ones (and exercise the float64 energy sum).
    """
    torch.manual_seed(seed)
    dm = DensityModel.for_aux_basis(
        DEFAULT_LEVEL.fit_auxbasis,
        list(elements),
        preset="small",
        response=response,
        # pseudo-tensor readouts (response heads) need a product of l >= 1 features
        **{**TINY_DENSITY, "n_layers": 2 if response else 1},
    )
    em = EnergyModel.for_density_model(dm, level=DEFAULT_LEVEL, preset="tiny")
    pot = DenSNetPotential(density_model=dm, energy_model=em, level=DEFAULT_LEVEL)
    with torch.no_grad():
        for p in pot.parameters():
            p.add_(perturb * torch.randn_like(p))
        ref = {1: -0.5, 6: -37.8, 7: -54.5, 8: -75.0, 16: -398.0}
        em.e_ref_hartree.copy_(torch.tensor([ref[z] for z in em.elements], dtype=torch.float64))
        em.energy_scale_hartree.fill_(0.02)
    pot = pot.to(dtype).eval()
    for p in pot.parameters():
        p.requires_grad_(False)
    return pot


#: water, Å (O first), shared by the MD test modules
WATER_A = np.array([[0.0, 0.0, 0.119], [0.0, 0.763, -0.477], [0.0, -0.763, -0.477]])
