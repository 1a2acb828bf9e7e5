"""densnet_core: the DenSNet library (no workflow engine).

Electron densities of molecules learned from PySCF, and the observables computed from them.
Atomic units inside (bohr, hartree, e); names carry units at the edges. See DESIGN.md.
"""

__version__ = "0.1.0"
