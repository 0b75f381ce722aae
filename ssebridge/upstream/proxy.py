"""The remote upstream: an app behind an HTTP server, reached with Twisted's ``Agent``.

``HTTPUpstream`` forwards a request (method, path and query, headers without the hop-by-hop ones, the
body streamed from what Twisted already read) over a pool of persistent connections. Its reply fires
as soon as the response headers have arrived (``Agent`` shows them before the body): that is where
the router looks for an offload signal. Then either the body is streamed to the client, pausing the
upstream connection while the client's transport is full, or it is drained and dropped so the
connection can go back to the pool.

Not ``twisted.web.proxy``: it speaks HTTP/1.0 with ``Connection: close`` and buffers bodies.

Longer than most modules (~450 lines): Agent's request, its body producer and the reply's body
consumer are three halves of one exchange, kept together for the flow-control story between them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import IO, Any, Protocol, cast
from urllib.parse import urlsplit

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    PartialDownloadError,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from ssebridge.logs import printable
from ssebridge.takeover import gone
from ssebridge.upstream.base import (
    DelayedCall,
    HeaderRules,
    Timers,
    Upstream,
    UpstreamError,
    UpstreamReply,
    detach_body,
    is_forwarding_header,
    streamed_body,
    strip_hop_by_hop,
)
from ssebridge.upstream.drain import close_after_answer, until_drained

__all__ = ["HTTPUpstream"]

log = Logger()

#: Request headers never forwarded besides the hop-by-hop ones: Agent computes the framing itself,
#: Twisted already answered any ``Expect: 100-continue``, and ``Host`` is set on purpose below.
_NOT_FORWARDED = frozenset([b"content-length", b"expect", b"host"])
#: Response headers not passed on (as nginx does): twisted.web sets its own, and two of each
#: would reach the client.
_NOT_PASSED_BACK = frozenset([b"date", b"server"])
#: Methods that carry a body even when it is empty (``Content-Length: 0`` is sent for them).
_BODY_METHODS = frozenset([b"POST", b"PUT", b"PATCH"])
#: Dropping an offloaded reply's body: read at most this much, for at most this long, to keep the
#: connection for the pool; past either, cut the connection (a streaming upstream never ends).
DISCARD_LIMIT = 1024 * 1024
DISCARD_TIME = 5.0


class _Response(Protocol):
    """What this module uses of ``IResponse`` (a zope interface mypy cannot check)."""

    code: int
    phrase: bytes
    headers: Headers
    length: int | object

    def deliverBody(self, protocol: TwistedProtocol) -> None: ...


def _is(failure: Failure, *kinds: type[BaseException]) -> bool:
    return isinstance(failure.value, kinds)


def _failure(error: BaseException) -> Failure:
    return Failure(error)


class _BodyTransport(Protocol):
    """The transport ``deliverBody`` gives a body protocol: a push producer over the connection."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


@implementer(IPushProducer)
class _ProxyBody(TwistedProtocol):
    """One response body: streamed into the client's request, or drained and dropped.

    It is the body protocol given to ``deliverBody`` and, while sending, the push producer
    registered on the client's request: the client's backpressure pauses the upstream connection.
    """

    def __init__(self, upstream: HTTPUpstream, response: _Response, what: str) -> None:
        self.upstream = upstream
        self.response = response
        self.what = what
        self.request: Request | None = None
        self.done: Deferred[None] = Deferred()
        self._taken = False
        self._discarding = False
        self._client_gone = False
        self._dropped = 0
        self._discard_timer: DelayedCall | None = None
        self._paused = False

    def _take(self) -> None:
        if self._taken:
            raise RuntimeError("the body of this reply was already taken")
        self._taken = True
        self.upstream._bodies.add(self)

    # BodySource

    def send(self, request: Request) -> Deferred[None]:
        """Stream the body into ``request`` (see ``UpstreamReply.send_body``)."""
        if gone(request):
            self.discard()
            self.done.callback(None)
            return self.done
        self._take()
        self.request = request
        # The upstream governs the headers: no text/html added by twisted.web.
        request.defaultContentType = None
        # Registered before deliverBody, which may deliver the whole body (and unregister) at once;
        # a pause that comes before the body transport exists is applied when it does.
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(lambda _: self._lost_client())
        self.response.deliverBody(self)
        return self.done

    def discard(self) -> None:
        """Drain the body for the pool's sake, or cut the connection if it is long or endless."""
        self._take()
        self._discarding = True
        self._discard_timer = self.upstream.reactor.callLater(
            min(DISCARD_TIME, self.upstream.timeout), self.abort
        )
        self.response.deliverBody(self)

    # The body protocol.

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)  # type: ignore[no-untyped-call]
        if self._paused:
            self._body_transport().pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            self._dropped += len(data)
            if self._dropped > DISCARD_LIMIT:
                self.abort()
        elif not self._client_gone and self.request is not None:
            self.request.write(data)

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        self.upstream._bodies.discard(self)
        if self._discard_timer is not None and self._discard_timer.active():
            self._discard_timer.cancel()
        self._discard_timer = None
        request = self.request
        if request is not None and request.producer is self and getattr(request, "channel", None):
            request.unregisterProducer()
        whole = _is(reason, ResponseDone, PotentialDataLoss)
        if not whole and not self._discarding and not self._client_gone and request is not None:
            log.warn(
                "upstream body of {what} broke off: {why}; cutting the client connection",
                what=self.what,
                why=_why(reason),
            )
            # Finishing normally would make a cut body look whole to the client.
            channel = getattr(request, "channel", None)
            if channel is not None and channel.transport is not None:
                channel.transport.abortConnection()
        if not self.done.called:
            self.done.callback(None)

    # IPushProducer, registered on the client's request.

    def pauseProducing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self._body_transport().pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self.transport is not None:
            self._body_transport().resumeProducing()

    def stopProducing(self) -> None:
        self._lost_client()

    def _body_transport(self) -> _BodyTransport:
        return cast(_BodyTransport, self.transport)

    def _lost_client(self) -> None:
        if not self._client_gone:
            self._client_gone = True
            # The rest of the body has nowhere to go; the connection cannot go back to the pool.
            self.abort()

    def abort(self) -> None:
        """Cut the upstream connection (the pool will not reuse it)."""
        if self.transport is not None:
            self._body_transport().stopProducing()


# RFC 9112 4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ); RFC 9110 5.5: field values alike.
# Every other control character (NUL, CR, LF, ESC, DEL...) makes the reply invalid.
_BAD_TEXT = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _invalid_reply(response: _Response, pairs: Sequence[tuple[bytes, bytes]]) -> str | None:
    """What is wrong with the upstream's status line or fields, or ``None`` when they are valid.

    Agent takes any integer as a status (``-1``, ``999``) and any bytes as a reason or a value.
    Only a final status 200-599 is valid here: Agent handles the 1xx ones itself.
    """
    if not 200 <= response.code <= 599:
        return f"status {response.code}"
    if _BAD_TEXT.search(response.phrase):
        return "a control character in the reason phrase"
    for name, value in pairs:
        if not _TOKEN.fullmatch(name):
            return "an invalid field name"
        if _BAD_TEXT.search(value):
            return f"a control character in the {name.decode('ascii')} field"
    return None


class _Cut(TwistedProtocol):
    """The body of an invalid reply: its connection is cut at once, never reused."""

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)  # type: ignore[no-untyped-call]
        transport.stopProducing()


class _HeaderTimeout(Exception):
    """No response headers within the timeout."""


def _why(failure: Failure) -> str:
    if _is(failure, ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed):
        reasons = getattr(failure.value, "reasons", [])
        return "; ".join(_why(r) for r in reasons) or type(failure.value).__name__
    return f"{type(failure.value).__name__}: {failure.value}"


class HTTPUpstream:
    """An app behind an HTTP server at ``base_url`` (``http://host:port[/prefix]``, or ``https://``).

    ``pool_size`` persistent connections are kept per host; ``timeout`` bounds the wait for the
    response headers (and the connect); the body may take as long as it takes. ``forwarded`` adds
    ``X-Forwarded-For`` (appended to the client's own), ``X-Forwarded-Proto`` and ``X-Forwarded-Host``;
    without it, a client's own ``X-Forwarded-*``, ``Forwarded`` and ``X-Real-IP`` are dropped.
    A reply with an invalid status line or field (status outside 200-599, a control character in
    the reason or a value) is answered 502.
    ``collect_headers`` and ``pull_headers`` are ``(HeaderName, VARIABLE)`` pairs.
    """

    def __init__(
        self,
        base_url: str,
        reactor: Any,
        *,
        pool_size: int = 16,
        timeout: float = 30.0,
        collect_headers: Sequence[tuple[str, str]] = (),
        pull_headers: Sequence[tuple[str, str]] = (),
        forwarded: bool = True,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http://host[:port][/prefix], not {base_url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"upstream URL takes no query or fragment: {base_url!r}")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.base_url = base_url
        self._origin = f"{parts.scheme}://{parts.netloc}".encode("ascii")
        self._prefix = parts.path.rstrip("/").encode("ascii")
        self.reactor: Timers = reactor
        self.timeout = timeout
        self.forwarded = forwarded
        self.rules = HeaderRules(collect_headers, pull_headers)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        # Each new connection to the app would log "Starting factory"/"Stopping factory" at info: noise.
        self.pool._factory = type("_QuietFactory", (self.pool._factory,), {"noisy": False})  # type: ignore[assignment]
        self.pool.maxPersistentPerHost = pool_size
        self.agent = Agent(reactor, pool=self.pool, connectTimeout=timeout)
        #: Requests sent and waiting for the response headers, with the client's request of each.
        self._waiting: dict[Deferred[IResponse], Request] = {}
        self._bodies: set[_ProxyBody] = set()
        self._draining = False
        self._stopping = False

    def _headers_for(self, request: Request) -> Headers:
        pairs = [
            (name, value) for name, values in request.requestHeaders.getAllRawHeaders() for value in values
        ]
        headers = Headers()
        for name, value in strip_hop_by_hop(pairs):
            if name.lower() in _NOT_FORWARDED:
                continue
            if not self.forwarded and is_forwarding_header(name):
                # Nothing in front vouches for them: an app believing a client's X-Forwarded-For
                # could be told any address.
                continue
            headers.addRawHeader(name, value)
        host = request.getHeader(b"host")
        # The client's Host: the app builds its URLs with it; Agent would put the upstream's.
        if host:
            headers.setRawHeaders(b"host", [host])
        if self.forwarded:
            client = getattr(request.getClientAddress(), "host", None)
            chain = list(request.requestHeaders.getRawHeaders(b"x-forwarded-for") or [])
            if isinstance(client, str):
                chain.append(client.encode("ascii"))
            if chain:
                headers.setRawHeaders(b"x-forwarded-for", [b", ".join(chain)])
            secure = request.isSecure()
            headers.setRawHeaders(b"x-forwarded-proto", [b"https" if secure else b"http"])
            if host:
                headers.setRawHeaders(b"x-forwarded-host", [host])
        return headers

    def forward(self, request: Request, variables: dict[str, str]) -> Deferred[UpstreamReply]:
        """Send ``request`` upstream; fire with the reply once its headers are in."""
        if self._draining or self._stopping:
            return fail(UpstreamError(503, "Service Unavailable"))
        method: bytes = request.method
        url = self._origin + self._prefix + request.uri
        # Logged with every failure: a client's bytes never reach a log line unescaped.
        what = printable(method + b" " + url)
        body: IO[bytes] | None = None
        producer: Any = None
        streamed = streamed_body(request)
        if streamed is not None:
            # Still arriving: sent on as it comes, the client paused while the upstream is behind.
            producer = streamed.producer()
        else:
            body = detach_body(request)
            body.seek(0, 2)
            length = body.tell()
            body.seek(0)
            if length or method in _BODY_METHODS:
                # It reads the file a chunk at a time and closes it when done or stopped.
                producer = FileBodyProducer(body)
            else:
                body.close()
                body = None
        try:
            d = self.agent.request(method, url, self._headers_for(request), producer)
        except ValueError as e:
            # Agent refuses some bytes twisted.web's server accepts in a URI (DEL, say).
            if body is not None:
                body.close()
            log.info("refused request to the upstream: {error}", error=str(e))
            return fail(UpstreamError(400, "Bad Request"))
        self._waiting[d] = request
        # Not Deferred.addTimeout: once the request is on the wire, Agent fails a cancelled request
        # with ResponseNeverReceived, which addTimeout does not recognise as its own timeout.
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self.reactor.callLater(self.timeout, expire)

        def settled(result: object) -> object:
            self._waiting.pop(d, None)
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                if body is not None:
                    body.close()  # a producer never started does not close it
                if expired:
                    return _failure(_HeaderTimeout())
            return result

        d.addBoth(settled)
        return d.addCallbacks(self._replied, self._failed, callbackArgs=(method, what), errbackArgs=(what,))

    def _replied(self, result: IResponse, method: bytes, what: str) -> UpstreamReply:
        response = cast(_Response, result)
        pairs = [
            (name, value)
            for name, values in response.headers.getAllRawHeaders()
            if name.lower() not in _NOT_PASSED_BACK
            for value in values
        ]
        invalid = _invalid_reply(response, pairs)
        if invalid is not None:
            # Passed on, a bad status line or field would reach the client as the bridge's own answer
            # (or be written raw into its log): the upstream is broken, say so (RFC 9110 15: 5xx).
            log.warn("upstream answered {what} with {invalid}: 502", what=what, invalid=invalid)
            response.deliverBody(_Cut())
            raise UpstreamError(502, "Bad Gateway")
        # Agent keeps Content-Length out of the headers (it is the connection's business there), but
        # the client is better served by a sized body than a chunked one: put it back.
        if (
            isinstance(response.length, int)
            and method != b"HEAD"
            and response.code >= 200
            and response.code not in (204, 304)
        ):
            pairs.append((b"Content-Length", b"%d" % response.length))
        headers, variables = self.rules.apply(strip_hop_by_hop(pairs))
        body = _ProxyBody(self, response, what)
        return UpstreamReply(response.code, response.phrase, headers, variables, body=body)

    def _failed(self, failure: Failure, what: str) -> Failure:
        if self._stopping:
            return _failure(UpstreamError(503, "Service Unavailable"))
        if _is(failure, CancelledError):
            return failure  # the caller cancelled: not ours to answer
        if _is(failure, _HeaderTimeout, DeferredTimeoutError, ierror.TimeoutError):
            log.warn(
                "upstream gave no response headers for {what} within {timeout}s: 504",
                what=what,
                timeout=self.timeout,
            )
            return _failure(UpstreamError(504, "Gateway Timeout"))
        if _is(
            failure,
            ierror.ConnectError,
            ierror.DNSLookupError,
            ResponseNeverReceived,
            RequestTransmissionFailed,
            ResponseFailed,
            PartialDownloadError,
        ):
            log.warn("upstream failed for {what}: {why}: 502", what=what, why=_why(failure))
        else:
            log.failure("upstream failed for {what}: 502", failure, what=what)
        return _failure(UpstreamError(502, "Bad Gateway"))

    def drain(self, timeout: float) -> Deferred[bool]:
        """Refuse new requests (503); let those sent to the app get their answers through to their
        clients, for at most ``timeout`` seconds. Every forwarded request is sent at once (the pool does
        not queue them), so none is refused that the app may have seen. Fires ``True`` when all ended;
        ``stop()`` then cuts whatever is left."""
        self._draining = True
        requests = [*self._waiting.values(), *(body.request for body in self._bodies)]
        transports = [close_after_answer(request) for request in requests]
        log.info("draining the upstream: {count} requests in flight", count=len(requests))
        return until_drained(
            self.reactor,
            lambda: bool(self._waiting or self._bodies),
            [t for t in transports if t is not None],
            timeout,
        )

    def stop(self) -> Deferred[None]:
        """Fail the requests still waiting (503), cut bodies in flight, close the idle connections."""
        self._stopping = True
        for waiting in list(self._waiting):
            waiting.cancel()
        for body in list(self._bodies):
            body.abort()
        return cast(Deferred[None], self.pool.closeCachedConnections())


def _is_an_upstream(upstream: HTTPUpstream) -> Upstream:
    """Never called: mypy checks here that ``HTTPUpstream`` satisfies the ``Upstream`` protocol."""
    return upstream
