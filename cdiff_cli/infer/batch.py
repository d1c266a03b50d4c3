"""A run over many inputs (``cdiff reconstruct``, ``cdiff localize``) that is never silently wrong.

- Every input gets its own output name: two files called ``scan.nii.gz`` from different folders
  are written as ``a__scan_*`` and ``b__scan_*`` (their folders relative to the inputs' common
  folder), never one over the other; the renaming is said.
- Every readable input is processed: an unreadable one (corrupt, wrong size, not a brain) is
  listed with its reason, one line each, and in the run's JSON, and the run then ends with exit
  code 3 (:class:`SomeInputsFailed`); ``strict`` stops at the first instead.
- What can be checked from headers alone (the file type, an image's size, a volume's voxel size
  and field of view) is checked before the model is loaded, so a typo fails in a fraction of a
  second.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cdiff_cli.console import warn
from cdiff_cli.data.dicom import is_dicom_folder
from cdiff_cli.data.extent import check_file_extent
from cdiff_cli.errors import CdiffError, DataError, first_line
from cdiff_cli.infer.files import collect_inputs
from cdiff_cli.infer.pipeline import pipelined
from cdiff_cli.infer.reconstruct import output_stem

T = TypeVar("T")


class SomeInputsFailed(CdiffError):
    """Some inputs could not be processed; the others were written (exit code 3, not 2)."""

    exit_code = 3


@dataclass(frozen=True)
class Failure:
    """An input that could not be processed, and why (one line)."""

    path: Path
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"input": str(self.path), "reason": self.reason}


@dataclass
class InputPlan:
    """The inputs of a run: the files to process with their unique output names, and those refused."""

    files: list[Path]
    names: dict[Path, str]
    failed: list[Failure] = field(default_factory=list)
    strict: bool = False

    def fail(self, path: Path, error: BaseException, quiet: bool = False) -> Failure:
        """Record ``path`` as failed (one warning line unless ``quiet``); under ``strict``, raise instead."""
        if self.strict:
            raise error if isinstance(error, CdiffError) else DataError(f"{path}: {first_line(error)}")
        failure = Failure(path, first_line(error))
        self.failed.append(failure)
        if not quiet:
            say(failure)
        return failure

    def require_some(self, what: str) -> None:
        """When every input failed, the run wrote nothing: say so in one line (exit code 2)."""
        if self.failed and len({f.path for f in self.failed}) >= len(self.files):
            raise DataError(f"none of the {len(self.failed)} inputs could be {what} (each is listed above)")

    def finish(self, what: str, json_path: Path | None = None) -> None:
        """End the run: exit code 3 with one summary line when any input failed."""
        if self.failed:
            total = len(self.files) + len([f for f in self.failed if f.path not in self.names])
            where = f" (listed above and in {json_path})" if json_path is not None else " (listed above)"
            raise SomeInputsFailed(f"{len(self.failed)} of {total} input(s) could not be {what}{where}; "
                                   f"the other {total - len(self.failed)} were")


def say(failure: Failure) -> None:
    """One warning line for a skipped input (its reason names the file when it does not start with it)."""
    reason = failure.reason
    warn(f"skipped {reason}" if reason.startswith(failure.path.name) else f"skipped {failure.path}: {reason}")


def unique_names(files: Sequence[Path]) -> dict[Path, str]:
    """An output name per input: its stem, or, where stems collide (case-insensitively, as on macOS
    and Windows disks), its folders relative to the inputs' common folder joined with ``__``."""
    stems = {p: output_stem(p) for p in files}
    counts: dict[str, int] = {}
    for s in stems.values():
        counts[s.casefold()] = counts.get(s.casefold(), 0) + 1
    clashing = [p for p in files if counts[stems[p].casefold()] > 1]
    if not clashing:
        return stems
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in clashing]))
    names = dict(stems)
    for p in clashing:
        parts = p.resolve().parent.relative_to(root).parts
        names[p] = "__".join([*parts, stems[p]])
    taken: dict[str, Path] = {}
    for p in files:  # still equal (scan.nii and scan.nii.gz in one folder): the whole file name
        key = names[p].casefold()
        if key in taken:
            names[p] = "__".join([*p.resolve().parent.relative_to(root).parts, p.name]) if p in clashing else p.name
        taken[names[p].casefold()] = p
    if len({n.casefold() for n in names.values()}) != len(names):
        raise DataError("inputs whose output names cannot be told apart: " +
                        ", ".join(str(p) for p in clashing[:4]))
    return names


def plan_inputs(inputs: list[Path], strict: bool = False) -> InputPlan:
    """Expand folders, drop repeats of one file, give unique names, and check every input's header
    before any model is loaded (see the module's docstring)."""
    found, seen = [], set()
    for p in collect_inputs(inputs):
        key = p.resolve()
        if key in seen:
            warn(f"{p} is given twice: processed once")
            continue
        seen.add(key)
        found.append(p)
    plan = InputPlan(files=[], names={}, strict=strict or len(found) == 1)  # one input: its own error, exit 2
    for p in found:
        try:
            if not is_dicom_folder(p):
                check_file_extent(p)
        except CdiffError as e:
            if len(found) == 1:
                raise  # the only input: its own one line, nothing else
            plan.fail(p, e, quiet=True)
            continue
        plan.files.append(p)
    if not plan.files:
        for failure in plan.failed:
            say(failure)
        raise DataError(f"none of the {len(found)} inputs can be read (each is listed above)")
    for failure in plan.failed:
        say(failure)
    plan.names = unique_names(plan.files)
    renamed = [p for p in plan.files if plan.names[p] != output_stem(p)]
    if renamed:
        warn(f"{len(renamed)} input(s) share a file name with another: their outputs are named after their folders "
             f"too (e.g. {renamed[0]} -> {plan.names[renamed[0]]}_*)")
    return plan


def pipelined_plan(plan: InputPlan, load: Callable[[Path], Any], compute: Callable[[Path, Any], Any],
                   finish: Callable[[Path, Any, Any], T]) -> Iterator[T | Failure]:
    """:func:`~cdiff_cli.infer.pipeline.pipelined` over the plan's files, where an input that fails
    with a user error (unreadable data, a wrong shape) becomes a :class:`Failure` and the others go on."""

    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(path: Path, *args: Any) -> Any:
            if any(isinstance(a, Failure) for a in args):
                return next(a for a in args if isinstance(a, Failure))
            try:
                return fn(path, *args)
            except CdiffError as e:
                return plan.fail(path, e)
        return run

    yield from pipelined(plan.files, guard(load), guard(compute), guard(finish))
