"""Draining an upstream when the service stops: what the app already has runs to completion and its
answer reaches the client; what it has not started is refused (503, ``Retry-After`` added by the router).

Refusing a request the app is already running (what ``stop()`` does) would let a client that retries
run a POST twice. So on SIGTERM the service first asks the upstream to ``drain``: each upstream refuses
new and queued requests and says which are in flight; ``until_drained`` then waits, up to a bound, for
them to end and for their connections to have written the answer out, since the reactor stops right
after and closes every socket without flushing what is still queued in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.web.server import Request

__all__ = ["POLL", "close_after_answer", "until_drained"]

#: Seconds between two looks at the requests still in flight while draining.
POLL = 0.05


def close_after_answer(request: Request | None) -> Any | None:
    """Make ``request``'s connection close once its answer is written; return its transport.

    The process is going away: a client reusing the connection for a next request would find it
    reset. ``Connection: close`` tells it so when the headers are not out yet; either way twisted.web
    closes the connection (after flushing it) once the request finishes.
    """
    channel = getattr(request, "channel", None)
    if request is None or channel is None:
        return None
    if not request.startedWriting:
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
    channel.persistent = False
    return channel.transport


def _closed(transport: Any) -> bool:
    return bool(getattr(transport, "disconnected", True)) or not getattr(transport, "connected", False)


def until_drained(
    reactor: Any, busy: Callable[[], bool], transports: list[Any], timeout: float
) -> Deferred[bool]:
    """Fire with ``True`` once ``busy()`` is false and every transport has closed, or with ``False``
    after ``timeout`` seconds, whichever comes first."""
    done: Deferred[bool] = Deferred()
    deadline = reactor.seconds() + timeout

    def look() -> None:
        if not busy() and all(_closed(t) for t in transports):
            finish(True)
        elif reactor.seconds() >= deadline:
            finish(False)

    def finish(drained: bool) -> None:
        if poller.running:
            poller.stop()
        if not done.called:
            done.callback(drained)

    poller = LoopingCall(look)
    poller.clock = reactor
    poller.start(POLL, now=True)
    return done
