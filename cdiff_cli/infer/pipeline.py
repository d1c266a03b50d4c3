"""Keep the network busy: read the next input and write the previous one while it runs.

Inference over many inputs has three stages: read + preprocess (file I/O, numpy), the
network passes (torch), and post-processing + writing (scipy, zlib, PNG). All of them
spend their time in C code that releases the GIL, so running the first and last stage in
one thread each - one item ahead, a bounded number behind - overlaps them with the passes,
as a DataLoader with workers would, without processes or copies.

Errors keep the serial semantics: they surface in input order, and before one propagates
every earlier item's outputs are finished, so nothing already started is left half-written.

Sharing the cores. When torch's intra-op threads already fill every core, a reading or
writing thread takes a core from one of them, and each of the network's many parallel
regions then waits at its barrier for the thread that lost its core: measured 1.8-1.9x slower
passes on 2 cores, worse than one thread. So while a pipeline runs on the CPU the network
asks ``share_cores()`` before each piece of work, and runs on one thread fewer for every
reading or writing call busy at that moment (at least one), on all of them otherwise (a pass
on the CPU comes in small pieces anyway, ``infer/reconstruct.py``, so the count follows the
other threads). ``CDIFF_SHARE_CORES=0`` turns this off (``benchmarks/bench_infer.py``
compares both).

Busy time per stage. The steps of the path from an input to its maps report themselves with
``with stage(name):`` (names in ``STAGES``); inside ``with record_stages() as times:`` each
report adds its seconds, the CPU seconds of its own thread, and one call to ``times``, from
whichever thread it runs in, so a benchmark can say where the time goes without patching
functions (the CPU seconds stay meaningful on a machine loaded by other work, the wall seconds
do not). Outside a recording
``stage`` returns one shared no-op context: nothing is timed or allocated.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import TypeVar

T = TypeVar("T")  # an input item
L = TypeVar("L")  # what load returns
C = TypeVar("C")  # what compute returns
R = TypeVar("R")  # what finish returns


class _Cores:
    """How many torch threads the network may use now, given the busy reading/writing calls."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pipelines = 0  # pipelines running now
        self.busy = 0  # load/finish calls running now
        self.full = 0  # torch's thread count when the first pipeline started
        self.enabled = False

    def enter(self) -> None:
        import torch

        with self.lock:
            if self.pipelines == 0:
                self.full = torch.get_num_threads()
                self.enabled = os.environ.get("CDIFF_SHARE_CORES", "1") != "0" and self.full > 1
            self.pipelines += 1

    def leave(self) -> None:
        import torch

        with self.lock:
            self.pipelines -= 1
            if self.pipelines == 0 and self.enabled:
                torch.set_num_threads(self.full)

    def background(self, fn: Callable[..., R]) -> Callable[..., R]:
        def run(*args: object) -> R:
            with self.lock:
                self.busy += 1
            try:
                return fn(*args)
            finally:
                with self.lock:
                    self.busy -= 1
        return run


_CORES = _Cores()


def sharing() -> bool:
    """True while a pipeline runs with core sharing on (torch on more than one thread)."""
    return _CORES.pipelines > 0 and _CORES.enabled


def share_cores() -> int:
    """Set torch's threads for the next piece of network work; the count set (0: not sharing)."""
    if not sharing():
        return 0
    import torch

    with _CORES.lock:
        want = max(1, _CORES.full - _CORES.busy)
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
    return want


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
    load, finish = _CORES.background(load), _CORES.background(finish)
    _CORES.enter()
    try:
        yield from _run(items, load, compute, finish, behind)
    finally:
        _CORES.leave()


def _run(items: list[T], load: Callable[[T], L], compute: Callable[[T, L], C],
         finish: Callable[[T, L, C], R], behind: int) -> Iterator[R]:
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


# ------------------------------------------------------------------------------ busy time per stage

# the stages that report, in the order an input meets them (nested: inside "reconstruct")
STAGES = ("load image", "brain mask", "preprocess image", "load volume", "preprocess volume", "reconstruct", "encoder", "noise",
          "network", "post-process volume", "post-process images", "to image grid", "boxes", "pictures",
          "to input grid", "write nifti", "volume preview", "image preview", "write json")


class StageTimes:
    """Busy seconds, the reporting thread's CPU seconds and calls per stage, summed over every thread
    that reported while recording (torch's own worker threads are not in the CPU seconds).

    A pipeline runs reading and writing beside the network, so the stages' seconds overlap and
    may add up to more than the wall time.
    """

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.cpu_seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: defaultdict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float, cpu_seconds: float = 0.0) -> None:
        with self._lock:
            self.seconds[name] += seconds
            self.cpu_seconds[name] += cpu_seconds
            self.calls[name] += 1

    def reset(self) -> None:
        """Forget what was recorded (between the repeats of a benchmark)."""
        with self._lock:
            self.seconds.clear()
            self.cpu_seconds.clear()
            self.calls.clear()


class _Timed:
    """Times one block as stage ``name`` into ``times``."""

    __slots__ = ("name", "t0", "cpu0", "times")

    def __init__(self, times: StageTimes, name: str) -> None:
        self.times, self.name, self.t0, self.cpu0 = times, name, 0.0, 0.0

    def __enter__(self) -> None:
        self.t0, self.cpu0 = time.perf_counter(), time.thread_time()

    def __exit__(self, *exc: object) -> None:
        self.times.add(self.name, time.perf_counter() - self.t0, time.thread_time() - self.cpu0)


_RECORDING: StageTimes | None = None  # process-wide: the reading and writing threads report into it too
_IDLE = contextlib.nullcontext()


def stage(name: str) -> AbstractContextManager[None]:
    """``with stage(name):`` times the block as stage ``name`` while :func:`record_stages` records;
    otherwise it is a shared no-op."""
    times = _RECORDING
    return _IDLE if times is None else _Timed(times, name)


@contextlib.contextmanager
def record_stages() -> Iterator[StageTimes]:
    """Record the busy time of every :func:`stage` until the block ends (one recording at a time).

    >>> with record_stages() as times:
    ...     with stage("boxes"):
    ...         pass
    >>> dict(times.calls)
    {'boxes': 1}
    """
    global _RECORDING
    if _RECORDING is not None:
        raise RuntimeError("record_stages() is already recording")
    _RECORDING = times = StageTimes()
    try:
        yield times
    finally:
        _RECORDING = None
