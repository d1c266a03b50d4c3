"""Inference options checked where a user gives them (the API and the command line alike), so a
value that cannot make sense fails in one line before any model is loaded, never silently falls
back to a default (a batch size of 0 used to mean "the recipe's"), and never reaches the network
as the wrong type.

>>> timesteps_of("250,500", text=True)
(250, 500)
>>> timesteps_of([500])
(500,)
>>> count_of("batch_size", 0)
Traceback (most recent call last):
...
cdiff_cli.errors.CdiffError: batch_size 0: must be a whole number of at least 1
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from cdiff_cli.errors import CdiffError

MAX_TIMESTEPS = 1000  # the longest schedule any recipe allows; the model's own is checked when it is known


def _whole(value: Any) -> int | None:
    """``value`` as an int if it is a whole number (not a bool, not a string), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    return int(value) if float(value).is_integer() else None


def count_of(name: str, value: Any, minimum: int = 1) -> int:
    """A whole number of at least ``minimum`` (batch sizes, passes, top-k)."""
    n = _whole(value)
    if n is None or n < minimum:
        raise CdiffError(f"{name} {value!r}: must be a whole number of at least {minimum}")
    return n


def seed_of(value: Any) -> int:
    n = _whole(value)
    if n is None or n < 0:
        raise CdiffError(f"seed {value!r}: must be a whole number of at least 0")
    return n


def timesteps_of(value: Any, num_timesteps: int = MAX_TIMESTEPS, text: bool = False) -> tuple[int, ...]:
    """Noise levels: an int or a sequence of ints (with ``text``, as the command line gives them, also
    a comma-separated string ``"250,500,750"``), each in ``[0, num_timesteps)``."""
    if isinstance(value, str) and not text:
        raise CdiffError(f"timesteps {value!r}: expected a whole number or a sequence of them, e.g. (250, 500, 750)")
    if isinstance(value, str):
        parts: Iterable[Any] = [v.strip() for v in value.split(",") if v.strip()]
        try:
            items = [int(v) for v in parts]
        except ValueError:
            raise CdiffError(f"timesteps {value!r}: expected comma-separated whole numbers, e.g. 250,500,750") from None
    elif _whole(value) is not None:
        items = [_whole(value)]  # type: ignore[list-item]
    else:
        try:
            raw = list(value)
        except TypeError:
            raise CdiffError(f"timesteps {value!r}: expected a whole number or a sequence of them, "
                             "e.g. (250, 500, 750)") from None
        items = [_whole(v) for v in raw]  # type: ignore[misc]
        if any(v is None for v in items):
            raise CdiffError(f"timesteps {value!r}: every value must be a whole number, e.g. (250, 500, 750)")
    if not items:
        raise CdiffError("timesteps: give at least one value")
    bad = [t for t in items if not 0 <= t < num_timesteps]
    if bad:
        raise CdiffError(f"timesteps {bad}: each must be within 0..{num_timesteps - 1} (the noise schedule)")
    return tuple(items)


def threshold_of(value: Any) -> float | Literal["calibrated"]:
    """A box threshold: ``"calibrated"`` or a finite number of at least 0 (maps are absolute
    residuals: a negative threshold would box the whole image)."""
    if isinstance(value, str) and value.strip().lower() == "calibrated":
        return "calibrated"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CdiffError(f"threshold {value!r}: expected a number or 'calibrated'") from None
    if isinstance(value, bool) or not np.isfinite(number) or number < 0:
        raise CdiffError(f"threshold {value!r}: must be a finite number of at least 0 (or 'calibrated')")
    return number


BRAIN_MASK_MODES = ("auto", "on", "off")


def brain_mask_of(value: Any) -> Literal["auto", "on", "off"]:
    """A brain-mask mode for 2-D images: ``auto`` (where skull is detected), ``on`` or ``off``."""
    if value not in BRAIN_MASK_MODES:
        raise CdiffError(f"brain_mask {value!r}: expected one of {', '.join(BRAIN_MASK_MODES)}")
    return value
