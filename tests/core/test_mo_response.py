"""The occupied–virtual CPKS response equals PySCF's ``gen_response``, for every supported SCF."""

from __future__ import annotations

import numpy as np
import pytest

from densnet_core import qm
from densnet_core.level import LevelOfTheory
from densnet_core.mo_response import _df_mo_blocks, mo_response, mo_response_memory_mb
from densnet_core.units import BOHR_PER_ANGSTROM

# formaldehyde, Å: a pi system and a lone pair, small enough for def2-SVP in seconds
FORMALDEHYDE = (
    [6, 8, 1, 1],
    np.array([[0, 0, -0.5296], [0, 0, 0.6741], [0, 0.9361, -1.1148], [0, -0.9361, -1.1148]]),
)


def _mf(xc: str, *, density_fit: bool = True, basis: str = "def2-svp"):
    numbers, xyz = FORMALDEHYDE
    level = LevelOfTheory(xc=xc, basis=basis, density_fit=density_fit, grid_level=2)
    mol = qm.build_mol(numbers, xyz * BOHR_PER_ANGSTROM, basis=level.basis)
    res = qm.run_scf(mol, level, threads=2)
    assert res.converged, res.attempts
    return res.mf


def _gen_response_block(mf, u: np.ndarray) -> np.ndarray:
    """PySCF's response potential of ``D1 = 2 C_v u C_o^T + h.c.``, projected to (a, i)."""
    occ = mf.mo_occ > 0
    orbo, orbv = mf.mo_coeff[:, occ], mf.mo_coeff[:, ~occ]
    d = np.einsum("pa,xai,qi->xpq", orbv, 2.0 * u, orbo)
    d = d + d.transpose(0, 2, 1)
    v1 = mf.gen_response(singlet=None, hermi=1)(d)
    return np.einsum("xpq,pa,qi->xai", v1, orbv, orbo)


@pytest.mark.parametrize("xc", ["b3lyp", "pbe", "lda,vwn", "pbe0", "hf"])
def test_equals_gen_response(xc):
    """LDA, GGA, global hybrids and HF: the same numbers as gen_response (to 1e-10)."""
    mf = _mf(xc)
    fvind = mo_response(mf)
    assert fvind is not None
    nocc = int((mf.mo_occ > 0).sum())
    nvir = mf.mo_occ.size - nocc
    u = np.random.default_rng(7).normal(size=(3, nvir, nocc))
    ref = _gen_response_block(mf, u)
    got = fvind(u)
    assert got.shape == (3, nvir, nocc)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-10
    # one vector at a time and flat input give the same
    np.testing.assert_allclose(fvind(u[1].ravel())[0], ref[1], rtol=0, atol=1e-10 * abs(ref).max())


def test_polarizability_unchanged():
    """The CPKS polarizability and response density through either kernel agree (1e-8)."""
    mf = _mf("b3lyp")
    alpha, dm1 = qm.polarizability_au(mf)
    alpha_ref, dm1_ref = qm.polarizability_au(mf, mo_block=False)  # the gen_response path
    np.testing.assert_allclose(alpha, alpha_ref, rtol=0, atol=1e-8)
    np.testing.assert_allclose(dm1, dm1_ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("xc", ["wb97x", "tpss"])
def test_unsupported_functionals_fall_back(xc):
    """Range-separated and meta-GGA functionals are left to gen_response."""
    assert mo_response(_mf(xc)) is None


def test_no_density_fitting_falls_back():
    assert mo_response(_mf("b3lyp", density_fit=False)) is None


def test_memory_budget():
    """A budget below the full grid cache caches part of it (same numbers); one that the DF
    factors do not fit in falls back to gen_response."""
    mf = _mf("b3lyp")
    df_mb, grid_mb = mo_response_memory_mb(mf)
    assert df_mb > 0 and grid_mb > 0
    nocc = int((mf.mo_occ > 0).sum())
    u = np.random.default_rng(3).normal(size=(2, mf.mo_occ.size - nocc, nocc))
    full = mo_response(mf, max_memory_mb=4 * (df_mb + grid_mb))
    assert grid_mb > 2 * df_mb  # so that this budget caches part of the grid, not all
    part = mo_response(mf, max_memory_mb=df_mb + 0.5 * grid_mb)
    assert full is not None and part is not None
    np.testing.assert_allclose(part(u), full(u), rtol=0, atol=1e-12 * abs(full(u)).max())
    assert mo_response(mf, max_memory_mb=1.5 * df_mb) is None


@pytest.mark.parametrize(("xc", "hybrid"), [("pbe", False), ("b3lyp", True), ("hf", True)])
def test_memory_estimate_matches_the_df_blocks_built(xc, hybrid):
    """The DF estimate is the size of the blocks mo_response builds: the vo block for a pure
    functional, the vv and oo blocks too when there is exact exchange."""
    mf = _mf(xc)
    occ = mf.mo_occ > 0
    blocks = _df_mo_blocks(mf, mf.mo_coeff[:, occ], mf.mo_coeff[:, ~occ], exchange=hybrid)
    assert (blocks[1] is not None) == hybrid and (blocks[2] is not None) == hybrid
    built_mb = sum(b.nbytes for b in blocks if b is not None) / 1e6
    df_mb, _grid_mb = mo_response_memory_mb(mf)
    assert df_mb == pytest.approx(built_mb, rel=1e-12)
