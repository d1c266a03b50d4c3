"""Crash-safe file writing: every output is written to a temporary name and renamed.

A reader (or a crash) never sees a half-written file: ``os.replace`` is atomic on POSIX
when source and destination are on the same filesystem, which a sibling temp file is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cdiff_cli.errors import CdiffError, DataError, first_line


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
    except OSError as e:
        raise CdiffError(f"cannot write {path}: {e.strerror or e}") from e
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise CdiffError(f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` as a whole."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        raise CdiffError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CdiffError(f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def safe_child(parent: Path, name: str) -> Path:
    """``parent / name`` for a file name derived from user input, refusing to escape ``parent``."""
    base = Path(name).name  # drops any directory part, including '../' and absolute prefixes
    if base in {"", ".", ".."}:
        raise CdiffError(f"unusable output name derived from {name!r}")
    return parent / base


def require_dir(path: Path, what: str, error: type[CdiffError] = DataError) -> None:
    """Check that ``path`` is an existing folder, so that a wrong path gives one line naming
    ``what`` it should be (a data folder, an image folder, a run directory)."""
    if not path.exists():
        raise error(f"{what} not found: {path}")
    if not path.is_dir():
        raise error(f"{what} {path} is a file, expected a folder")


def require_file(path: Path, what: str, expected: str, error: type[CdiffError] = DataError,
                 allow_empty: bool = True) -> int:
    """Check that ``path`` is an existing, readable file before parsing it, so that a wrong path
    gives one line naming ``what`` it should be (``expected``: the kind of file, said when a
    folder is there) instead of a parser's traceback; its size in bytes."""
    if not path.exists():
        raise error(f"{what} not found: {path}")
    if path.is_dir():
        raise error(f"{what} is a directory, expected {expected}: {path}")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    if size == 0 and not allow_empty:
        raise error(f"{what} {path} is empty (0 bytes)")
    return size


def read_json(path: Path, what: str, hint: str = "", error: type[CdiffError] = DataError) -> dict[str, Any]:
    """The JSON object in ``path``; a missing, unreadable or malformed file raises ``error`` as one
    line naming ``what`` the file is, ending with ``hint`` (how to write it again)."""
    end = f"; {hint}" if hint else ""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}{end}") from None
    except (OSError, ValueError) as e:
        raise error(f"{what} {path} is corrupt: not readable JSON ({first_line(e)[:100]}){end}") from None
    if not isinstance(doc, dict):
        raise error(f"{what} {path} is corrupt: not a JSON object{end}")
    return doc


def check_output_dir(out: Path, option: str = "--out") -> None:
    """Fail before any work when ``out`` cannot become a writable folder: it is a file, or its
    nearest existing folder cannot be written (nothing is created here, so a run that stops
    before its first output leaves no empty folder behind)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CdiffError(f"{option} {out} exists and is not a folder")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise CdiffError(f"{option} {out}: {probe} is a file, so the folder cannot be made")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CdiffError(f"{option} {out}: {probe} is not writable")


@contextlib.contextmanager
def output_set() -> Iterator[list[Path]]:
    """The files written for one input: append each path before writing it; if anything fails
    before the set is complete, every one of them is removed (no half set of outputs is left)."""
    paths: list[Path] = []
    try:
        yield paths
    except BaseException:
        for p in paths:
            with contextlib.suppress(OSError):
                Path(p).unlink()
        raise
