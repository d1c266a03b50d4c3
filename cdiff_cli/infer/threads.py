"""Torch's CPU threads for inference: ``--threads N`` of ``cdiff reconstruct`` and ``cdiff localize``,
``CDIFF_THREADS`` of the app.

Unset, torch picks (one thread per core), or the recipe's ``infer.threads`` when it sets one. A count
chosen here wins over the recipe's, for every model loaded afterwards. On a shared machine (a Space's
2 shared vCPUs beside other work) fewer threads can serve faster: ``benchmarks/bench_app_latency.py``.
"""

from __future__ import annotations

import os

from cdiff_cli.errors import CdiffError
from cdiff_cli.infer.options import count_of

ENV = "CDIFF_THREADS"
_chosen: int | None = None


def set_threads(n: int | None) -> int | None:
    """Use ``n`` intra-op threads (and as many inter-op threads when torch still allows it: only
    before its first parallel work); None leaves torch's choice. The count set, or None."""
    global _chosen
    if n is None:
        return None
    n = count_of("threads", n)
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # parallel work already started: the inter-op pool stays as it is
        pass
    _chosen = n
    return n


def chosen_threads() -> int | None:
    """The count :func:`set_threads` set, else None (``load_model`` then applies the recipe's)."""
    return _chosen


def threads_from_env() -> int | None:
    """Apply ``CDIFF_THREADS`` (the app's setting) if it is set; a bad value is one clear line."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise CdiffError(f"{ENV}={raw!r}: expected a whole number of threads of at least 1 (unset: torch's "
                         "default, one per core)")
    return set_threads(n)


__all__ = ["ENV", "chosen_threads", "set_threads", "threads_from_env"]
