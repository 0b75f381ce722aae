"""Upstreams: the app behind the routes, in-process (WSGI) or remote (HTTP), and what it answered.

A request that no routing rule takes is forwarded to the upstream. Its answer comes back as an
``UpstreamReply``: status, headers, and the variables the app set (``uwsgi.add_var``, ``collect-header``,
``pull-header``). The router then decides, with the ``final-route-if*`` rules or the native
``X-SSE-Offload`` header, whether the connection becomes a stream (the body is dropped) or the reply
passes through to the client as the app wrote it.

The two implementations live in ``ssebridge.upstream.wsgi`` (``WSGIUpstream``) and
``ssebridge.upstream.proxy``
(``HTTPUpstream``). What they share is here: the reply, the header rules (``HeaderRules``: collect and
pull), hop-by-hop filtering, and taking the request body away from Twisted (``detach_body``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, cast

from twisted.internet.defer import Deferred, succeed
from twisted.web.server import Request

from ssebridge.routing.wire import wire_text
from ssebridge.upstream.body import RequestBody

__all__ = [
    "END_TO_END",
    "HOP_BY_HOP",
    "BodySource",
    "HeaderRules",
    "Upstream",
    "UpstreamError",
    "UpstreamReply",
    "connection_options",
    "detach_body",
    "is_forwarding_header",
    "streamed_body",
    "strip_hop_by_hop",
]


class DelayedCall(Protocol):
    """A pending ``callLater`` call, as the upstreams use it."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Timers(Protocol):
    """What an upstream needs of a reactor (a typing Protocol: mypy cannot check zope interfaces)."""

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> DelayedCall: ...


class ThreadedTimers(Timers, Protocol):
    """``Timers``, and a way back into the reactor thread for an app run on a thread pool."""

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kw: Any) -> None: ...


class UpstreamError(Exception):
    """The upstream failed: ``code`` (502, 504, 500...) and a short text for the client."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class BodySource(Protocol):
    """The body of one reply, still held by the upstream (a WSGI iterable, an HTTP response).

    Exactly one of ``send`` or ``discard`` is called, once, on the reactor thread.
    """

    def send(self, request: Request) -> Deferred[None]: ...

    def discard(self) -> None: ...


@dataclass
class UpstreamReply:
    """What the upstream answered, before anything of it is sent to the client."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    #: Variables the app set or that were collected/pulled from its headers.
    variables: dict[str, str] = field(default_factory=dict)
    #: Where the body comes from; ``None`` for a reply without a body.
    body: BodySource | None = field(default=None, repr=False, compare=False)

    def send_body(self, request: Request) -> Deferred[None]:
        """Stream the body to the client (the status and headers are already set on ``request``).

        Fires when the body has been written (or the client went away); the caller finishes the
        request. A body that fails half-way is logged by the upstream and the client connection is
        aborted, so the client cannot take a truncated body for a whole one; the Deferred still fires
        with ``None``.
        """
        if self.body is None:
            return succeed(None)
        return self.body.send(request)

    def discard_body(self) -> None:
        """The connection was offloaded: drop the body and release the upstream."""
        if self.body is not None:
            self.body.discard()


class Upstream(Protocol):
    """An app behind the router."""

    def forward(self, request: Request, variables: dict[str, str]) -> Deferred[UpstreamReply]:
        """Send ``request`` to the app; fire with its reply, or fail with ``UpstreamError``."""
        ...

    def drain(self, timeout: float) -> Deferred[bool]:
        """The service stops: refuse requests the app has not started (503), let those it has run to
        the end and their answers reach the clients, for at most ``timeout`` seconds; ``True`` if all did."""
        ...

    def stop(self) -> Deferred[None]:
        """Release threads and connections."""
        ...


# --- headers -------------------------------------------------------------------------------------

#: Fields that describe one connection, not the message: never forwarded either way. RFC 9110 7.6.1
#: names Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and Upgrade. Also: Trailer (the
#: bridge re-frames every body, so trailers announced on one hop never arrive on the next), and
#: Proxy-Authenticate/Proxy-Authorization (RFC 9110 11.7: they address the nearest proxy, which the
#: bridge is not: a credential meant for a proxy never reaches the app). The one set the proxy (request
#: to the upstream), the WSGI app's headers and the router (reply to the client) all use.
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    ]
)

#: End-to-end fields that ``Connection`` can never remove. RFC 9110 7.6.1 forbids listing a field meant
#: for every recipient as a connection option (its example: Cache-Control); honouring such a listing
#: would let a client, or a front proxy passing its ``Connection`` on, delete fields the bridge sets
#: (Host, X-Forwarded-*), that carry identity or credentials (Authorization, Cookie, Forwarded...), or
#: that frame and type the body. Any other name ``Connection`` lists is removed, as RFC 9110 asks.
END_TO_END = frozenset(
    [
        b"host",
        b"content-length",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"authorization",
        b"cookie",
        b"set-cookie",
        b"www-authenticate",
        b"cache-control",
        b"forwarded",
        b"x-real-ip",
    ]
)
#: Every field with this prefix is end-to-end too (X-Forwarded-For, -Proto, -Host, -Port, -Prefix...).
FORWARDED_PREFIX = b"x-forwarded-"


def is_forwarding_header(name: bytes) -> bool:
    """Whether ``name`` tells the app who the client is (``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``).

    With ``forwarded = false`` such fields from a client are dropped before the app sees them: nothing
    in front of the bridge vouches for them, and an app that believes them can be fooled.
    """
    lname = name.lower()
    return lname.startswith(FORWARDED_PREFIX) or lname in (b"forwarded", b"x-real-ip")


def connection_options(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The names the ``Connection`` fields of ``headers`` list (lower-cased), ``END_TO_END`` ones left out."""
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                option = token.strip(b" \t").lower()
                if option and option not in END_TO_END and not option.startswith(FORWARDED_PREFIX):
                    named.add(option)
    return named


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without ``HOP_BY_HOP`` ones and those ``Connection`` names (never ``END_TO_END`` ones)."""
    headers = list(headers)
    named = connection_options(headers) | HOP_BY_HOP
    return [(name, value) for name, value in headers if name.lower() not in named]


class HeaderRules:
    """``collect-header`` and ``pull-header``: response headers mapped to request variables.

    Each rule is ``(HeaderName, VARIABLE)``; names match case-insensitively. A collected header still
    goes to the client, a pulled one does not. When a header occurs more than once, the first value
    is taken (as uWSGI does: its variable lookup returns the first appended value).
    """

    def __init__(self, collect: Sequence[tuple[str, str]] = (), pull: Sequence[tuple[str, str]] = ()) -> None:
        self._collect = self._normalise(collect, "collect")
        self._pull = self._normalise(pull, "pull")

    @staticmethod
    def _normalise(rules: Sequence[tuple[str, str]], kind: str) -> tuple[tuple[bytes, str], ...]:
        out = []
        for rule in rules:
            if len(rule) != 2 or not rule[0] or not rule[1]:
                raise ValueError(f"{kind}-header needs a header name and a variable name, not {rule!r}")
            out.append((rule[0].strip().lower().encode("latin-1"), rule[1].strip()))
        return tuple(out)

    def __bool__(self) -> bool:
        return bool(self._collect or self._pull)

    def apply(
        self, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[list[tuple[bytes, bytes]], dict[str, str]]:
        """Return the headers the client should see, and the variables found."""
        if not self:
            return list(headers), {}
        variables: dict[str, str] = {}
        pulled = {name for name, _ in self._pull}
        for name, var in self._collect + self._pull:
            if var in variables:
                continue
            for header, value in headers:
                if header.lower() == name:
                    variables[var] = wire_text(value)
                    break
        kept = [(header, value) for header, value in headers if header.lower() not in pulled]
        return kept, variables


# --- the request body ----------------------------------------------------------------------------


def streamed_body(request: Request) -> RequestBody | None:
    """The body of ``request`` when it is still arriving (``BridgeRequest`` with a body policy),
    in memory a bounded amount at a time; ``None`` when Twisted has read it into ``content``."""
    body = getattr(request, "streamed_body", None)
    return body if isinstance(body, RequestBody) else None


def detach_body(request: Request) -> IO[bytes]:
    """A file of the request body that the upstream owns, positioned at the start.

    Twisted has read the whole body already (``request.content``), but it closes that file when the
    request finishes or the client disconnects, which may happen while a pool thread or a body
    producer still reads it. Small bodies (a ``BytesIO``) are copied; large ones (a temporary file)
    get a duplicated file descriptor, so neither a copy nor the reactor's close gets in the way.
    The caller closes the returned file.

    A streamed body (``streamed_body``) becomes a ``BodyReader`` instead: its reads block until the
    bytes are there, so only a thread other than the reactor's may read it, and it cannot seek.
    """
    streamed = streamed_body(request)
    if streamed is not None:
        return cast(IO[bytes], streamed.reader())
    content = getattr(request, "content", None)
    if content is None:
        return io.BytesIO()
    if isinstance(content, io.BytesIO):
        return io.BytesIO(content.getvalue())
    try:
        fd = content.fileno()
    except (AttributeError, OSError, ValueError):
        content.seek(0)
        return io.BytesIO(content.read())
    # A dup shares the file offset with Twisted's file object: nothing in Twisted reads it again.
    body = os.fdopen(os.dup(fd), "rb")
    body.seek(0)
    return body
