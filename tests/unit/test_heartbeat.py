"""Heartbeats a slice at a time (``ssebridge.http.heartbeat``): every ``sse`` stream still gets one
comment per interval, and no step sends to more than about a tenth of them."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from ssebridge import frames
from ssebridge.http.heartbeat import STEPS, Heartbeat


class Beaten:
    def __init__(self, mode: str = "sse", started: bool = True) -> None:
        self.mode = mode
        self.started = started
        self.received: list[tuple[bytes, int]] = []

    def send(self, data: bytes, count: int = 1) -> None:
        self.received.append((data, count))


def _beat(streams: list[Any]) -> tuple[Clock, Heartbeat]:
    clock = Clock()
    heartbeat = Heartbeat(clock)
    for s in streams:
        heartbeat.add(s)
    heartbeat.start(15.0)
    return clock, heartbeat


def test_every_stream_gets_one_comment_per_interval_a_slice_at_a_time() -> None:
    streams = [Beaten() for _ in range(1000)]  # all at once, as a burst of clients connects
    clock, heartbeat = _beat(streams)
    per_step = []
    for _ in range(3 * STEPS):
        before = sum(len(s.received) for s in streams)
        clock.advance(15.0 / STEPS)
        per_step.append(sum(len(s.received) for s in streams) - before)
    assert all(s.received == [(frames.comment(), 0)] * 3 for s in streams)
    assert max(per_step) == 1000 // STEPS  # never the whole set in one step
    heartbeat.stop()
    clock.advance(60)
    assert all(len(s.received) == 3 for s in streams)


def test_a_streams_first_comment_comes_within_one_interval() -> None:
    clock, heartbeat = _beat([])
    clock.advance(4.0)
    late = Beaten()
    heartbeat.add(late)
    clock.advance(15.0)
    assert late.received == [(frames.comment(), 0)]


def test_raw_unstarted_and_gone_streams_get_none() -> None:
    raw, waiting, gone, sse = Beaten("sseraw"), Beaten(started=False), Beaten(), Beaten()
    clock, heartbeat = _beat([raw, waiting, gone, sse])
    heartbeat.discard(gone)
    clock.advance(15.0)
    assert raw.received == waiting.received == gone.received == []
    assert sse.received == [(frames.comment(), 0)]
    waiting.started = True
    clock.advance(15.0)
    assert waiting.received == [(frames.comment(), 0)]


def test_steps_the_reactor_missed_are_sent_when_it_comes_back() -> None:
    """A reactor held up for longer than a step (LoopingCall skips what it missed): the groups whose
    step passed are sent at once, so no stream goes an interval without a comment."""
    streams = [Beaten() for _ in range(100)]
    clock, _ = _beat(streams)
    clock.advance(15.0 * 3 / STEPS)  # three steps at once
    assert sum(len(s.received) for s in streams) == 30
    clock.advance(100.0)  # more than an interval: everyone once more, not more
    assert sum(len(s.received) for s in streams) == 30 + 100
    assert all(1 <= len(s.received) <= 2 for s in streams)


def test_zero_sends_none() -> None:
    clock = Clock()
    heartbeat = Heartbeat(clock)
    stream = Beaten()
    heartbeat.add(stream)
    heartbeat.start(0)
    assert not heartbeat.running
    clock.advance(100)
    assert stream.received == []
