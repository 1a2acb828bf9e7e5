"""RDKit geometries of small real molecules for the model tests."""

from __future__ import annotations

import numpy as np

from densnet_core.units import BOHR_PER_ANGSTROM


def rdkit_geometry(smiles: str, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers (n,) and ETKDG positions (n, 3) in bohr of ``smiles`` with hydrogens."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return numbers, mol.GetConformer().GetPositions() * BOHR_PER_ANGSTROM
