"""Free-atom (SAD) prior: electron count, sphericity, cache and package-data lookup."""

from __future__ import annotations

import numpy as np
import pytest
from pyscf import gto

from densnet_core import basis as B
from densnet_core.level import LevelOfTheory
from densnet_core.prior import PriorLibrary, _read_npz, _write_npz_atomic, precompute_priors

LEVEL = LevelOfTheory()  # B3LYP/def2-SVPD, def2-universal-jkfit
METHANOL = "C 0 0 0; O 2.7 0 0; H 3.2 1.7 0; H -0.7 1.9 0; H -0.7 -1 1.6; H -0.7 -1 -1.6"


@pytest.fixture
def library(tmp_path):
    return PriorLibrary(LEVEL, cache_dir=tmp_path / "cache", package_dir=tmp_path / "pkg")


def test_prior_integrates_to_neutral_electron_count_and_is_spherical(library):
    mol = gto.M(atom=METHANOL, unit="Bohr", verbose=0)
    numbers = [int(z) for z in mol.atom_charges()]
    aux = B.make_auxmol(mol, LEVEL.fit_auxbasis)
    prior = library.molecular(numbers)
    assert prior.shape == (aux.nao,)
    assert abs(B.charge_integrals(aux) @ prior - 18.0) < 1e-8
    for z in set(numbers):
        c = library.element(z)
        assert abs(B.element_charge_integrals(z, LEVEL.fit_auxbasis) @ c - z) < 1e-8
        for off, l in B.element_layout(z, LEVEL.fit_auxbasis):
            if l > 0:
                assert np.all(c[off : off + 2 * l + 1] == 0.0)
        assert np.abs(c).max() > 0
    # per-atom slices in the molecule's aux-AO order
    for ia, (_, _, p0, p1) in enumerate(aux.aoslice_by_atom()):
        np.testing.assert_array_equal(prior[p0:p1], library.element(numbers[ia]))
    assert library.n_computed == 3  # C, O, H


def test_prior_of_an_ion_has_the_neutral_count(library):
    """Documented behaviour: the prior is a superposition of NEUTRAL atoms; the model's charge
    projection fixes the total charge of an ion later."""
    mol = gto.M(
        atom="N 0 0 0; H 1.9 0 0; H -0.6 1.8 0; H -0.6 -0.9 1.6; H -0.6 -0.9 -1.6",
        unit="Bohr",
        charge=1,
        verbose=0,
    )
    prior = library.molecular([7, 1, 1, 1, 1])
    aux = B.make_auxmol(mol, LEVEL.fit_auxbasis)
    assert abs(B.charge_integrals(aux) @ prior - 11.0) < 1e-8  # not mol.nelectron == 10


def test_prior_cache_hit_does_not_recompute(library, tmp_path):
    first = library.molecular([8, 1, 1])
    assert library.n_computed == 2
    assert library.cache_path.is_file()
    again = library.molecular([1, 8, 1])
    assert library.n_computed == 2  # in-memory hit
    fresh = PriorLibrary(LEVEL, cache_dir=tmp_path / "cache", package_dir=tmp_path / "pkg")
    np.testing.assert_array_equal(fresh.molecular([8, 1, 1]), first)
    assert fresh.n_computed == 0  # disk hit
    fresh.molecular([6, 1])
    assert fresh.n_computed == 1  # only C was missing; merged into the same file
    assert set(_read_npz(library.cache_path)) == {1, 6, 8}
    assert again.shape == first.shape


def test_package_data_is_checked_first(tmp_path):
    pkg = tmp_path / "pkg"
    fake = {1: np.full(B.element_nao(1, LEVEL.fit_auxbasis), 0.25)}
    _write_npz_atomic(pkg / f"{LEVEL.hash}.npz", fake, LEVEL)
    lib = PriorLibrary(LEVEL, cache_dir=tmp_path / "cache", package_dir=pkg)
    np.testing.assert_array_equal(lib.element(1), fake[1])
    assert lib.n_computed == 0
    assert not lib.cache_path.exists()


def test_precompute_writes_requested_elements(tmp_path):
    level = LevelOfTheory(xc="hf", basis="def2-svp", fit_auxbasis="def2-universal-jfit")
    path = precompute_priors(level, [1, 9], cache_dir=tmp_path)
    assert path == tmp_path / "priors" / f"{level.hash}.npz"
    vectors = _read_npz(path)
    assert set(vectors) == {1, 9}
    q = B.element_charge_integrals(9, "def2-universal-jfit")
    assert abs(q @ vectors[9] - 9.0) < 1e-8
