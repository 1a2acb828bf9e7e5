"""The ``densnet`` command line. Each sub-command lives in ``densnet/commands/<name>.py``.

Heavy imports (RDKit, PySCF, torch, Prefect) happen inside the commands, so ``densnet --help``
stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="densnet",
    help="Electronic observables of molecules from a machine-learned electron density.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
