"""Aux-basis layout, PySCF <-> e3nn conventions, and one-centre integrals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3
from pyscf import dft, gto

from densnet_core import basis as B

AUXBASES = ["def2-universal-jfit", "def2-universal-jkfit"]


@pytest.fixture
def float64_e3nn():
    """e3nn builds its SO(3) generators in torch's default dtype: float32 limits
    ``D_from_matrix`` to ~1e-7 even for float64 input, so switch to float64 for this test only."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


ELEMENTS = [1, 6, 7, 8, 9, 15, 16, 17, 35]


def _random_rotation(rng: np.random.Generator, improper: bool = False) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if improper else q


def _water(basis: str = "def2-svpd") -> gto.Mole:
    return gto.M(
        atom="O 0 0 0.22; H 0 1.43 -0.89; H 0.05 -1.43 -0.89", unit="Bohr", basis=basis, verbose=0
    )


@pytest.mark.parametrize("auxbasis", AUXBASES)
def test_element_irreps_match_pyscf_layout(auxbasis: str) -> None:
    for z in ELEMENTS:
        irreps = B.element_irreps(z, auxbasis)
        aux = B._element_auxmol(z, auxbasis)
        assert irreps.dim == aux.nao == B.element_nao(z, auxbasis)
        ls = [ir.l for mul, ir in irreps for _ in range(mul)]
        pyscf_ls = [aux.bas_angular(i) for i in range(aux.nbas) for _ in range(aux.bas_nctr(i))]
        assert ls == pyscf_ls
        assert all(ir.p == (-1) ** ir.l for _, ir in irreps)
    assert str(B.element_irreps("O", "def2-universal-jkfit")) == "10x0e+8x1o+4x2e+2x3o+1x4e"


@pytest.mark.parametrize("auxbasis", AUXBASES)
def test_molecule_layout_matches_auxmol(auxbasis: str) -> None:
    mol = gto.M(atom="C 0 0 0; O 0 0 2.2; H 0 1.7 -1; H 0 -1.7 -1", unit="Bohr", verbose=0)
    aux = B.make_auxmol(mol, auxbasis)
    layout = B.aux_layout([6, 8, 1, 1], auxbasis)
    assert layout.n_functions == aux.nao == B.molecule_irreps([6, 8, 1, 1], auxbasis).dim
    np.testing.assert_array_equal(layout.atom_offsets[:-1], aux.aoslice_by_atom()[:, 2])
    ao_l = np.concatenate(
        [[aux.bas_angular(i)] * (2 * aux.bas_angular(i) + 1) for i in range(aux.nbas)]
    )
    for l, idx in layout.blocks.items():
        assert np.all(ao_l[idx] == l)


def test_pyscf_e3nn_matrices_are_orthogonal_and_trivial_for_s_p() -> None:
    for l in range(7):
        d = B.pyscf_to_e3nn_matrix(l)
        np.testing.assert_allclose(d @ d.T, np.eye(2 * l + 1), atol=1e-12)
    np.testing.assert_allclose(B.pyscf_to_e3nn_matrix(0), np.eye(1))
    np.testing.assert_allclose(B.pyscf_to_e3nn_matrix(1), np.eye(3), atol=1e-12)
    # e3nn 0.6: l = 1 harmonics are proportional to (x, y, z), like PySCF's p shells
    y1 = o3.spherical_harmonics(1, torch.tensor([[1.0, 2.0, 3.0]]), normalize=True)
    np.testing.assert_allclose(y1.numpy()[0] / y1.numpy()[0, 0], [1, 2, 3], rtol=1e-6)


@pytest.mark.parametrize("improper", [False, True])
@pytest.mark.parametrize("l", range(6))
def test_pyscf_shell_rotates_with_e3nn_wigner_d(l: int, improper: bool, float64_e3nn) -> None:
    """chi_pyscf(R r) = (D_l D_e3nn(R) D_l^T) chi_pyscf(r) for proper and improper R."""
    rng = np.random.default_rng(l + 10 * improper)
    mol = gto.M(
        atom=[["ghost-He", (0, 0, 0)]],
        basis={"ghost-He": [[l, [0.9, 0.6], [0.3, 0.5]]]},
        unit="Bohr",
        verbose=0,
    )
    pts = rng.normal(size=(50, 3))
    d_l = B.pyscf_to_e3nn_matrix(l)
    irrep = o3.Irreps(f"1x{l}{'e' if l % 2 == 0 else 'o'}")
    for _ in range(3):
        rot = _random_rotation(rng, improper)
        wigner = irrep.D_from_matrix(torch.as_tensor(rot)).numpy()
        ao = mol.eval_gto("GTOval_sph", pts)
        ao_rot = mol.eval_gto("GTOval_sph", pts @ rot.T)
        np.testing.assert_allclose(ao_rot, ao @ (d_l @ wigner @ d_l.T).T, atol=1e-12)


def test_to_e3nn_roundtrip_numpy_and_torch() -> None:
    numbers = [8, 1, 1, 35]
    m = B.n_aux_functions(numbers, "def2-universal-jkfit")
    rng = np.random.default_rng(1)
    c = rng.normal(size=(3, m))
    ce = B.to_e3nn(c, numbers, "def2-universal-jkfit")
    assert ce.shape == c.shape
    np.testing.assert_allclose(np.linalg.norm(ce, axis=1), np.linalg.norm(c, axis=1))
    np.testing.assert_allclose(B.to_pyscf(ce, numbers, "def2-universal-jkfit"), c, atol=1e-14)
    ct = B.to_e3nn(torch.as_tensor(c), numbers, "def2-universal-jkfit")
    np.testing.assert_allclose(ct.numpy(), ce, atol=1e-14)
    # per-element matrix agrees with the per-molecule transform
    t_o = B.transform_matrix(8, "def2-universal-jkfit")
    n_o = B.element_nao(8, "def2-universal-jkfit")
    np.testing.assert_allclose(ce[:, :n_o], c[:, :n_o] @ t_o, atol=1e-14)
    with pytest.raises(ValueError):
        B.to_e3nn(c[:, :-1], numbers, "def2-universal-jkfit")


@pytest.mark.parametrize("auxbasis", AUXBASES)
def test_charge_and_dipole_integrals_match_grid(auxbasis: str) -> None:
    mol = gto.M(
        atom="O 0 0 0.22; H 0 1.43 -0.89; Cl 0.05 -1.43 -3.0",
        unit="Bohr",
        basis="sto-3g",
        verbose=0,
    )
    aux = B.make_auxmol(mol, auxbasis)
    grids = dft.gen_grid.Grids(aux)
    grids.level = 9
    grids.build(with_non0tab=False)
    ao = aux.eval_gto("GTOval_sph", grids.coords)
    q = B.charge_integrals(aux)
    q_grid = grids.weights @ ao
    np.testing.assert_allclose(q, q_grid, rtol=1e-8, atol=1e-8 * np.abs(q).max())
    origin = np.array([0.3, -0.2, 0.5])
    d = B.dipole_integrals(aux, origin)
    d_grid = np.einsum("g,gx,gm->xm", grids.weights, grids.coords - origin, ao)
    np.testing.assert_allclose(d, d_grid, rtol=1e-8, atol=1e-8 * np.abs(d).max())
    np.testing.assert_allclose(
        np.concatenate([B.element_charge_integrals(z, auxbasis) for z in [8, 1, 17]]), q
    )
