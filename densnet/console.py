"""Terminal output shared by the commands: errors without tracebacks, status summaries,
progress bars."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


_FAST_EXIT = False


def request_fast_exit() -> None:
    """Let the console entry point (:func:`densnet.cli.main`) end the process with
    ``os._exit`` once the command has returned successfully, skipping the interpreter's
    teardown (for ``densnet predict``: ~0.5 s of torch and model clean-up, ~5 % of a
    1,000-molecule run here). Only for commands whose outputs are all written and closed."""
    global _FAST_EXIT
    _FAST_EXIT = True


def fast_exit_requested() -> bool:
    """Whether a command called :func:`request_fast_exit`."""
    return _FAST_EXIT


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` to stderr and return the ``typer.Exit`` to raise."""
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def check_table_paths(input_path: Path, output: Path) -> None:
    """Exit with an error (:func:`fail`) unless ``input_path`` is an input file the pipeline
    reads (:func:`densnet_core.inputs.detect_format`) and ``output`` is not a folder."""
    from densnet_core.inputs import InputFileError, detect_format

    try:
        detect_format(input_path)
    except InputFileError as exc:
        raise fail(str(exc)) from None
    if output.exists() and output.is_dir():
        raise fail(f"output {output} is a folder; give a .parquet file path")


def say(message: str) -> None:
    """Print a line of the command's own output (stdout, no markup surprises)."""
    from rich.console import Console

    Console().print(message, highlight=False, soft_wrap=True, markup=False)


def status_line(counts: Mapping[str, int]) -> str:
    """``"status: ok 12, invalid_smiles 1"``."""
    return "status: " + ", ".join(f"{s} {n}" for s, n in counts.items())


def transient_progress(
    console: Console, label: str, *, rate: bool = True, auto_refresh: bool = True
) -> Progress:
    """The commands' progress bar: ``label``, bar, done/total, [rate], elapsed time, ETA.

    Parameters
    ----------
    console
        Where the bar is drawn (the stderr console of the command).
    label
        Text of the first column, a ``rich`` format string (e.g. ``"{task.description:>10}"``).
    rate
        Add a column showing the task field ``rate`` (tasks must be added with ``rate=...``).
    auto_refresh
        Refresh from a thread; False when workers are forked while the bar is shown (the
        caller then calls ``refresh()``).

    Returns
    -------
    rich.progress.Progress
        Transient (erased when its ``with`` block ends); use it as a context manager.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    if rate:
        columns.append(TextColumn("{task.fields[rate]}"))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=True, auto_refresh=auto_refresh)
