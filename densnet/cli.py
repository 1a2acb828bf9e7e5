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


@app.callback()
def _densnet() -> None:
    """Electronic observables of molecules from a machine-learned electron density."""
    # A callback keeps `densnet` a command group even while only one sub-command exists
    # (typer otherwise runs a lone command directly, and `densnet conformers ...` breaks).


from densnet.commands.conformers import conformers  # noqa: E402 - light import (typer only)

app.command("conformers")(conformers)

from densnet.commands.train import train  # noqa: E402 - light import (typer only)

app.command("train")(train)

from densnet.commands.label import label  # noqa: E402 - light import (typer only)

app.command("label")(label)

from densnet.commands.run import run  # noqa: E402 - light import (typer only)

app.command("run")(run)

from densnet.commands.predict import predict  # noqa: E402 - light import (typer only)

app.command("predict")(predict)

from densnet.commands.md import md  # noqa: E402 - light import (typer only)

app.command("md")(md)

from densnet.commands.active_learn import active_learn  # noqa: E402 - light import (typer only)

app.command("active-learn")(active_learn)


def main() -> None:
    """The console entry point (``densnet``, ``python -m densnet``): run the app; when the
    command succeeded and asked for it (:func:`densnet.console.request_fast_exit`), end the
    process without the interpreter's teardown."""
    import os
    import sys

    from densnet.console import fast_exit_requested

    try:
        app()
    except SystemExit as exc:
        if exc.code in (0, None) and fast_exit_requested():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise
