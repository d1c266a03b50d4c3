"""One place for terminal output: a rich console on stderr and progress bars that stay quiet
when output is not a terminal (tests, CI logs) unless ``CDIFF_PROGRESS=1``."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)


def progress_enabled() -> bool:
    flag = os.environ.get("CDIFF_PROGRESS")
    if flag is not None:
        return flag not in {"0", "", "false"}
    return sys.stderr.isatty()


def make_progress(*extra_columns: TextColumn) -> Progress:
    """A progress bar with count, ETA and any extra columns (e.g. loss, it/s)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not progress_enabled(),
        transient=False,
    )


def info(message: str) -> None:
    console.print(message)


def warn(message: str) -> None:
    """One line about something the run skipped or changed (never wrapped: one line per event)."""
    console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)
