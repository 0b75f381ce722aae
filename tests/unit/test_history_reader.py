"""``RedisHistory``'s bookkeeping that needs no server: bad calls, lazy connecting, leaving a read.

Everything with Redis is in tests/integration/test_history.py."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from ssebridge.address import RedisServer
from ssebridge.interfaces import History, HistoryUnavailable
from ssebridge.redis.history import RedisHistory


def failure_of(d: Any) -> BaseException:
    errors: list[BaseException] = []
    d.addErrback(lambda f: errors.append(f.value))
    assert errors, "the Deferred has not failed"
    return errors[0]


def test_it_is_a_history() -> None:
    assert isinstance(RedisHistory(RedisServer(), Clock()), History)


@pytest.mark.parametrize(("channel", "limit"), [("str", 1), (b"ok", -1), (b"ok", 1.5), (None, 1)])
def test_bad_calls_are_value_errors(channel: Any, limit: Any) -> None:
    with pytest.raises(ValueError, match="bad read"):
        RedisHistory(RedisServer(), Clock()).read_after(channel, (1, 0), limit)


def test_a_read_every_caller_left_is_never_sent_and_nothing_connects() -> None:
    clock = Clock()
    history = RedisHistory(RedisServer(port=1), clock)
    d = history.read_after(b"c", (1, 0), 10)
    d.cancel()
    assert isinstance(failure_of(d), CancelledError)
    clock.advance(0)
    assert (history.requests, history.reads) == (1, 0)
    stopped = history.stop()
    assert stopped.called, "an unused reader has no connection to close"
    assert not clock.getDelayedCalls()
    assert isinstance(failure_of(history.read_after(b"c", None, 0)), HistoryUnavailable)


def test_stop_fails_reads_not_sent_yet() -> None:
    clock = Clock()
    history = RedisHistory(RedisServer(port=1), clock)
    reads = [history.read_after(b"c", (1, 0), 10), history.current_id(b"c")]
    assert history.stop().called
    assert all("stopped" in str(failure_of(d)) for d in reads)
    assert not clock.getDelayedCalls() and history.reads == 0
