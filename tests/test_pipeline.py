"""The read / compute / write pipeline of inference: order, overlap, and serial error semantics."""

from __future__ import annotations

import threading

import pytest

from cdiff_cli.infer.pipeline import pipelined
from conftest import HANG_S


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
            assert read_1.wait(HANG_S), "the next item was not read during the compute"
        if i == 1:
            assert wrote_0.wait(HANG_S), "the previous item was not written during the compute"
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


def test_the_network_gives_a_core_to_a_busy_writer_and_takes_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from cdiff_cli.infer import pipeline

    monkeypatch.delenv("CDIFF_SHARE_CORES", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        writing, release = threading.Event(), threading.Event()
        seen: list[int] = []

        def compute(i: int, a: int) -> int:
            if i == 1:  # item 0 is being written now
                assert writing.wait(HANG_S)
                seen.append(pipeline.share_cores())
                release.set()
            if i == 2:  # nothing is being read or written any more
                while pipeline._CORES.busy:
                    threading.Event().wait(0.01)
                seen.append(pipeline.share_cores())
            return a

        def finish(i: int, a: int, c: int) -> int:
            if i == 0:
                writing.set()
                assert release.wait(HANG_S)
            return c

        assert pipeline.share_cores() == 0  # no pipeline: torch's threads are left alone
        assert list(pipelined(range(3), lambda i: i, compute, finish)) == [0, 1, 2]
        assert seen == [1, 2]
        assert torch.get_num_threads() == 2 and not pipeline.sharing()
        monkeypatch.setenv("CDIFF_SHARE_CORES", "0")
        assert list(pipelined(range(2), lambda i: i, lambda i, a: pipeline.share_cores(), lambda i, a, c: c)) == [0, 0]
    finally:
        torch.set_num_threads(before)


def test_network_calls_on_the_cpu_come_in_pieces_that_give_the_whole_batch_result() -> None:
    import torch

    from cdiff_cli.infer.pieces import CPU_PIECE_PIXELS, in_pieces, network_piece

    assert network_piece(192, (64, 64), "cpu") == CPU_PIECE_PIXELS // 4096 == 16
    assert network_piece(192, (96, 96), "cpu") == 7 and network_piece(3, (96, 96), "cpu") == 3
    assert network_piece(192, (512, 512), "cpu") == 1 and network_piece(192, (96, 96), "cuda") == 192
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.GroupNorm(4, 8), torch.nn.SiLU())
    sizes: list[int] = []

    def net(x: torch.Tensor, scale: torch.Tensor, none: None) -> torch.Tensor:
        assert none is None and len(scale) == len(x)
        sizes.append(len(x))
        return conv(x) * scale[:, None, None, None]

    x, scale = torch.randn(40, 1, 64, 64), torch.rand(40)
    with torch.inference_mode():
        whole = conv(x) * scale[:, None, None, None]
        pieced = in_pieces(net, x, scale, None)
    assert sizes == [16, 16, 8]
    torch.testing.assert_close(pieced, whole, rtol=1e-5, atol=1e-6)
