"""Terminal output shared by the commands: errors without tracebacks, status summaries."""

from __future__ import annotations

from collections.abc import Mapping

import typer


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` to stderr and return the ``typer.Exit`` to raise."""
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def say(message: str) -> None:
    """Print a line of the command's own output (stdout, no markup surprises)."""
    from rich.console import Console

    Console().print(message, highlight=False, soft_wrap=True, markup=False)


def status_line(counts: Mapping[str, int]) -> str:
    """``"status: ok 12, invalid_smiles 1"``."""
    return "status: " + ", ".join(f"{s} {n}" for s, n in counts.items())
