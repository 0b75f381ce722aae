"""The HTTP connection the bridge serves: twisted.web's, with a deadline for the request headers.

twisted.web resets its idle timeout on every byte received, so a client that sends its headers a byte
at a time holds a connection (and a file descriptor) for as long as it likes. Here the whole header
block of each request must arrive within ``header_timeout`` seconds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

log = Logger()

DEFAULT_HEADER_TIMEOUT = 10.0
#: Largest request body accepted for the upstream app, in bytes.
DEFAULT_MAX_BODY = 10 * 1024 * 1024
#: Idle keep-alive connections are closed after this many seconds (streams are never idle-timed out:
#: twisted.web suspends the idle timeout while a request is in flight).
DEFAULT_IDLE_TIMEOUT = 75.0


class GuardedHTTPChannel(HTTPChannel):
    """An ``HTTPChannel`` whose request headers must arrive in time (a slowloris defence)."""

    header_timeout = DEFAULT_HEADER_TIMEOUT
    _header_deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        self._arm_header_deadline()

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

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)  # type: ignore[no-untyped-call]
        if self.persistent:
            self._arm_header_deadline()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm_header_deadline()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


class BridgeRequest(Request):
    """A request whose body may not pass ``max_body`` bytes: 413 before any app sees it.

    twisted.web reads a whole request body into memory (or a temp file) before rendering; checking the
    declared length and every received chunk stops a huge upload at the door.
    """

    max_body = DEFAULT_MAX_BODY
    _body_received = 0
    _refused = False

    def __repr__(self) -> str:
        # twisted.web's repr decodes the URI as ASCII and raises on any other byte, which turns a
        # log line about a hostile request into a logged traceback.
        uri = self.uri.decode("ascii", "backslashreplace")
        method = self.method.decode("ascii", "backslashreplace")
        return f"<{type(self).__name__} at 0x{id(self):x} method={method} uri={uri}>"

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse_body()
        super().gotLength(0 if self._refused else length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_received += len(data)
        if self._body_received > self.max_body:
            self._refuse_body()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def _refuse_body(self) -> None:
        if self._refused:
            return
        self._refused = True
        log.info("request body over {limit} bytes refused", limit=self.max_body)
        body = b"Payload too large\n"
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            transport.loseConnection()


class BridgeSite(Site):
    """A ``Site`` that never shows a traceback to a client and guards its connections' headers.

    Access logging is left to the streams (one line when each closes): the combined-log line twisted.web
    writes per request would say nothing useful about an hour-long stream.
    """

    displayTracebacks = False

    def __init__(
        self,
        resource: Any,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        request_factory = type("BridgeRequest", (BridgeRequest,), {"max_body": max_body})
        super().__init__(resource, requestFactory=request_factory, timeout=idle_timeout)  # type: ignore[no-untyped-call]
        self.header_timeout = header_timeout

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        if channel is not None:
            channel.header_timeout = self.header_timeout
        return channel

    protocol = GuardedHTTPChannel  # type: ignore[assignment]

    def log(self, request: Any) -> None:
        return None
