"""Keep the network busy: read the next input and write the previous one while it runs.

Inference over many inputs has three stages: read + preprocess (file I/O, numpy), the
network passes (torch), and post-processing + writing (scipy, zlib, PNG). All of them
spend their time in C code that releases the GIL, so running the first and last stage in
one thread each - one item ahead, a bounded number behind - overlaps them with the passes,
as a DataLoader with workers would, without processes or copies.

Errors keep the serial semantics: they surface in input order, and before one propagates
every earlier item's outputs are finished, so nothing already started is left half-written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")  # an input item
L = TypeVar("L")  # what load returns
C = TypeVar("C")  # what compute returns
R = TypeVar("R")  # what finish returns


def pipelined(
    items: Iterable[T],
    load: Callable[[T], L],
    compute: Callable[[T, L], C],
    finish: Callable[[T, L, C], R],
    behind: int = 2,
) -> Iterator[R]:
    """Yield ``finish(item, load(item), compute(item, loaded))`` for each item, in order.

    ``load`` runs one item ahead in a reader thread, ``compute`` in the caller's thread,
    ``finish`` in a writer thread with at most ``behind`` items queued (bounded memory).
    """
    items = list(items)
    if not items:
        return
    finishing: deque[Future[R]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="cdiff-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="cdiff-write") as writer:
        next_load: Future[L] | None = reader.submit(load, items[0])
        try:
            for i, item in enumerate(items):
                assert next_load is not None
                loaded = next_load.result()  # a read error surfaces here, in input order
                next_load = reader.submit(load, items[i + 1]) if i + 1 < len(items) else None
                result = compute(item, loaded)
                finishing.append(writer.submit(finish, item, loaded, result))
                while finishing and (finishing[0].done() or len(finishing) > behind):
                    yield finishing.popleft().result()
            while finishing:
                yield finishing.popleft().result()
        except BaseException as error:
            if next_load is not None:
                next_load.cancel()
            earlier = _drain(finishing)  # earlier items' outputs complete before the error propagates
            if earlier is not None and isinstance(error, Exception):
                raise earlier from None  # the first failure in input order is the one to report
            raise


def _drain(finishing: deque[Future[R]]) -> BaseException | None:
    """Wait for every queued write; return the first one's error, if any."""
    first: BaseException | None = None
    while finishing:
        error = finishing.popleft().exception()
        first = first or error
    return first
