"""adahop.backend's side-stream helpers (ADAHOP_SIDE_STREAM): the order of the stream waits and of the
allocator records, with stand-in streams on any machine, and with real streams on a GPU, where each
side of the overlap is made slow so that a missing wait gives a wrong value."""

from __future__ import annotations

import contextlib

import pytest
import torch

from adahop import backend


class FakeStream:
    def __init__(self, log, name):
        self.log, self.name, self.device = log, name, torch.device("cpu")

    def wait_stream(self, other):
        self.log.append(("wait", self.name, other.name))


class FakeTensor:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def record_stream(self, stream):
        self.log.append(("record", self.name, stream.name))


def test_on_side_stream_waits_first_and_records_both_ways(monkeypatch):
    log = []
    main, side = FakeStream(log, "main"), FakeStream(log, "side")
    current = [main]
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0])

    @contextlib.contextmanager
    def use(stream):
        current[0], before = stream, current[0]
        log.append(("enter", stream.name))
        yield
        current[0] = before

    monkeypatch.setattr(torch.cuda, "stream", use)
    x, out = FakeTensor(log, "x"), FakeTensor(log, "out")

    def fn():
        log.append(("run", current[0].name))
        return out

    result = backend.on_side_stream(side, fn, (x, None), lambda r: [r, None])
    assert result is out and current[0] is main
    assert log == [("wait", "side", "main"), ("enter", "side"), ("run", "side"), ("record", "x", "side"),
                   ("record", "out", "main")]
    log.clear()
    backend.join_side_stream(side)
    backend.join_side_stream(None)  # the layer without a side stream: nothing to wait for
    assert log == [("wait", "main", "side")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_streams_wait_for_each_other():
    side = torch.cuda.Stream()
    src = torch.full((1 << 20,), float("nan"), device="cuda")
    torch.cuda._sleep(20_000_000)  # the main stream is busy: the side stream must wait for the write below
    src.fill_(1.0)

    def fn():
        torch.cuda._sleep(20_000_000)  # the side stream is busy: the main stream must wait for the result
        return src * 2

    out = backend.on_side_stream(side, fn, (src,), lambda r: [r])
    backend.join_side_stream(side)
    total = out.sum()  # main-stream work after the join
    assert torch.equal(out, torch.full_like(src, 2.0)) and total.item() == 2 * (1 << 20)
