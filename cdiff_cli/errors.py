"""User-facing errors.

Anything a user can cause (a bad path, a corrupt file, a wrong recipe value) is raised as a
:class:`CdiffError` with a one-line message; the CLI prints it and exits with code 2.
Set ``CDIFF_DEBUG=1`` to see the full traceback instead.
"""

from __future__ import annotations


class CdiffError(Exception):
    """An error the user can fix; its message is one clear line."""

    exit_code = 2
    label = "error: "  # how the CLI prefixes the message


class RecipeError(CdiffError):
    """A recipe file or override is invalid."""


class DataError(CdiffError):
    """An input image, volume, mask or annotation file is unusable."""


class CheckpointError(CdiffError):
    """A model folder or checkpoint is missing, corrupt or does not match the recipe."""


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first line of ``error``'s message, for a one-line report; ``default`` (else the
    exception's type name) when the message is empty. Many libraries put a traceback-like
    explanation or the whole offending document after the first line."""
    lines = str(error).strip().splitlines()
    if lines:
        return lines[0]
    return type(error).__name__ if default is None else default
