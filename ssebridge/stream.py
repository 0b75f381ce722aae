"""One SSE client: its response headers, its writes, and what happens when it is slow or gone.

``Stream`` is what the hub delivers to. It writes straight to the connection's transport (framing HTTP/1.1
chunks itself) because this is the hot path: one call per delivery, no per-write header checks.
``ChannelResource`` is the twisted.web resource that turns a request into a stream on one channel; it can
be mounted in any twisted.web ``Site`` or returned from a Klein route.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ssebridge import frames
from ssebridge.hub import Hub

log = Logger()

#: Default bound on what one client may have queued and unsent, beyond the kernel's and Twisted's
#: own buffers, before it is cut off as too slow.
DEFAULT_MAX_BUFFER = 1024 * 1024

#: The close reason of a client cut off for not reading fast enough.
SLOW_CLIENT = "slow client"

STREAM_HEADERS = (
    (b"Content-Type", b"text/event-stream"),
    (b"Cache-Control", b"no-cache"),
    # nginx buffers proxied responses unless told not to; a buffered stream is no stream.
    (b"X-Accel-Buffering", b"no"),
)


@implementer(IPushProducer)
class Stream:
    """One client's stream on one channel.

    Lifecycle: created and attached to the hub (waiting); ``start`` sends the headers once the channel's
    subscription is confirmed; ``send`` delivers frames; ``close`` ends it (the client left, it was too
    slow, or the service is stopping) and detaches it from the hub exactly once.
    """

    __slots__ = (
        "mode",
        "_request",
        "_hub",
        "_server",
        "_channel",
        "_transport",
        "_chunked",
        "_paused",
        "_pending",
        "_pending_bytes",
        "_max_buffer",
        "_closed",
        "_started",
        "_on_close",
        "opened_at",
        "frames",
        "bytes",
    )

    def __init__(
        self,
        request: Request,
        hub: Hub,
        server: Hashable,
        channel: bytes,
        mode: str = "sse",
        max_buffer: int = DEFAULT_MAX_BUFFER,
        on_close: Callable[[Stream, str], None] | None = None,
    ) -> None:
        self.mode = mode
        self._request = request
        self._hub = hub
        self._server = server
        self._channel = channel
        self._transport: Any = None
        self._chunked = False
        self._paused = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._max_buffer = max_buffer
        self._closed = False
        self._started = False
        self._on_close = on_close
        self.opened_at = time.monotonic()
        hub.stats.streams_opened += 1
        self.frames = 0
        self.bytes = 0

    @property
    def request(self) -> Request:
        return self._request

    @property
    def server(self) -> Hashable:
        return self._server

    @property
    def started(self) -> bool:
        return self._started

    @property
    def channel(self) -> bytes:
        return self._channel

    def start(self, preamble: bytes = b"") -> None:
        """Send the response headers (and an optional first frame); deliveries may follow."""
        if self._closed or self._started:
            return
        self._started = True
        request = self._request
        request.setResponseCode(200)
        headers = request.responseHeaders
        for name, value in STREAM_HEADERS:
            headers.setRawHeaders(name, [value])
        # A stream is never compressed or length-delimited.
        headers.removeHeader(b"Content-Length")
        headers.removeHeader(b"Content-Encoding")
        request.write(preamble)
        self._chunked = bool(request.chunked)
        channel = request.channel
        self._transport = channel.transport if channel is not None else None
        request.registerProducer(self, True)

    def send(self, data: bytes) -> None:
        if self._closed:
            return
        if self._paused:
            self._pending.append(data)
            self._pending_bytes += len(data)
            if self._pending_bytes > self._max_buffer:
                self.close(SLOW_CLIENT, abort=True)
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        self.frames += 1
        self.bytes += len(data)
        if self._chunked:
            transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            transport.write(data)

    # IPushProducer: Twisted asks us to pause once its own buffer for this client is full.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._pending:
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            self._write(b"".join(pending))

    def stopProducing(self) -> None:
        self.close("connection closed")

    def close(self, reason: str, abort: bool = False, final: bytes = b"") -> None:
        """End the stream: detach from the hub, then finish (or abort) the response."""
        if self._closed:
            return
        self._closed = True
        self._pending = []
        self._hub.detach(self._server, self._channel, self)
        stats = self._hub.stats
        stats.streams_closed += 1
        if reason == SLOW_CLIENT:
            stats.slow_clients_disconnected += 1
        if self._on_close is not None:
            self._on_close(self, reason)
        self._log_close(reason)
        request = self._request
        if request.finished or request._disconnected:
            return
        if self._started:
            request.unregisterProducer()
            if final:
                request.write(final)
        if abort and self._transport is not None:
            self._transport.abortConnection()
            return
        request.finish()


    def _log_close(self, reason: str) -> None:
        client = self._request.getClientAddress()
        log.info(
            "stream closed: channel={channel} client={client} duration={duration:.1f}s frames={frames} "
            "bytes={bytes} reason={reason}",
            channel=self._channel.decode("utf-8", "replace"),
            client=getattr(client, "host", str(client)),
            duration=time.monotonic() - self.opened_at,
            frames=self.frames,
            bytes=self.bytes,
            reason=reason,
        )


class ChannelResource(Resource):
    """A twisted.web resource that streams one channel of one server to every request it renders.

    Mount it anywhere: ``root.putChild(b"news", ChannelResource(hub, server, b"news"))``, or return it
    from a Klein route. The response starts (headers sent) only once the Redis subscription is
    confirmed, so every message published after a client has its headers reaches it. If the
    subscription cannot be confirmed within ``confirm_timeout`` seconds (Redis is away), the stream
    starts anyway and receives messages as soon as the bridge has resubscribed.
    """

    isLeaf = True

    def __init__(
        self,
        hub: Hub,
        server: Hashable,
        channel: bytes,
        mode: str = "sse",
        max_buffer: int = DEFAULT_MAX_BUFFER,
        confirm_timeout: float = 3.0,
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor  # type: ignore[assignment]
        self.hub = hub
        self.redis_server = server
        self.channel = channel
        self.mode = mode
        self.max_buffer = max_buffer
        self.confirm_timeout = confirm_timeout
        self.reactor: Any = reactor

    def render(self, request: Request) -> int:  # type: ignore[override]
        stream = Stream(request, self.hub, self.redis_server, self.channel, self.mode, self.max_buffer)
        attach_stream(
            stream, request, self.hub, self.redis_server, self.channel, self.confirm_timeout, self.reactor
        )
        return NOT_DONE_YET


def attach_stream(
    stream: Stream,
    request: Request,
    hub: Hub,
    server: Hashable,
    channel: bytes,
    confirm_timeout: float,
    reactor: Any,
) -> Deferred[None]:
    """Attach ``stream`` to the hub and start it once its subscription is confirmed (or timed out)."""
    confirmed = hub.attach(server, channel, stream)
    timer = reactor.callLater(confirm_timeout, _start_unconfirmed, stream, hub, server, channel)

    def on_confirmed(_: object) -> None:
        if timer.active():
            timer.cancel()
        stream.start()

    def on_error(failure: Failure) -> None:
        if timer.active():
            timer.cancel()
        if not failure.check(CancelledError):
            log.failure("attaching a stream failed", failure)
            stream.close("internal error")

    confirmed.addCallbacks(on_confirmed, on_error)

    def on_finish(result: object) -> None:
        if timer.active():
            timer.cancel()
        if not confirmed.called:
            confirmed.cancel()
        stream.close("client gone")

    request.notifyFinish().addBoth(on_finish)
    return confirmed


def _start_unconfirmed(stream: Stream, hub: Hub, server: Hashable, channel: bytes) -> None:
    log.warn(
        "subscription to {channel!r} not confirmed in time; stream started, receiving once resubscribed",
        channel=channel,
    )
    hub.activate_early(server, channel, stream)
    # A comment, so the client sees a live stream while Redis is away.
    stream.start(frames.comment(b"waiting for the message server") if stream.mode == "sse" else b"")
