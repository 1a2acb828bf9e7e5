"""The equivariant density network: symmetry, batching, smoothness, constraints, training.

The element irreps come straight from PySCF's def2-universal-jfit shells (so these tests do not
depend on ``densnet_core.basis``). Charge and dipole integrals are synthetic but have the exact
structure of the real ones for spherical Gaussians: q_mu only on s functions, d_mu = q_mu
(R_A - O) on s functions and c_mu * identity on p functions (e3nn order = x, y, z), so they
rotate with the molecule exactly as the real integrals do.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math

import numpy as np
import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant

from densnet_core import graph as graph_module
from densnet_core.graph import (
    MoleculeInput,
    centre_of_nuclear_charge,
    collate,
    neighbour_table,
    radius_graph,
    reverse_edges,
)
from densnet_core.model import (
    PRESETS,
    DensityModel,
    EdgeDensity,
    EdgeGeometry,
    PolynomialEnvelope,
    project_electron_count,
    response_irreps,
)

AUX = "def2-universal-jfit"
ELEMENTS = (1, 6, 7, 8)

# geometries in bohr
FORMALDEHYDE = (
    np.array([6, 8, 1, 1]),
    np.array([[0.0, 0.0, -1.0], [0.0, 0.1, 1.28], [1.77, 0.0, -2.1], [-1.70, 0.2, -2.0]]),
)
METHANOL = (
    np.array([6, 8, 1, 1, 1, 1]),
    np.array(
        [
            [-1.31, 0.02, 0.0],
            [1.39, -0.21, 0.05],
            [-2.06, 1.94, 0.1],
            [-1.95, -0.92, 1.7],
            [-2.0, -0.98, -1.62],
            [2.05, 1.48, -0.2],
        ]
    ),
)
AMMONIUM = (  # charge +1, slightly distorted so that it has no symmetry
    np.array([7, 1, 1, 1, 1]),
    np.array(
        [
            [0.0, 0.0, 0.0],
            [1.2, 1.2, 1.15],
            [-1.2, -1.15, 1.2],
            [-1.1, 1.2, -1.2],
            [1.2, -1.2, -1.3],
        ]
    ),
)
WATER = (np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.2], [1.43, 0.0, -0.9], [-1.45, 0.1, -0.85]]))


@functools.cache
def _pyscf_irreps(z: int) -> str:
    from pyscf import df, gto

    mol = gto.M(atom=f"{z} 0 0 0", basis="sto-3g", spin=z % 2)
    aux = df.addons.make_auxmol(mol, AUX)
    ls = [aux.bas_angular(i) for i in range(aux.nbas)]
    return str(o3.Irreps("+".join(f"1x{l}{'e' if l % 2 == 0 else 'o'}" for l in ls)).simplify())


def _irreps_by_element() -> dict[int, str]:
    return {z: _pyscf_irreps(z) for z in ELEMENTS}


def _element_tables(z: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per element: q (M_Z,), p-dipole constants (M_Z,) (one per p component), SAD prior."""
    irreps = o3.Irreps(_pyscf_irreps(z))
    q = np.zeros(irreps.dim)
    p = np.zeros(irreps.dim)
    prior = np.zeros(irreps.dim)
    i = 0
    k = 0
    for mul, ir in irreps:
        for _ in range(mul):
            k += 1
            if ir.l == 0:
                q[i] = 1.0 + 0.3 * k + 0.01 * z
                prior[i] = z / 6.0 / (1.0 + k)
            if ir.l == 1:
                p[i : i + 3] = 0.5 + 0.1 * k
            i += ir.dim
    return q, p, prior


def _integrals(numbers, positions, origin, xp=np):
    """Synthetic (q (M,), d (3, M), prior (M,)) with the real integrals' structure."""
    qs, ds, priors = [], [], []
    for a, z in enumerate(numbers):
        q, p, prior = _element_tables(int(z))
        dim = q.shape[0]
        if xp is torch:
            q_t = torch.as_tensor(q, dtype=positions.dtype)
            d = torch.zeros((3, dim), dtype=positions.dtype)
            d = d + q_t[None, :] * (positions[a] - origin)[:, None]
            pd = torch.zeros((3, dim), dtype=positions.dtype)
            for i in np.nonzero(p)[0][::3]:
                pd[:, i : i + 3] = p[i] * torch.eye(3, dtype=positions.dtype)
            d = d + pd
        else:
            d = q[None, :] * (np.asarray(positions[a]) - np.asarray(origin))[:, None]
            for i in np.nonzero(p)[0][::3]:
                d[:, i : i + 3] += p[i] * np.eye(3)
        qs.append(q)
        ds.append(d)
        priors.append(prior)
    if xp is torch:
        return (
            torch.as_tensor(np.concatenate(qs), dtype=positions.dtype),
            torch.cat(ds, dim=1),
            torch.as_tensor(np.concatenate(priors), dtype=positions.dtype),
        )
    return np.concatenate(qs), np.concatenate(ds, axis=1), np.concatenate(priors)


def _mol_input(numbers, positions, charge=0.0) -> MoleculeInput:
    origin = centre_of_nuclear_charge(numbers, positions)
    q, d, prior = _integrals(numbers, positions, origin)
    return MoleculeInput(
        numbers=numbers,
        positions_bohr=positions,
        charge=charge,
        prior_coeffs=prior,
        charge_ints=q,
        dipole_ints=d,
        origin_bohr=origin,
    )


def _mol_irreps(numbers) -> o3.Irreps:
    return o3.Irreps("+".join(_pyscf_irreps(int(z)) for z in numbers))


def _make_model(seed: int = 0, dtype=torch.float64, **overrides) -> DensityModel:
    torch.manual_seed(seed)
    model = DensityModel.from_preset(
        "small", irreps_by_element=_irreps_by_element(), aux_basis=AUX, **overrides
    )
    return model.to(dtype)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These are tiny graphs: intra-op threads only add sync overhead (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomise_charge_transfer(model: DensityModel, seed: int = 3) -> DensityModel:
    """Give the charge-transfer MLP a random last layer (it starts at zero: no flow)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.charge_transfer.mlp[-1].parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.fixture(scope="module", params=["plain", "charge_transfer"])
def model64(request) -> DensityModel:
    """The small preset in float64, with and without the charge-transfer Δ charges."""
    if request.param == "plain":
        return _make_model(0, torch.float64).eval()
    return _randomise_charge_transfer(_make_model(0, torch.float64, charge_transfer=True)).eval()


def _random_rotation(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _wigner_d(irreps: o3.Irreps, rot: torch.Tensor) -> torch.Tensor:
    """Block-diagonal D(rot) for ``irreps`` to float64 machine precision.

    e3nn's ``Irreps.D_from_matrix`` is only good to ~2e-7 even in float64 (its J matrices are
    stored in single precision), too coarse for 1e-10 checks. Here D^l comes from the real
    spherical harmonics themselves, Y^l(R x) = D^l(R) Y^l(x), by least squares over random
    points; the parity factor p^[det R < 0] is applied on top.
    """
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    proper = rot * torch.sign(torch.det(rot))
    blocks = []
    for mul, ir in irreps:
        y = o3.spherical_harmonics(ir.l, x, normalize=True)
        y_rot = o3.spherical_harmonics(ir.l, x @ proper.T, normalize=True)
        d = torch.linalg.lstsq(y, y_rot).solution.T
        if torch.det(rot) < 0:
            d = d * ir.p
        blocks += [d] * mul
    return torch.block_diag(*blocks)


# ------------------------------------------------------------------------------------------
def test_exact_wigner_d_helper_agrees_with_e3nn():
    irreps = o3.Irreps("2x0e+1x1o+1x2e+1x3o+1x4e+1x1e+1x5o")
    for rot in (_random_rotation(8), -_random_rotation(9)):
        d = _wigner_d(irreps, rot)
        assert torch.allclose(d, irreps.D_from_matrix(rot), atol=1e-5)
        assert torch.allclose(d @ d.T, torch.eye(irreps.dim, dtype=torch.float64), atol=1e-12)


def test_e3nn_l1_convention_is_cartesian_xyz():
    """e3nn's l = 1 components are (x, y, z) and D^1(R) = R: the response's j is Cartesian."""
    v = torch.eye(3, dtype=torch.float64)
    y1 = o3.spherical_harmonics(1, v, normalize=True, normalization="component")
    assert torch.allclose(y1, math.sqrt(3.0) * v)
    rot = _random_rotation(1)
    assert torch.allclose(o3.Irreps("1o").D_from_matrix(rot), rot, atol=1e-12)
    assert torch.allclose(o3.Irreps("1o").D_from_matrix(-rot), -rot, atol=1e-12)


def test_response_irreps_change_of_basis_is_exact_and_orthogonal():
    irreps_z = o3.Irreps(_pyscf_irreps(6))
    irreps_r, w = response_irreps(irreps_z)
    d = irreps_z.dim
    assert irreps_r.dim == 3 * d
    assert torch.allclose(w @ w.T, torch.eye(3 * d, dtype=torch.float64), atol=1e-12)
    # same decomposition as e3nn's own full tensor product
    assert irreps_r == o3.FullTensorProduct(irreps_z, "1o").irreps_out.sort().irreps.simplify()
    z = torch.randn(4, 3 * d, dtype=torch.float64)
    for rot in (_random_rotation(2), -_random_rotation(3)):
        t_rot = ((z @ _wigner_d(irreps_r, rot).T) @ w).reshape(4, d, 3)
        t = (z @ w).reshape(4, d, 3)
        expect = torch.einsum("ab,nbj,kj->nak", _wigner_d(irreps_z, rot), t, rot)
        assert torch.allclose(t_rot, expect, atol=1e-10)
    # a wrong (transposed) field convention would fail this
    rot = _random_rotation(4)
    bad = torch.einsum("ab,nbj,jk->nak", _wigner_d(irreps_z, rot), (z @ w).reshape(4, d, 3), rot)
    assert not torch.allclose(((z @ _wigner_d(irreps_r, rot).T) @ w).reshape(4, d, 3), bad)


def test_radius_graph_only_pairs_within_molecules():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(11, 3, generator=g, dtype=torch.float64) * 2.0
    pos[5:] += 0.5  # second molecule overlaps the first in space
    batch = torch.tensor([0] * 5 + [1] * 4 + [2] * 2)
    ei = radius_graph(pos, batch, 4.0)
    got = {tuple(e) for e in ei.T.tolist()}
    want = set()
    for i in range(11):
        for j in range(11):
            if i != j and batch[i] == batch[j] and (pos[i] - pos[j]).norm() < 4.0:
                want.add((j, i))
    assert got == want
    assert len(got) > 0


@pytest.mark.parametrize(("n_isolated", "group_cost"), [(0, 256), (1, 256), (1, 0)])
def test_edge_density_equals_the_explicit_neighbour_sum(n_isolated, group_cost, monkeypatch):
    """The padded-table neighbour sum equals sum_j w(r_ij) s_j Y(r_hat_ij), edges in any order,
    in one table or (free groups) in several tables of atoms grouped by in-degree."""
    monkeypatch.setattr(graph_module, "GROUP_COST_SLOTS", group_cost)
    g = torch.Generator().manual_seed(1)
    n = 9 + n_isolated
    pos = torch.randn(n, 3, generator=g, dtype=torch.float64) * 2.0
    pos[9:] += 100.0  # isolated atoms: no edges, rows of zeros
    ei = radius_graph(pos, torch.zeros(n, dtype=torch.long), 4.0)
    ei = ei[:, torch.randperm(ei.shape[1], generator=g)]  # the table must not need sorted edges
    src, dst = ei
    vec = pos[src] - pos[dst]
    sh = o3.spherical_harmonics(o3.Irreps.spherical_harmonics(3), vec, True, "component")
    r = vec.norm(dim=-1)
    radial = torch.stack([torch.exp(-k * r) for k in (0.3, 0.7, 1.1, 1.9)], dim=1)  # of r alone
    edge = EdgeDensity(
        n_scalars=5, muls=[3, 2, 0, 2], n_radial=4, radial_hidden=6, avg_num_neighbors=3.0
    ).double()
    s = torch.randn(n, 5, generator=g, dtype=torch.float64)
    got = edge(s, EdgeGeometry.build(ei, sh, radial, n))

    w = edge.lin(s)[src] * edge.radial(radial)  # (E, channels), channels l-major
    want = []
    c0 = 0
    for l, mul in enumerate(edge.muls):
        y = sh[:, l * l : (l + 1) ** 2]
        msg = (w[:, c0 : c0 + mul, None] * y[:, None, :]).reshape(len(src), -1)
        want.append(torch.zeros(n, msg.shape[1], dtype=msg.dtype).index_add(0, dst, msg))
        c0 += mul
    want = torch.cat(want, dim=1) / math.sqrt(3.0)
    assert got.shape == (n, edge.irreps_out.dim)
    assert torch.allclose(got, want, atol=1e-12)
    if n_isolated:
        assert torch.count_nonzero(got[9:]) == 0
    table = neighbour_table(dst, n)
    assert table.k == int(torch.bincount(dst, minlength=n).max())
    assert (len(table.groups) > 1) == (group_cost == 0) == table.permuted
    assert len(set(table.slot.tolist())) == len(dst)  # every edge its own slot
    # every atom's row holds exactly its incoming edges, then zeros
    vals = torch.randn(len(dst), 3, generator=g, dtype=torch.float64)
    rows = torch.cat([p.reshape(p.shape[0], -1) for p in _pad_rows(table, vals)])
    for atom in range(n):
        row = rows[table.position[atom]].view(-1, 3)
        mine = vals[dst == atom]
        torch.testing.assert_close(row[: len(mine)], mine, atol=0, rtol=0)
        assert torch.count_nonzero(row[len(mine) :]) == 0
    assert torch.equal(table.atom_order[table.position], torch.arange(n))


def _rdkit_geometry(smiles: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers and an RDKit (ETKDG) geometry in bohr."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return numbers, mol.GetConformer().GetPositions() * 1.8897261246


def _pad_rows(table, vals: torch.Tensor) -> list[torch.Tensor]:
    """Per group, (A_b, K, 3): the group's table widened to the largest K, for comparison."""
    out = []
    for p in table.pad(vals):
        wide = p.new_zeros((p.shape[0], table.k, 3))
        wide[:, : p.shape[1]] = p
        out.append(wide)
    return out


def test_in_degree_groups_minimise_the_slots():
    """The cuts of the atoms sorted by in-degree are the best of all cuts into at most
    MAX_GROUPS groups (brute force on small cases), and a real batch of 64 drug-like molecules
    needs far fewer slots than one table padded to its largest in-degree."""
    import itertools

    rng = np.random.default_rng(0)
    cost = graph_module.GROUP_COST_SLOTS
    for _ in range(30):
        counts = np.sort(rng.integers(0, 25, size=int(rng.integers(1, 40))))
        got = graph_module._degree_groups(counts)
        assert sum(a for a, _ in got) == len(counts)
        got_cost = sum(a * k + cost for a, k in got)
        values = np.unique(counts)
        best = float("inf")
        for n_cuts in range(graph_module.MAX_GROUPS):
            for cuts in itertools.combinations(range(1, len(values)), n_cuts):
                bounds = [0, *cuts, len(values)]
                c = 0
                for i, j in itertools.pairwise(bounds):
                    members = (counts >= values[i]) & (counts <= values[j - 1])
                    c += int(members.sum()) * int(values[j - 1]) + cost
                best = min(best, c)
        assert got_cost == best
    numbers, pos = [], []
    for k, smi in enumerate(["CC(=O)Nc1ccc(O)cc1", "c1ccc2[nH]ccc2c1", "OCC(N)C(=O)O"] * 21):
        z, x = _rdkit_geometry(smi, seed=k)
        numbers.append(z)
        pos.append(torch.as_tensor(x) + 1000.0 * k)  # far apart: one graph per molecule
    positions = torch.cat(pos)
    dst = radius_graph(positions, torch.zeros(len(positions), dtype=torch.long), 7.5)[1]
    table = neighbour_table(dst, len(positions))
    slots = sum(a * k for a, k in table.groups)
    assert 1 < len(table.groups) <= graph_module.MAX_GROUPS
    assert slots < 0.8 * len(positions) * table.k


def test_edge_density_per_pair_equals_per_edge():
    """The radial MLP runs once per pair of edges: the neighbour density of every edge's own
    message (float64, shuffled edges, with and without autograd); both edges of a pair share
    one row, which holds their radial basis."""
    g = torch.Generator().manual_seed(4)
    n = 10
    pos = torch.randn(n, 3, generator=g, dtype=torch.float64) * 2.0
    ei = radius_graph(pos, torch.zeros(n, dtype=torch.long), 4.0)
    ei = ei[:, torch.randperm(ei.shape[1], generator=g)]
    src, dst = ei
    vec = pos[src] - pos[dst]
    r = vec.norm(dim=-1)
    sh = o3.spherical_harmonics(o3.Irreps.spherical_harmonics(2), vec, True, "component")
    radial = torch.stack([torch.sin(k * r) / r for k in (1.0, 2.0, 3.0)], dim=1)
    edge = EdgeDensity(
        n_scalars=4, muls=[3, 2, 2], n_radial=3, radial_hidden=5, avg_num_neighbors=3.0
    ).double()
    s = torch.randn(n, 4, generator=g, dtype=torch.float64)
    rev = reverse_edges(ei, n)
    per_pair = EdgeGeometry.build(ei, sh, radial, n, reverse=rev)
    computed = EdgeGeometry.build(ei, sh, radial, n)  # the reverse found by build itself
    assert torch.equal(computed.slot_pair, per_pair.slot_pair)
    n_pairs = ei.shape[1] // 2
    assert per_pair.pair_radial.shape == (n_pairs + 1, 3)
    table = per_pair.table
    pair = per_pair.slot_pair[table.slot]  # the pair of every edge
    assert torch.equal(pair, pair[rev])
    assert len(set(pair.tolist())) == n_pairs
    torch.testing.assert_close(per_pair.pair_radial[pair], radial, atol=1e-14, rtol=0)
    assert torch.equal(per_pair.slot_src[table.slot], src)
    # the empty slots read the zero row of the radial basis
    empty = table.pad_index == ei.shape[1]
    assert bool(empty.any()) and bool((per_pair.slot_pair[empty] == n_pairs).all())
    assert torch.count_nonzero(per_pair.pair_radial[-1]) == 0
    assert torch.count_nonzero(edge.radial(per_pair.pair_radial[-1:])) == 0  # no biases
    # against the messages of every edge, scattered to the receiving atoms
    w = edge.lin(s)[src] * edge.radial(radial)  # (E, channels), channels l-major
    parts, c0 = [], 0
    for l, mul in enumerate(edge.muls):
        msg = (w[:, c0 : c0 + mul, None] * sh[:, None, l * l : (l + 1) ** 2]).reshape(len(src), -1)
        parts.append(torch.zeros(n, msg.shape[1], dtype=msg.dtype).index_add(0, dst, msg))
        c0 += mul
    want = torch.cat(parts, dim=1) / math.sqrt(3.0)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            got = edge(s, per_pair)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert want.abs().max() > 1e-3


def test_edge_geometry_without_edges():
    """A lone atom has no edges: an empty (A, 0) table and a zero neighbour density."""
    ei = torch.zeros((2, 0), dtype=torch.long)
    geom = EdgeGeometry.build(ei, torch.zeros(0, 4), torch.zeros(0, 3), 1)
    edge = EdgeDensity(n_scalars=2, muls=[2, 1], n_radial=3, radial_hidden=4, avg_num_neighbors=1)
    out = edge(torch.ones(1, 2), geom)
    assert geom.table.k == 0 and out.shape == (1, 5) and torch.count_nonzero(out) == 0


def _equivariance_wrapper(
    model: DensityModel, numbers: np.ndarray, pos0: np.ndarray, charge: float
):
    """f(positions "cartesian_points") -> (density irreps_mol, n_e 0e, dipole 1o, alpha 0e+2e)."""
    base = collate(
        [_mol_input(numbers, pos0, charge)],
        element_dims=model.element_dims,
        cutoff_bohr=None,
        dtype=torch.float64,
    )
    rtp = o3.ReducedTensorProducts("ij=ji", i="1o")  # alpha -> 0e + 2e

    def f(pos: torch.Tensor):
        batch = dict(base)
        batch["positions_bohr"] = pos
        z = torch.as_tensor(numbers, dtype=pos.dtype)
        origin = (z[:, None] * pos).sum(0) / z.sum()
        q, d, prior = _integrals(numbers, pos, origin, xp=torch)
        batch.update(charge_ints=q, dipole_ints=d, prior_coeffs=prior, origin_bohr=origin[None])
        out = model(batch)
        alpha = out["polarizability_au"][0]
        alpha_sph = torch.einsum("ij,kij->k", alpha, rtp.change_of_basis.to(alpha.dtype))
        return out["density_coeffs"], out["n_electrons"], out["dipole_au"][0], alpha_sph

    irreps_out = [_mol_irreps(numbers), o3.Irreps("0e"), o3.Irreps("1o"), rtp.irreps_out]
    return f, irreps_out


@pytest.mark.parametrize("mol", ["formaldehyde", "methanol"])
def test_assert_equivariant_rotations_inversion_translations(model64, mol):
    numbers, pos = {"formaldehyde": FORMALDEHYDE, "methanol": METHANOL}[mol]
    f, irreps_out = _equivariance_wrapper(model64, numbers, pos, 0.0)
    torch.manual_seed(5)
    errors = assert_equivariant(
        f,
        args_in=[torch.as_tensor(pos, dtype=torch.float64)],
        irreps_in=["cartesian_points"],
        irreps_out=irreps_out,
        tolerance=1e-5,  # e3nn's float64 D_from_matrix is good to ~2e-7 only
        ntrials=2,
    )
    assert set(errors) == {(0, False), (0, True), (1, False), (1, True)}  # parity tested


def test_rotation_and_inversion_direct_wigner_d(model64):
    numbers, pos = METHANOL
    irreps = _mol_irreps(numbers)
    out0 = model64(model64.collate([_mol_input(numbers, pos)]))
    assert out0["density_coeffs"].abs().max() > 0.05
    assert out0["response_coeffs"].abs().max() > 1e-3
    for seed, sign in ((11, 1.0), (12, -1.0)):
        rot = sign * _random_rotation(seed)
        pos_r = pos @ rot.numpy().T
        out = model64(model64.collate([_mol_input(numbers, pos_r)]))
        dmat = _wigner_d(irreps, rot)
        c = out0["density_coeffs"]
        assert torch.allclose(out["density_coeffs"], dmat @ c, atol=1e-10)
        resp = out0["response_coeffs"]  # (3 j, M)
        assert torch.allclose(out["response_coeffs"], rot @ resp @ dmat.T, atol=1e-10)
        alpha0 = out0["polarizability_au"][0]
        assert torch.allclose(out["polarizability_au"][0], rot @ alpha0 @ rot.T, atol=1e-10)
        assert torch.allclose(out["dipole_au"][0], rot @ out0["dipole_au"][0], atol=1e-10)
        if sign < 0:  # parity really acts: l odd blocks flip, l even blocks do not
            assert not torch.allclose(out["density_coeffs"], c, atol=1e-6)
    alpha = out0["polarizability_au"][0]
    assert torch.allclose(alpha, alpha.T, atol=1e-14)


def test_permutation_of_atoms_permutes_blocks(model64):
    numbers, pos = METHANOL
    perm = np.array([3, 1, 5, 0, 2, 4])
    out = model64(model64.collate([_mol_input(numbers, pos)]))
    outp = model64(model64.collate([_mol_input(numbers[perm], pos[perm])]))
    dims = [o3.Irreps(_pyscf_irreps(int(z))).dim for z in numbers]
    offs = np.concatenate([[0], np.cumsum(dims)])
    idx = np.concatenate([np.arange(offs[a], offs[a + 1]) for a in perm])
    assert torch.allclose(outp["density_coeffs"], out["density_coeffs"][idx], atol=1e-10)
    assert torch.allclose(outp["response_coeffs"], out["response_coeffs"][:, idx], atol=1e-10)
    assert torch.allclose(outp["polarizability_au"], out["polarizability_au"], atol=1e-10)
    assert torch.allclose(outp["dipole_au"], out["dipole_au"], atol=1e-10)


def test_batched_equals_one_by_one(model64):
    mols = [_mol_input(*FORMALDEHYDE), _mol_input(*AMMONIUM, charge=1.0), _mol_input(*METHANOL)]
    batched = model64(model64.collate(mols))
    assert batched["polarizability_au"].shape == (3, 3, 3)
    start = 0
    for b, mol in enumerate(mols):
        single = model64(model64.collate([mol]))
        n = single["density_coeffs"].shape[0]
        sl = slice(start, start + n)
        assert torch.allclose(batched["density_coeffs"][sl], single["density_coeffs"], atol=1e-10)
        assert torch.allclose(
            batched["response_coeffs"][:, sl], single["response_coeffs"], atol=1e-10
        )
        for key in ("dipole_au", "polarizability_au", "n_electrons"):
            assert torch.allclose(batched[key][b], single[key][0], atol=1e-10)
        start += n
    assert start == batched["density_coeffs"].shape[0]


def test_envelope_vanishes_smoothly():
    env = PolynomialEnvelope(p=6)
    x = torch.tensor([0.0, 0.5, 1.0 - 1e-4, 1.0, 1.2], dtype=torch.float64, requires_grad=True)
    u = env(x)
    (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), x)
    assert u[0] == 1.0
    assert 0.0 < u[1] < 1.0
    assert abs(u[2]) < 1e-9 and u[3] == 0.0 and u[4] == 0.0
    assert abs(du[2]) < 1e-5 and du[3] == 0.0  # u ~ 56 (1 - x)^3 near the cutoff
    assert abs(d2u[2]) < 0.1 and abs(du[1]) > 0.1  # u'' ~ 336 (1 - x)


def test_smooth_when_a_neighbour_crosses_the_cutoff(model64):
    """Move an extra H along the C=O axis through r_c of the O atom (and only of O)."""
    numbers0, pos0 = WATER
    rc = model64.cutoff_bohr
    axis = np.array([0.0, 0.0, 1.0])

    def run(r: float) -> dict[str, torch.Tensor]:
        numbers = np.append(numbers0, 1)
        pos = np.vstack([pos0, pos0[0] + r * axis])
        dists = np.linalg.norm(pos[:-1] - pos[-1], axis=1)
        assert (np.sort(dists)[1] > rc + 0.1) and abs(dists[0] - r) < 1e-12
        return model64(model64.collate([_mol_input(numbers, pos)]))

    eps = 1e-4
    inside, outside, near = run(rc - eps), run(rc + eps), run(rc - 1.0)
    for key in ("density_coeffs", "response_coeffs"):
        assert (inside[key] - outside[key]).abs().max() < 1e-10, key
        assert (near[key] - outside[key]).abs().max() > 1e-6, key  # the test can fail
    energy_like = [(o["density_coeffs"] ** 2).sum() for o in (inside, outside)]
    assert abs(energy_like[0] - energy_like[1]) < 1e-10


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_electron_count_exact_and_response_neutral(dtype, tol):
    model = _make_model(1, dtype).eval()
    mols = [
        _mol_input(*FORMALDEHYDE),
        _mol_input(*AMMONIUM, charge=1.0),
        _mol_input(*WATER, charge=-1.0),
    ]
    batch = model.collate(mols)
    assert batch["positions_bohr"].dtype == dtype
    out = model(batch)
    assert out["density_coeffs"].dtype == dtype
    want = torch.tensor([16.0, 10.0, 11.0], dtype=torch.float64)
    q = batch["charge_ints"].double()
    cmol = batch["coef_mol_index"]
    n = torch.zeros(3, dtype=torch.float64).index_add_(0, cmol, q * out["density_coeffs"].double())
    assert (n - want).abs().max() < tol
    assert (out["n_electrons"].double() - want).abs().max() < tol
    # the unconstrained prediction is off, so the projection did something
    raw = batch["prior_coeffs"].double() + out["delta_coeffs"].double()
    n_raw = torch.zeros(3, dtype=torch.float64).index_add_(0, cmol, q * raw)
    assert (n_raw - want).abs().max() > 1e-3
    resp_charge = torch.zeros(3, 3, dtype=torch.float64).index_add_(
        1, cmol, q * out["response_coeffs"].double()
    )
    assert resp_charge.abs().max() < tol * 10
    assert out["response_coeffs"].abs().max() > 1e-4


def test_projection_is_minimal_change_along_q():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(7, generator=g, dtype=torch.float64)
    q = torch.tensor([1.0, 0.0, 2.0, 0.5, 0.0, 1.0, 3.0], dtype=torch.float64)
    mol = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    n = torch.tensor([3.0, -2.0], dtype=torch.float64)
    c2 = project_electron_count(c, q, mol, n)
    dc = c2 - c
    assert torch.allclose(dc[[1, 4]], torch.zeros(2, dtype=torch.float64))  # q = 0: unchanged
    for m in (0, 1):
        sel = mol == m
        assert torch.isclose((q[sel] * c2[sel]).sum(), n[m])
        ratio = dc[sel][q[sel] != 0] / q[sel][q[sel] != 0]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio))  # change is parallel to q


def test_dipole_is_origin_independent_for_neutral_and_counts_nuclei(model64):
    numbers, pos = FORMALDEHYDE
    out = model64(model64.collate([_mol_input(numbers, pos)]))
    mol2 = _mol_input(numbers, pos)
    mol2.origin_bohr = np.array([1.0, -2.0, 0.5])
    _, d2, _ = _integrals(numbers, pos, mol2.origin_bohr)
    mol2.dipole_ints = d2
    out2 = model64(model64.collate([mol2]))
    assert torch.allclose(out["dipole_au"], out2["dipole_au"], atol=1e-10)


def test_config_json_round_trip_and_clean_state_dict(model64):
    cfg = json.loads(json.dumps(model64.config))
    rebuilt = DensityModel.from_config(cfg).double()
    state = model64.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any("cg_inv" in k or "lookup" in k for k in state)
    rebuilt.load_state_dict(state)
    batch = model64.collate([_mol_input(*METHANOL)])
    a, b = model64(batch), rebuilt(batch)
    for key in ("density_coeffs", "response_coeffs", "polarizability_au"):
        assert torch.equal(a[key], b[key])
    assert cfg["preset"] == "small" and cfg["aux_basis"] == AUX
    assert set(PRESETS) >= {"small", "default", "wide"}


def test_unsupported_element_is_a_clear_error(model64):
    with pytest.raises(KeyError, match="element 17"):
        model64.collate([_mol_input(np.array([6, 17]), np.array([[0, 0, 0], [3.3, 0, 0.0]]))])


def test_training_overfits_three_molecules():
    """Targets: prior + the Delta of a differently seeded model (an equivariant perturbation)."""
    mols = [_mol_input(*FORMALDEHYDE), _mol_input(*AMMONIUM, charge=1.0), _mol_input(*WATER)]
    teacher = _make_model(7, torch.float32).eval()
    with torch.no_grad():
        batch = teacher.collate(mols)
        target = teacher(batch)
    model = _make_model(3, torch.float32, response=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)

    def loss_fn() -> torch.Tensor:
        out = model(batch)
        return ((out["density_coeffs"] - target["density_coeffs"]) ** 2).mean() + (
            (out["response_coeffs"] - target["response_coeffs"]) ** 2
        ).mean()

    with torch.no_grad():
        loss0 = float(loss_fn())
    best = loss0
    for _ in range(400):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        sched.step()
        best = min(best, float(loss.detach()))
        if best < loss0 / 300:
            break
    assert loss0 > 1e-4
    assert best < loss0 / 100, (loss0, best)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["default", "wide"])
def test_larger_presets_equivariant_float64(preset):
    torch.manual_seed(0)
    model = DensityModel.from_preset(preset, irreps_by_element=_irreps_by_element()).double()
    f, irreps_out = _equivariance_wrapper(model.eval(), *AMMONIUM, 1.0)
    assert_equivariant(
        f,
        args_in=[torch.as_tensor(AMMONIUM[1], dtype=torch.float64)],
        irreps_in=["cartesian_points"],
        irreps_out=irreps_out,
        tolerance=1e-5,  # e3nn's float64 D_from_matrix is good to ~2e-7 only
    )


def test_model_is_copyable_and_float64_parameters(model64):
    m2 = copy.deepcopy(model64)
    assert all(p.dtype == torch.float64 for p in m2.parameters())


def test_bromine_jkfit_heads_are_reachable_and_equivariant():
    """Br in def2-universal-jkfit has l <= 5 shells (its field response reaches l = 6): every
    preset builds heads for it, and density and response rotate as they must (float64)."""
    from densnet_core.basis import element_irreps

    aux = "def2-universal-jkfit"
    irreps = {z: element_irreps(z, aux) for z in (1, 6, 35)}
    assert max(ir.l for _, ir in o3.Irreps(irreps[35])) == 5
    for preset in PRESETS:
        DensityModel.from_preset(preset, irreps_by_element=irreps, aux_basis=aux)
    torch.manual_seed(0)
    model = DensityModel.from_preset("small", irreps_by_element=irreps, aux_basis=aux)
    model = model.double().eval()
    numbers = np.array([6, 35, 1, 1, 1])  # bromomethane, slightly distorted
    pos0 = np.array(
        [
            [0.0, 0.0, 0.0],
            [0.1, 0.05, 3.66],
            [1.95, 0.1, -0.7],
            [-1.0, 1.7, -0.66],
            [-0.9, -1.6, -0.7],
        ]
    )
    mol_irreps = o3.Irreps("+".join(str(o3.Irreps(irreps[int(z)])) for z in numbers))

    def run(pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        batch = collate(
            [MoleculeInput(numbers=numbers, positions_bohr=pos, charge=0.0)],
            element_dims=model.element_dims,
            cutoff_bohr=None,
            dtype=torch.float64,
        )
        with torch.no_grad():
            out = model(batch)
        return out["density_coeffs"], out["response_coeffs"]  # (M,), (3, M)

    rho0, resp0 = run(pos0)
    torch.manual_seed(3)
    rot = o3.rand_matrix(dtype=torch.float64)
    rho1, resp1 = run(pos0 @ rot.numpy().T)
    d = mol_irreps.D_from_matrix(rot)
    assert resp0.abs().max() > 1e-3
    torch.testing.assert_close(rho1, d @ rho0, atol=1e-6, rtol=0)
    # response[j] = d rho / d E_j: rotates as the density on mu and as a vector on j
    torch.testing.assert_close(resp1, rot @ (resp0 @ d.T), atol=1e-6, rtol=0)


def test_prior_projection_keeps_dipole_and_polarizability():
    """Imposing the electron count along the SAD prior (real prior and integrals, def2-universal-
    jkfit) moves neither the dipole about the centre of nuclear charge nor the polarizability;
    along q it moves the dipole (the reason the presets project along the prior)."""
    from densnet_core.featurize import featurize
    from densnet_core.level import DEFAULT_LEVEL
    from densnet_core.model import dipole_au, polarizability_au

    numbers, pos = METHANOL
    m = featurize(numbers, pos, 0, level=DEFAULT_LEVEL)
    prior = torch.as_tensor(m.prior_coeffs, dtype=torch.float64)
    q = torch.as_tensor(m.charge_ints, dtype=torch.float64)
    d = torch.as_tensor(m.dipole_ints, dtype=torch.float64)
    n_coef = prior.shape[0]
    cmol = torch.zeros(n_coef, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    raw = prior + 0.05 * torch.randn(n_coef, generator=g, dtype=torch.float64)
    n_target = torch.tensor([float(numbers.sum())], dtype=torch.float64)
    assert abs(float(q @ raw) - float(n_target)) > 0.1  # something to correct

    def mu(c: torch.Tensor) -> torch.Tensor:
        return dipole_au(
            c,
            d,
            cmol,
            torch.as_tensor(numbers),
            torch.as_tensor(pos, dtype=torch.float64),
            torch.zeros(len(numbers), dtype=torch.long),
            torch.as_tensor(m.origin_bohr, dtype=torch.float64)[None],
        )

    c_prior = project_electron_count(raw, q, cmol, n_target, prior)
    c_q = project_electron_count(raw, q, cmol, n_target)
    for c in (c_prior, c_q):
        assert float(q @ c) == pytest.approx(float(n_target), abs=1e-9)
    assert torch.allclose(mu(c_prior), mu(raw), atol=1e-8)
    assert (mu(c_q) - mu(raw)).norm() > 1e-3

    resp = 0.05 * torch.randn(3, n_coef, generator=g, dtype=torch.float64)
    r_prior = project_electron_count(resp, q, cmol, torch.zeros(3, 1, dtype=torch.float64), prior)
    assert (r_prior @ q).abs().max() < 1e-10
    a_raw = polarizability_au(resp, d, cmol, 1)
    assert torch.allclose(polarizability_au(r_prior, d, cmol, 1), a_raw, atol=1e-8)


def test_count_projection_in_config():
    irreps = _irreps_by_element()
    new = DensityModel.from_preset("small", irreps_by_element=irreps)
    assert new.count_projection == "prior" and new.config["count_projection"] == "prior"
    old_cfg = {k: v for k, v in new.config.items() if k != "count_projection"}
    assert DensityModel.from_config(old_cfg).count_projection == "euclidean"  # older models
    with pytest.raises(ValueError, match="count_projection"):
        DensityModel.from_preset("small", irreps_by_element=irreps, count_projection="l2")


def _neutral_atom_input(numbers, positions) -> MoleculeInput:
    """:func:`_mol_input` with every atom's prior block scaled to Z electrons (as the SAD)."""
    mol = _mol_input(numbers, positions)
    prior, q = mol.prior_coeffs.copy(), mol.charge_ints
    start = 0
    for z in numbers:
        sl = slice(start, start + _element_tables(int(z))[0].shape[0])
        prior[sl] *= z / float(q[sl] @ prior[sl])
        start = sl.stop
    return dataclasses.replace(mol, prior_coeffs=prior)


def _atom_delta_charges(model: DensityModel, batch: dict) -> torch.Tensor:
    out = model(batch)
    q, atom = batch["charge_ints"], batch["coef_atom_index"]
    delta = out["density_coeffs"] - batch["prior_coeffs"]
    return delta.new_zeros(batch["numbers"].shape[0]).index_add_(0, atom, q * delta)


def test_charge_transfer_keeps_delta_charges_local():
    """With charge transfer, Δ moves electrons only between atoms within the cutoff.

    Water and formaldehyde 30 bohr apart (4x the cutoff) in one molecule: each fragment's Δ is
    neutral on its own, so the dipole is the sum of the two fragments' dipoles. Without it the
    heads' free charges leave one fragment charged against the other (the global count
    projection cannot tell them apart), which the same check catches.
    """
    frags = [WATER, (FORMALDEHYDE[0], FORMALDEHYDE[1] @ _random_rotation(4).numpy().T + 30.0)]
    numbers = np.concatenate([f[0] for f in frags])
    pos = np.vstack([f[1] for f in frags])
    n_first = len(WATER[0])
    for ct in (True, False):
        model = _make_model(2, torch.float64, charge_transfer=ct).eval()
        if ct:
            _randomise_charge_transfer(model)
        batch = model.collate([_neutral_atom_input(numbers, pos)])
        dq = _atom_delta_charges(model, batch)
        first = dq[:n_first].sum()
        if ct:
            assert dq.abs().max() > 1e-3  # charges do move within each fragment
            assert abs(first) < 1e-12 and abs(dq[n_first:].sum()) < 1e-12
            single = [
                model(model.collate([_neutral_atom_input(*f)]))["dipole_au"][0] for f in frags
            ]
            both = model(batch)["dipole_au"][0]
            assert torch.allclose(both, single[0] + single[1], atol=1e-10)
        else:
            assert abs(first) > 1e-3  # the check can fail


def test_charge_transfer_is_its_definition():
    """t_AB = [g(s_A, s_B, b) - g(s_B, s_A, b)] u: the once-per-edge evaluation (first layer
    per atom, the reverse edge's g for the second term) against the MLP on the concatenated
    inputs, both ways round, on a random model with a random last layer (float64)."""
    model = _randomise_charge_transfer(_make_model(5, torch.float64, charge_transfer=True))
    ct = model.charge_transfer
    mols = [WATER, FORMALDEHYDE]
    batch = model.collate([_neutral_atom_input(*m) for m in mols])
    pos = batch["positions_bohr"]
    edge_index = radius_graph(pos, batch["batch"], model.cutoff_bohr)
    src, dst = edge_index
    r = (pos[dst] - pos[src]).norm(dim=1)
    radial = model.radial_basis(r)
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(pos.shape[0], model.irreps_readout.dim, generator=g, dtype=torch.float64)
    got = ct(feats, edge_index, r, radial, model.cutoff_bohr)
    s = feats.index_select(1, ct._scalar_index)
    g_in = ct.mlp(torch.cat([s[dst], s[src], radial], dim=1)).squeeze(1)
    g_out = ct.mlp(torch.cat([s[src], s[dst], radial], dim=1)).squeeze(1)
    t = (g_in - g_out) * ct.envelope(r / model.cutoff_bohr)
    want = feats.new_zeros(pos.shape[0]).index_add_(0, dst, t)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # edges in any order: the same flows
    perm = torch.randperm(src.numel(), generator=g)
    again = ct(feats, edge_index[:, perm], r[perm], radial[perm], model.cutoff_bohr)
    torch.testing.assert_close(again, want, rtol=0, atol=1e-12)


def test_reverse_edges():
    pos = torch.randn(20, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    batch = torch.tensor([0] * 7 + [1] * 13)
    edge_index = radius_graph(2.0 * pos, batch, 3.0)
    rev = reverse_edges(edge_index, 20)
    assert edge_index.shape[1] > 20 and torch.equal(edge_index[:, rev], edge_index.flip(0))
    assert reverse_edges(edge_index[:, :0], 20).numel() == 0
    with pytest.raises(ValueError, match="no reverse"):
        reverse_edges(edge_index[:, 1:], 20)


def test_charge_transfer_config_round_trip_and_old_configs():
    model = _make_model(0, torch.float64, charge_transfer=True)
    assert model.config["charge_transfer"] is True
    again = DensityModel.from_config(json.loads(json.dumps(model.config)))
    assert again.charge_transfer is not None
    assert set(again.state_dict()) == set(model.state_dict())
    old = dict(model.config)
    del old["charge_transfer"]  # a config written before the option: no charge transfer
    assert DensityModel.from_config(old).charge_transfer is None


def test_config_says_when_a_preset_was_overridden():
    irreps = _irreps_by_element()
    same = DensityModel.from_preset("small", irreps_by_element=irreps, n_layers=2)
    other = DensityModel.from_preset("small", irreps_by_element=irreps, n_layers=3)
    assert same.config["preset"] == "small"
    assert other.config["preset"] == "small+custom" and other.config["n_layers"] == 3


def test_memoised_gate_moments_equal_e3nn_own_and_the_patch_is_undone() -> None:
    """The model build memoises e3nn's activation moments; the constants are e3nn's own."""
    from e3nn.math import _normalize_activation, normalize2mom

    from densnet_core.model import _fast_e3nn_build

    acts = (torch.sigmoid, torch.nn.functional.silu, torch.tanh, torch.abs)
    original = _normalize_activation.moment
    plain = [normalize2mom(f).cst for f in acts]
    with _fast_e3nn_build():
        assert _normalize_activation.moment is not original
        first = [normalize2mom(f).cst for f in acts]
        again = [normalize2mom(f).cst for f in acts]
    assert _normalize_activation.moment is original
    assert first == plain and again == plain
