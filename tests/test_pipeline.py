"""The read / compute / write pipeline of inference: order, overlap, and serial error semantics."""

from __future__ import annotations

import threading

import pytest

from cdiff_cli.infer.pipeline import pipelined


def test_results_come_in_input_order_with_each_stage_seeing_its_item() -> None:
    out = list(pipelined(range(7), lambda i: i * 10, lambda i, a: a + i, lambda i, a, c: (i, a, c)))
    assert out == [(i, 10 * i, 11 * i) for i in range(7)]
    assert list(pipelined([], lambda i: i, lambda i, a: a, lambda i, a, c: c)) == []


def test_reading_the_next_item_and_writing_the_previous_overlap_the_compute() -> None:
    read_1, wrote_0 = threading.Event(), threading.Event()

    def load(i: int) -> int:
        if i == 1:
            read_1.set()
        return i

    def compute(i: int, a: int) -> int:
        if i == 0:  # only returns if item 1 is read while item 0 computes
            assert read_1.wait(10), "the next item was not read during the compute"
        if i == 1:
            assert wrote_0.wait(10), "the previous item was not written during the compute"
        return a

    def finish(i: int, a: int, c: int) -> int:
        if i == 0:
            wrote_0.set()
        return c

    assert list(pipelined(range(3), load, compute, finish)) == [0, 1, 2]


def test_a_read_error_surfaces_in_order_after_earlier_items_are_written() -> None:
    written: list[int] = []

    def load(i: int) -> int:
        if i == 3:
            raise ValueError("unreadable item 3")
        return i

    def finish(i: int, a: int, c: int) -> int:
        written.append(i)
        return i

    got: list[int] = []
    with pytest.raises(ValueError, match="unreadable item 3"):
        for r in pipelined(range(6), load, lambda i, a: a, finish):
            got.append(r)
    assert written == [0, 1, 2]  # everything before the bad item finished; nothing after it started
    assert got == written[: len(got)]


def test_the_earliest_failure_is_the_one_reported() -> None:
    def finish(i: int, a: int, c: int) -> int:
        if i == 0:
            raise OSError("disk full writing item 0")
        return i

    def compute(i: int, a: int) -> int:
        if i == 1:
            raise RuntimeError("compute failed on item 1")
        return a

    with pytest.raises(OSError, match="item 0"):
        list(pipelined(range(3), lambda i: i, compute, finish))


def test_the_write_queue_is_bounded() -> None:
    in_flight, most = [0], [0]
    lock = threading.Lock()
    release = threading.Semaphore(0)

    def compute(i: int, a: int) -> int:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        release.release()  # let one write proceed per compute: writes lag behind
        return a

    def finish(i: int, a: int, c: int) -> int:
        release.acquire()
        with lock:
            in_flight[0] -= 1
        return c

    assert list(pipelined(range(20), lambda i: i, compute, finish, behind=2)) == list(range(20))
    assert most[0] <= 3  # at most `behind` queued plus the one just computed
