"""The HTTP connection the bridge serves: twisted.web's, with a deadline for the request headers.

twisted.web resets its idle timeout on every byte received, so a client that sends its headers a byte
at a time holds a connection (and a file descriptor) for as long as it likes. Here the whole header
block of each request must arrive within ``header_timeout`` seconds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

log = Logger()

DEFAULT_HEADER_TIMEOUT = 10.0
#: Idle keep-alive connections are closed after this many seconds (streams are never idle-timed out:
#: twisted.web suspends the idle timeout while a request is in flight).
DEFAULT_IDLE_TIMEOUT = 75.0


class GuardedHTTPChannel(HTTPChannel):
    """An ``HTTPChannel`` whose request headers must arrive in time (a slowloris defence)."""

    header_timeout = DEFAULT_HEADER_TIMEOUT
    _header_deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        if self.header_timeout > 0 and self._header_deadline is None:
            self._header_deadline = self.callLater(self.header_timeout, self._headers_too_slow)

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
            self.transport.abortConnection()

    def allHeadersReceived(self) -> None:
        self._disarm_header_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if self.persistent:
            self._arm_header_deadline()

    def connectionLost(self, reason: Any) -> None:
        self._disarm_header_deadline()
        super().connectionLost(reason)


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
    ) -> None:
        super().__init__(resource, timeout=idle_timeout)
        self.header_timeout = header_timeout

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if channel is not None:
            channel.header_timeout = self.header_timeout
        return channel

    protocol = GuardedHTTPChannel  # type: ignore[assignment]

    def log(self, request: Any) -> None:
        return None
