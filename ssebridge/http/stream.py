"""One SSE client: its response headers, its writes, and what happens when it is slow or gone.

``Stream`` is what the hub delivers to. It writes straight to the connection's transport (framing HTTP/1.1
chunks itself) because this is the hot path: one call per delivery, no per-write header checks.
The resource that turns a request into a stream is in ``ssebridge.http.resource``.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from ssebridge.config.defaults import CLIENT_BUFFER
from ssebridge.fanout import deliver_python
from ssebridge.http.access import logged_path, mark_stream
from ssebridge.hub.channels import Hub
from ssebridge.interfaces import Subscriber
from ssebridge.logs import printable
from ssebridge.publish.envelope import EventId
from ssebridge.takeover import direct_socket, gone, take_over

log = Logger()

#: The close reason of a client cut off for not reading fast enough.
SLOW_CLIENT = "slow client"

#: The most a stream hands Twisted's per-connection buffer in one write (see ``Stream._drain``).
PIECE = 64 * 1024

_last_data = b""
_last_chunk = b"0\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk. Every client of a channel gets the same ``data`` object in a
    row, so the last one framed is kept: one copy per delivery batch, not one per client."""
    global _last_data, _last_chunk
    if data is not _last_data:
        _last_chunk = b"%x\r\n%s\r\n" % (len(data), data)
        _last_data = data
    return _last_chunk


STREAM_HEADERS = (
    (b"Content-Type", b"text/event-stream"),
    (b"Cache-Control", b"no-cache"),
    # nginx buffers proxied responses unless told not to; a buffered stream is no stream.
    (b"X-Accel-Buffering", b"no"),
)


@implementer(IPushProducer)
class Stream:
    """One client's stream on one channel, or on several, and on Redis glob patterns (live only).

    Lifecycle: created and attached to the hub (waiting); ``start`` sends the headers once every
    channel's subscription is confirmed; ``send`` delivers frames (what arrives before ``start`` waits
    for it: a replay may be read before the last channel is confirmed); ``close`` ends it (the client
    left, it was too slow, or the service is stopping) and detaches it from the hub exactly once.

    A stream of several channels keeps ``positions``, where it is on each: its events' ``id:`` is
    their composite (``ssebridge.publish.envelope.format_position``), what a browser sends back as
    ``Last-Event-ID`` to resume every channel at once. ``patterns`` hold no position: a pattern's
    events carry no ``id:`` on a stream that has channels (see ``ssebridge.hub.patterns``). A stream
    of patterns alone has no channel (``channels`` is empty, ``channel`` is ``b""``).

    Once the headers are out, a stream on a plain TCP or unix connection takes the connection over
    from twisted.web: it becomes the transport's protocol and producer, and the ``Request`` and
    ``HTTPChannel`` (several kilobytes each, and whatever a Klein route hung on them) are released.
    A stream never hands the connection back, so when it ends the connection closes.
    """

    __slots__ = (
        # What the fan-out loop reads for every delivery, first: one cache line of the object.
        "direct",
        "chunked",
        "frames",
        "bytes",
        "mode",
        "_request",
        "_hub",
        "_server",
        "_channel",
        "channels",
        "patterns",
        "positions",
        "name_events",
        "_early",
        "_transport",
        "_paused",
        "_busy",
        "_queue",
        "_queued",
        "_client_buffer",
        "_closed",
        "_started",
        "_on_close",
        "_status",
        "_sender",
        "_peer",
        "opened_at",
    )

    def __init__(
        self,
        request: Request,
        hub: Hub,
        server: Hashable,
        channel: bytes,
        mode: str = "sse",
        client_buffer: int = CLIENT_BUFFER,
        on_close: Callable[[Stream, str], None] | None = None,
        status: int = 200,
        more_channels: Sequence[bytes] = (),
        name_events: bool = False,
        patterns: Sequence[bytes] = (),
    ) -> None:
        self.mode = mode
        self._request: Request | None = request
        self._hub = hub
        self._server = server
        self._channel = channel
        #: Every channel of the stream, the first (``channel``) first; empty for patterns alone.
        self.channels: tuple[bytes, ...] = tuple(dict.fromkeys(c for c in (channel, *more_channels) if c))
        #: The Redis glob patterns of the stream, each once.
        self.patterns: tuple[bytes, ...] = tuple(dict.fromkeys(patterns))
        self.positions: dict[bytes, EventId | None] | None = (
            dict.fromkeys(self.channels) if len(self.channels) > 1 else None
        )
        self.name_events = name_events
        # Sends before ``start``, unframed (whether the response is chunked is known at ``start``).
        self._early: list[bytes] | None = None
        self._transport: Any = None
        #: Whether the response is chunked (HTTP/1.1): every payload is framed as a chunk.
        self.chunked = False
        self._paused = False
        # Taken over: Twisted holds bytes we gave it and has not yet asked for more (``resumeProducing``).
        self._busy = False
        # Payloads (chunk-framed when chunked) not yet handed to the transport, oldest first. Shared
        # frames are queued as they are, or as a memoryview of their unsent rest: never a copy per
        # client. ``_queued`` counts their bytes: what the client's buffer bound applies to. Made
        # when first needed and dropped when empty: most clients never need one, and an empty deque
        # costs more than the rest of a stream.
        self._queue: deque[bytes | memoryview] | None = None
        self._queued = 0
        self._client_buffer = client_buffer
        self._closed = False
        self._started = False
        self._on_close = on_close
        self._status = status
        #: A taken-over connection's socket (``takeover.direct_socket``), else None.
        self._sender: socket.socket | None = None
        #: ``_sender`` while the fast path is open (started, not paused, nothing queued), else None:
        #: the one test ``send`` and the fan-out loop (``ssebridge.fanout``) make on the hot path.
        self.direct: socket.socket | None = None
        # This request's access line is the stream's close line: the site writes none for it.
        mark_stream(request)
        client = request.getClientAddress()
        self._peer: str = getattr(client, "host", None) or str(client)
        self.opened_at = time.monotonic()
        hub.stats.streams_opened += 1
        self.frames = 0
        self.bytes = 0

    @property
    def server(self) -> Hashable:
        return self._server

    @property
    def started(self) -> bool:
        return self._started

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in this stream's own queue (beyond the kernel's and Twisted's buffers)."""
        return self._queued

    @property
    def channel(self) -> bytes:
        return self._channel

    @property
    def peer(self) -> str:
        return self._peer

    def start(self, preamble: bytes = b"") -> None:
        """Send the response headers (and an optional first frame); deliveries may follow."""
        request = self._request
        if self._closed or self._started or request is None:
            return
        self._started = True
        self._set_stream_headers(request)
        request.write(preamble)
        log.info(
            "stream opened: channel={channel}" + self._patterns_format() + " client={client} mode={mode}",
            channel=printable(b",".join(self.channels)),
            patterns=printable(b",".join(self.patterns)),
            client=self._peer,
            mode=self.mode,
            # What an access line carries, for log shippers (the text stays as it was).
            method=printable(request.method),
            path=logged_path(request.uri),
            status=self._status,
            stream=True,
        )
        self.chunked = bool(request.chunked)
        channel = request.channel
        self._transport = channel.transport if channel is not None else None
        if self._transport is None or request.method == b"HEAD":
            self.close("no body")
            return
        taken = take_over(request, self)
        if taken is None:
            request.registerProducer(self, True)
        else:
            self._transport = taken
            self._request = None
            self._sender = direct_socket(taken)
            # Until Twisted says its buffer (the response head) is written: see ssebridge.takeover.
            self._busy = True
        early, self._early = self._early, None
        for data in early or ():
            self._enqueue(_chunk(data) if self.chunked else data)
        self._drain()

    # IProtocol, after a take-over: the client is not expected to send anything more.

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: object = None) -> None:
        self.close("client gone")

    def makeConnection(self, transport: object) -> None:
        pass

    def send(self, data: bytes, count: int = 1) -> None:
        """Deliver ``data`` (framed events, shared by every client of the channel); never raises.

        Counted once here, however it leaves: straight to the socket, or queued behind what is. The
        hub's fan-out loop (``ssebridge.fanout``) does the direct case itself, for many streams at once.
        """
        if self.direct is not None:
            # Nothing queued here or in Twisted: the fan-out loop's direct send, for this one stream.
            deliver_python(data, count, (self,))
            return
        if self._closed:
            return
        self.frames += count
        self.bytes += len(data)
        if not self._started:
            if self._early is None:
                self._early = []
            self._early.append(data)
            return
        self._enqueue(_chunk(data) if self.chunked else data)
        self._after_enqueue()

    def send_short(self, payload: bytes, sent: int) -> None:
        """The kernel took only ``sent`` bytes of a direct send of ``payload`` (already framed and
        counted): the rest is queued behind it, as the fan-out loop reports (``ssebridge.fanout``)."""
        self._enqueue(memoryview(payload)[sent:] if sent else payload)
        self._after_enqueue()

    def _after_enqueue(self) -> None:
        self._drain()
        if self._queued > self._client_buffer:
            self.close(SLOW_CLIENT, abort=True)

    def _enqueue(self, payload: bytes | memoryview) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(payload)
        self._queued += len(payload)
        self.direct = None

    def _drain(self) -> None:
        """Hand queued bytes to Twisted a bounded piece at a time; reopen the fast path once nothing is
        left here or there.

        Taken over (``_sender``), one piece at a time: the next when Twisted has written the last
        (``resumeProducing``). Through twisted.web, pieces until it asks us to pause. Twisted copies
        what it is given into a buffer of its own for each connection; pieces of at most ``PIECE``
        bytes keep that copy small however large a shared frame is.
        """
        queue, transport = self._queue, self._transport
        taken = self._sender is not None
        while queue and not self._paused and not self._busy and transport is not None:
            head = queue[0]
            piece: bytes | memoryview
            if len(head) > PIECE:
                view = head if isinstance(head, memoryview) else memoryview(head)
                piece, queue[0] = view[:PIECE], view[PIECE:]
            else:
                piece = queue.popleft()
            self._queued -= len(piece)
            self._busy = taken
            # May call pauseProducing before it returns (through twisted.web).
            transport.write(bytes(piece) if isinstance(piece, memoryview) else piece)
        if not queue:
            self._queue = None
            if taken and not self._busy and not self._closed and self._started:
                self.direct = self._sender

    def _set_stream_headers(self, request: Request) -> None:
        request.setResponseCode(self._status)
        headers = request.responseHeaders
        # The app's own headers (an upstream's Cache-Control, say) stay; only what is missing is added.
        # Content-Type is the exception: browsers accept no other for an EventSource.
        headers.setRawHeaders(b"Content-Type", [b"text/event-stream"])
        for name, value in STREAM_HEADERS:
            if not headers.hasHeader(name):
                headers.setRawHeaders(name, [value])
        # A stream is never compressed or length-delimited.
        headers.removeHeader(b"Content-Length")
        headers.removeHeader(b"Content-Encoding")

    # IPushProducer: Twisted asks us to pause once its own buffer for this client is full.

    def pauseProducing(self) -> None:
        self._paused = True
        self.direct = None

    def resumeProducing(self) -> None:
        # Through twisted.web: it had paused us. Taken over: Twisted's buffer has emptied.
        self._paused = False
        self._busy = False
        self._drain()

    def stopProducing(self) -> None:
        self.close("connection closed")

    def close(self, reason: str, abort: bool = False, final: bytes = b"") -> None:
        """End the stream: detach from the hub, then finish (or abort) the response."""
        if self._closed:
            return
        self._closed = True
        self.direct = None
        # What a paused client has queued still goes out before a gentle close's last words.
        pending = b"".join(self._queue) if self._queue and not abort else b""
        self._early = None
        self._queue = None
        self._queued = 0
        for channel in self.channels:
            self._hub.detach(self._server, channel, self)
        for pattern in self.patterns:
            self._hub.detach_pattern(self._server, pattern, self)
        stats = self._hub.stats
        stats.streams_closed += 1
        if reason == SLOW_CLIENT:
            stats.slow_clients_disconnected += 1
        if self._on_close is not None:
            self._on_close(self, reason)
        self._log_close(reason)
        request = self._request
        transport = self._transport
        if request is None:
            # Taken over: the connection is ours to end.
            if transport is None or not transport.connected:
                return
            if abort:
                transport.abortConnection()
                return
            transport.write(pending + (_chunk(final) if self.chunked and final else final))
            if self.chunked:
                transport.write(b"0\r\n\r\n")
            # A paused producer still registered would be resumed instead of the connection closed once
            # the buffer drains: the connection would stay open for good.
            transport.unregisterProducer()
            transport.loseConnection()
            return
        if gone(request):
            return
        if self._started:
            request.unregisterProducer()
        elif not abort:
            # Closed before it began (a shutdown while Redis is away, say): still answer as a stream,
            # so an EventSource takes the retry: hint and comes back; any other answer ends it for good.
            self._set_stream_headers(request)
        if self._started or not abort:
            if pending:
                # Already chunk-framed (or raw, unchunked): past request.write's own framing.
                if transport is not None:
                    transport.write(pending)
            if final:
                request.write(final)
        if abort and transport is not None:
            transport.abortConnection()
            return
        if request.channel is not None:
            # As after a take-over: a stream never hands its connection back for another request.
            request.channel.persistent = False
        request.finish()

    def _patterns_format(self) -> str:
        """The log lines' patterns part: there only for a stream that has patterns."""
        return " patterns={patterns}" if self.patterns else ""

    def _log_close(self, reason: str) -> None:
        log.info(
            "stream closed: channel={channel}" + self._patterns_format() + " client={client} "
            "duration={duration:.1f}s frames={frames} bytes={bytes} reason={reason}",
            channel=printable(b",".join(self.channels)),
            patterns=printable(b",".join(self.patterns)),
            client=self._peer,
            duration=time.monotonic() - self.opened_at,
            frames=self.frames,
            bytes=self.bytes,
            reason=reason,
            stream=True,
        )


def _conforms(stream: Stream) -> Subscriber:
    return stream
