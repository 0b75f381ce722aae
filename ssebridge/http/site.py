"""The HTTP connection the bridge serves: twisted.web's, with a deadline for the request headers.

twisted.web resets its idle timeout on every byte received, so a client that sends its headers a byte
at a time holds a connection (and a file descriptor) for as long as it likes. Here the whole header
block of each request must arrive within ``header_timeout`` seconds.

Longer than most modules (~500 lines): the channel and the request share the guards' state (deadlines,
body buffering, the connection cap), and Twisted's hooks must be overridden in pairs that only
make sense side by side.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from ssebridge.http.access import log_access, started
from ssebridge.takeover import request_line
from ssebridge.upstream.body import BUFFER_HIGH, BodyBroken, RequestBody

log = Logger()

DEFAULT_HEADER_TIMEOUT = 10.0
#: Largest request body accepted for the upstream app, in bytes.
DEFAULT_MAX_BODY = 10 * 1024 * 1024
#: Idle keep-alive connections are closed after this many seconds (streams are never idle-timed out:
#: twisted.web suspends the idle timeout while a request is in flight).
DEFAULT_IDLE_TIMEOUT = 75.0
#: A request body may pause this long, and must average ``DEFAULT_BODY_MIN_RATE`` bytes a second
#: after its first ``DEFAULT_BODY_TIMEOUT`` seconds (see ``BodyClock``).
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_BODY_MIN_RATE = 1024.0
#: Seconds between two log lines about refused connections (there may be thousands a second).
_REFUSAL_LOG_EVERY = 10.0

#: Decides, when a request's headers are in, whether its body has a reader: ``None`` if the upstream
#: app will read it, else the status and text to refuse it with (a 405 gets ``Allow: GET, HEAD``).
BodyPolicy = Callable[[Request], "tuple[int, str] | None"]


class GuardedHTTPChannel(HTTPChannel):
    """An ``HTTPChannel`` whose request headers must arrive in time (a slowloris defence)."""

    header_timeout = DEFAULT_HEADER_TIMEOUT
    _header_deadline: IDelayedCall | None = None
    _counted_in: BridgeSite | None = None

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        self._arm_header_deadline()
        site = getattr(self, "site", None)
        if isinstance(site, BridgeSite):
            self._counted_in = site
            site.connections += 1

    def _arm_header_deadline(self) -> None:
        if self.header_timeout > 0 and self._header_deadline is None:
            self._header_deadline = self.callLater(self.header_timeout, self._headers_too_slow)  # type: ignore[no-untyped-call]

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            if self._header_deadline.active():
                self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        peer = self.transport.getPeer() if self.transport is not None else None
        log.info(
            "request headers not received within {timeout}s from {peer}; closing",
            timeout=self.header_timeout,
            peer=str(peer),
        )
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def allHeadersReceived(self) -> None:
        self._disarm_header_deadline()
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def _send100Continue(self) -> None:
        # twisted.web sends "100 Continue" right after gotLength, even when gotLength has just
        # refused the body (413) and closed: the client would then send what was refused.
        request = self.requests[-1] if self.requests else None
        if getattr(request, "_refused", False) or getattr(self.transport, "disconnecting", False):
            return
        super()._send100Continue()  # type: ignore[no-untyped-call]

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        # twisted.web splits Connection on spaces only: "close, X-Foo" (a list, RFC 9110 7.6.1)
        # would keep the connection open after the client asked to close it.
        values = request.requestHeaders.getRawHeaders(b"connection") or []
        if any(token.strip(b" \t").lower() == b"close" for value in values for token in value.split(b",")):
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        persistent: bool = super().checkPersistence(request, version)  # type: ignore[no-untyped-call]
        return persistent

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)  # type: ignore[no-untyped-call]
        if self.persistent:
            self._arm_header_deadline()

    def allContentReceived(self) -> None:
        if not self.requests:
            # Its request was answered (and the connection set to close) before its body ended.
            self._transferDecoder = None
            return
        super().allContentReceived()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm_header_deadline()
        site, self._counted_in = self._counted_in, None
        if site is not None:
            site.connections -= 1
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


class BridgeRequest(Request):
    """A request whose body may not pass ``max_body`` bytes: 413 before any app sees it.

    With a ``body_policy`` on the site, a body is refused when the request headers arrive unless the
    upstream app will read it (a stream route, a static file, the metrics, or no upstream at all
    answer it with 413 before a byte of it is read), and a body that is read goes to the upstream
    through a small in-memory buffer (``ssebridge.upstream.body``), never a temporary file. It must keep
    coming: see ``BodyClock``. Without a policy, twisted.web's own body handling applies.
    """

    max_body = DEFAULT_MAX_BODY
    body_timeout = DEFAULT_BODY_TIMEOUT
    body_min_rate = DEFAULT_BODY_MIN_RATE
    body_policy: BodyPolicy | None = None
    _body_received = 0
    _refused = False
    _body: RequestBody | None = None
    _clock: BodyClock | None = None
    _dispatched = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        started(self)

    def process(self) -> None:
        if self.path == b"*":
            # twisted.web answers "OPTIONS *" with 200 before any resource sees it; the bridge
            # serves paths only, and says so with the 400 the router gives other non-path targets.
            this: Any = self  # twisted.web's Request is untyped
            this.site = this.channel.site
            log.info("refused request: the target * is not a path", method=self.method.decode("latin-1"))
            body = b"Bad request: the request target must be a path\n"
            this.setResponseCode(400)
            this.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            this.setHeader(b"Content-Length", b"%d" % len(body))
            if self.method != b"HEAD":
                this.write(body)
            this.finish()
            return
        super().process()  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        # twisted.web's repr decodes the URI as ASCII and raises on any other byte, which turns a
        # log line about a hostile request into a logged traceback.
        uri = self.uri.decode("ascii", "backslashreplace")
        method = self.method.decode("ascii", "backslashreplace")
        return f"<{type(self).__name__} at 0x{id(self):x} method={method} uri={uri}>"

    @property
    def streamed_body(self) -> RequestBody | None:
        """The body on its way to the upstream, when it is streamed rather than read by Twisted."""
        return self._body

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse(413, "Payload Too Large", "Payload too large", "over the size limit")
        elif length != 0 and self.body_policy is not None and not self._refused:
            self._admit_body(length)
        if self._refused or self._body is not None:
            # Nothing of the body is kept by Twisted: no temporary file.
            self.content = io.BytesIO()
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def _admit_body(self, length: int | None) -> None:
        channel = self.channel
        # The request line is parsed, but twisted.web sets these only once the body has arrived.
        self.method, self.uri, self.clientproto = request_line(channel)
        self.path = self.uri.split(b"?", 1)[0]
        assert self.body_policy is not None
        refusal = self.body_policy(self)
        if refusal is not None:
            code, text = refusal
            reason = {405: "Method Not Allowed", 413: "Payload Too Large"}.get(code, "Bad Request")
            # A 405 from the policy is for a resource that takes GET and HEAD only (streams, files).
            extra = b"Allow: GET, HEAD\r\n" if code == 405 else b""
            self._refuse(code, reason, text, "no reader for it", extra)
            return
        transport: Any = channel.transport
        site = getattr(channel, "site", None)
        reactor = site.reactor if site is not None else _reactor()
        call_from_thread = getattr(reactor, "callFromThread", _reactor().callFromThread)

        def pause() -> None:
            transport.pauseProducing()
            if self._clock is not None:
                self._clock.held()

        def resume() -> None:
            transport.resumeProducing()
            if self._clock is not None:
                self._clock.released()

        self._body = RequestBody(length, pause, resume, call_from_thread)
        self._clock = BodyClock(
            self._body, channel.callLater, self.body_timeout, self.body_min_rate, self._too_slow
        )

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_received += len(data)
        if self._body_received > self.max_body:
            self._over_size()
            return
        body = self._body
        if body is None:
            super().handleContentChunk(data)  # type: ignore[no-untyped-call]
            return
        if self._clock is not None:
            self._clock.progress()
        body.feed(data)
        if not self._dispatched and body.buffered >= BUFFER_HIGH and self.channel is not None:
            # The buffer is full: hand the request over now, so the upstream reads the rest as it comes.
            self._dispatched = True
            channel = self.channel
            super().requestReceived(*request_line(channel))  # type: ignore[no-untyped-call]

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return  # answered already; the connection is closing
        if self._body is not None:
            self._body_done()
            self._body.finish()
            if self._dispatched:
                return
            self._dispatched = True
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def _body_done(self) -> None:
        if self._clock is not None:
            self._clock.stop()
            self._clock = None

    def _over_size(self) -> None:
        if self._dispatched:
            log.info("request body over {limit} bytes; cutting the connection", limit=self.max_body)
            self._cut(BodyBroken("request body too large"))
        else:
            self._refuse(413, "Payload Too Large", "Payload too large", "over the size limit")

    def _too_slow(self) -> None:
        self._clock = None
        log.info(
            "request body too slow ({received} bytes); closing",
            received=self._body.received if self._body is not None else 0,
            body_timeout=self.body_timeout,
            body_min_rate=self.body_min_rate,
        )
        if self._dispatched:
            self._cut(BodyBroken("request body too slow"))
        else:
            self._refuse(408, "Request Timeout", "Request body too slow", "too slow")

    def _cut(self, error: BaseException) -> None:
        """The request is with the upstream already: fail its body and drop the connection."""
        self._refused = True
        self._body_done()
        if self._body is not None:
            self._body.fail(error)
        transport: Any = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.abortConnection()

    def _refuse_body(self) -> None:
        self._refuse(413, "Payload Too Large", "Payload too large", "over the size limit")

    def _refuse(self, code: int, reason: str, text: str, why: str, extra: bytes = b"") -> None:
        """Answer at once, before the body is read, and close the connection."""
        if self._refused:
            return
        self._refused = True
        self._body_done()
        if self._body is not None:
            self._body.fail(BodyBroken(why))
        log.info(
            "request body refused ({why}): {code}", why=why, code=code, limit=self.max_body
        )
        body = text.encode("utf-8") + b"\n"
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(
                b"HTTP/1.1 %d %s\r\n%sContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (code, reason.encode("ascii"), extra, len(body), body)
            )
            transport.loseConnection()
        channel = self.channel
        site = getattr(channel, "site", None)
        if isinstance(site, BridgeSite) and site.access_log:
            # Refused before twisted.web set the request line (it does once the body is in).
            self.method, self.uri, _ = request_line(channel)
            log_access(self, status=code, sent=len(body))

    def write(self, data: bytes) -> None:
        body = self._body
        if not self.startedWriting and body is not None and not body.complete and self.channel is not None:
            # The answer starts before the whole body came: the client is told the connection ends
            # with it, since whatever of the body is still to come cannot be told from a next request.
            self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            self.channel.persistent = False
        super().write(data)  # type: ignore[no-untyped-call]

    def finish(self) -> None:
        body = self._body
        if body is not None and not body.complete and self.channel is not None:
            # Answered before the whole body came (an app that did not read it): the rest of it
            # would be taken for the next request. Close the connection after this response.
            self._body_done()
            body.fail(BodyBroken("answered before the body ended"))
            if not self.startedWriting:
                self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            self.channel.persistent = False
        super().finish()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:
        # A client that leaves before its answer is complete still gets its access line: twisted.web
        # logs only requests that finish.
        site = getattr(self, "site", None)
        if not self.finished and isinstance(site, BridgeSite) and site.access_log:
            log_access(self, gone=True)
        self._body_done()
        if self._body is not None:
            self._body.fail(BodyBroken("the client went away"))
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


class BodyClock:
    """The deadline of a request body: it must keep coming, and at no less than a minimum rate.

    The body is cut when nothing of it arrives for ``timeout`` seconds, or when, past the first
    ``timeout`` seconds, it has averaged less than ``min_rate`` bytes a second (Apache's
    ``RequestReadTimeout body=T,MinRate=R``: the deadline is ``timeout + received / min_rate``). Time
    the bridge itself holds the client back (the upstream is slower than the client) does not count.
    ``timeout = 0`` turns both off.
    """

    def __init__(
        self,
        body: RequestBody,
        call_later: Callable[..., IDelayedCall],
        timeout: float,
        min_rate: float,
        expired: Callable[[], None],
    ) -> None:
        self._body = body
        self._call_later = call_later
        self._timeout = timeout
        self._min_rate = min_rate
        self._expired = expired
        self._now: Callable[[], float] = _reactor().seconds
        self._start: float = self._now()
        self._last: float = self._start
        self._paused_at: float | None = None
        self._timer: IDelayedCall | None = None
        self._arm()

    def _deadline(self) -> float:
        deadline = self._last + self._timeout
        if self._min_rate > 0:
            deadline = min(deadline, self._start + self._timeout + self._body.received / self._min_rate)
        return deadline

    def _arm(self) -> None:
        if self._timeout > 0 and self._timer is None and self._paused_at is None:
            self._timer = self._call_later(max(0.0, self._deadline() - self._now()), self._check)

    def _check(self) -> None:
        self._timer = None
        if self._paused_at is not None:
            return
        if self._now() >= self._deadline():
            self._expired()
        else:
            self._arm()

    def progress(self) -> None:
        """Bytes of the body came."""
        self._last = self._now()
        self._arm()

    def held(self) -> None:
        """The bridge holds the client back (its buffer is full): the clock stops."""
        if self._paused_at is None:
            self._paused_at = self._now()
            self.stop()

    def released(self) -> None:
        """The bridge reads again: the clock goes on where it stopped."""
        if self._paused_at is not None:
            now = self._now()
            self._start += now - self._paused_at
            self._last = now
            self._paused_at = None
            self._arm()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _Refused(Protocol):
    """A connection past ``max_connections``: a 503, then closed once the client has had it.

    The client's request is read and dropped for a moment (at most ``_LINGER`` seconds): closing a
    socket with unread data makes the kernel reset it, and the client could lose the 503.
    """

    _closer: IDelayedCall | None = None
    _lingering = 0

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(_BUSY)
        if _Refused._lingering >= _MAX_LINGERING:
            # A flood: lingering would hold a descriptor per refused connection, the very thing
            # the cap protects. Close at once.
            transport.loseConnection()
            return
        try:
            transport.loseWriteConnection()
        except (AttributeError, NotImplementedError):
            transport.loseConnection()  # a transport that cannot half-close (TLS)
            return
        _Refused._lingering += 1
        self._closer = _reactor().callLater(_LINGER, transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._closer is not None:
            _Refused._lingering -= 1
            if self._closer.active():
                self._closer.cancel()
            self._closer = None


_LINGER = 1.0
#: Refused connections lingering at once, at most (process-wide).
_MAX_LINGERING = 16
_BUSY_TEXT = b"Service unavailable: too many connections\n"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT)
)


def default_max_connections(fd_limit: int) -> int:
    """Connections that are not streams allowed for an fd limit: a quarter of it (at least 16).

    What is left stays for streams, static files, Redis, the upstream and the metrics listener.
    """
    return max(16, fd_limit // 4)


class BridgeSite(Site):
    """A ``Site`` that never shows a traceback to a client and guards its connections' headers.

    Every request gets an access line (``ssebridge.http.access``) unless ``access_log`` is off; a
    stream's is its close line, written by the stream, so twisted.web's combined-log line (which would
    say nothing useful about an hour-long stream) is never written.
    """

    displayTracebacks = False

    def __init__(
        self,
        resource: Any,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
        *,
        body_policy: BodyPolicy | None = None,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        body_min_rate: float = DEFAULT_BODY_MIN_RATE,
        max_connections: int = 0,
        streams: Callable[[], int] | None = None,
        access_log: bool = True,
    ) -> None:
        request_factory = type(
            "BridgeRequest",
            (BridgeRequest,),
            {
                "max_body": max_body,
                "body_policy": staticmethod(body_policy) if body_policy is not None else None,
                "body_timeout": body_timeout,
                "body_min_rate": body_min_rate,
            },
        )
        super().__init__(resource, requestFactory=request_factory, timeout=idle_timeout)  # type: ignore[no-untyped-call]
        self.header_timeout = header_timeout
        #: Whether each request gets an access line (the ``access_log`` setting).
        self.access_log = access_log
        #: Most open connections that are not streams (0: no limit); past it new ones get a 503.
        self.max_connections = max_connections
        #: Open connections (streams included), and how many of them are streams.
        self.connections = 0
        self._streams = streams or (lambda: 0)
        self.refused_connections = 0
        self._last_refusal_log = -_REFUSAL_LOG_EVERY

    def buildProtocol(self, addr: Any) -> Any:
        if self.max_connections and self.connections - self._streams() >= self.max_connections:
            self.refused_connections += 1
            now = _reactor().seconds()
            if now - self._last_refusal_log >= _REFUSAL_LOG_EVERY:
                self._last_refusal_log = now
                log.warn(
                    "refusing connections: {count} open that are not streams (max_connections); "
                    "{refused} refused so far",
                    count=self.connections - self._streams(),
                    refused=self.refused_connections,
                )
            refused = _Refused()
            refused.factory = self
            return refused
        channel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        if channel is not None:
            channel.header_timeout = self.header_timeout
        return channel

    protocol = GuardedHTTPChannel  # type: ignore[assignment]

    def log(self, request: Any) -> None:
        if self.access_log:
            log_access(request)
