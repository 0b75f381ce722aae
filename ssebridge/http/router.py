"""The HTTP side: a Klein app that turns requests into streams, static files, or refusals.

A request is described as uWSGI-style variables (``PATH_INFO``, ``QUERY_STRING``, ``HTTP_*``...), the
routing rules decide whether it becomes a stream and on which channel, and the stream is attached to the
hub. Nothing here knows Redis; nothing here writes SSE frames.

Longer than most modules (~450 lines): the router, its refusals and the upstream reply's hand-over
form one decision table; splitting it would scatter the order in which a request is tried.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.routing import BaseConverter

from ssebridge import frames
from ssebridge.address import DEFAULT_SERVER, RedisServer
from ssebridge.config.defaults import CLIENT_BUFFER, CONFIRM_TIMEOUT
from ssebridge.config.model import StaticMap
from ssebridge.http.heartbeat import Heartbeat
from ssebridge.http.resource import attach_stream
from ssebridge.http.static import static_resource_for
from ssebridge.http.stream import Stream
from ssebridge.hub.channels import Hub
from ssebridge.logs import printable
from ssebridge.publish.offload import OFFLOAD_HEADER, OFFLOAD_VARIABLE
from ssebridge.routing.rules import (
    MAX_CHANNELS,
    RefusedChannel,
    Resolved,
    Rule,
    declared_servers,
    offload_action,
    resolve_action,
    resolve_request,
    resolve_response,
)
from ssebridge.routing.wire import wire_text
from ssebridge.takeover import gone
from ssebridge.upstream.base import HOP_BY_HOP, Upstream, UpstreamError, UpstreamReply

log = Logger()

#: The methods a stream route takes: a stream reads nothing from the client, and a POST that opened
#: one would look to a client (or a form) as if something had been done. Others get 405 with ``Allow``.
STREAM_METHODS = (b"GET", b"HEAD")
#: What a 405 for a stream route says, and its ``Allow`` field.
NOT_ALLOWED_TEXT = "Method not allowed: a stream takes GET or HEAD"
ALLOW = b", ".join(STREAM_METHODS)


class BadRequest(ValueError):
    """A request the bridge refuses with 400 before any rule sees it."""


def request_variables(request: IRequest, script_name: bytes = b"") -> dict[str, str]:
    """The uWSGI request variables of ``request``, as the routing rules read them.

    ``PATH_INFO`` is percent-decoded and must be UTF-8, as in uWSGI; it is the path below
    ``script_name`` (where the router is mounted, ``b""`` at the root). Header names become ``HTTP_``
    plus the upper-cased name with ``-`` as ``_``.
    """
    uri: bytes = request.uri
    path, _, query = uri.partition(b"?")
    if script_name and path.startswith(script_name):
        path = path[len(script_name) :]
    try:
        path_info = unquote_to_bytes(path).decode("utf-8")
        variables = {
            "PATH_INFO": path_info,
            "SCRIPT_NAME": script_name.decode("utf-8"),
            "QUERY_STRING": query.decode("utf-8"),
            "REQUEST_URI": uri.decode("utf-8"),
            "REQUEST_METHOD": request.method.decode("ascii"),
        }
    except UnicodeDecodeError as e:
        raise BadRequest("request target is not valid UTF-8") from e
    if "\x00" in path_info:
        raise BadRequest("NUL in path")
    client = request.getClientAddress()
    host = getattr(client, "host", None)
    variables["REMOTE_ADDR"] = host if isinstance(host, str) else ""
    variables["SERVER_PROTOCOL"] = request.clientproto.decode("ascii", "replace")  # type: ignore[attr-defined]
    for name, values in request.requestHeaders.getAllRawHeaders():
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        variables[key] = ", ".join(wire_text(v) for v in values)
    return variables


class _Text(Resource):
    """A short plain-text answer with a status: what a refusal looks like."""

    isLeaf = True

    def __init__(
        self, code: int, text: str, headers: dict[bytes, bytes] | None = None, close: bool = False
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.code = code
        self.text = text
        self.headers = headers or {}
        self.close = close

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self.code)
        for name, value in self.headers.items():
            request.setHeader(name, value)
        if self.close and request.channel is not None:
            request.setHeader(b"Connection", b"close")
            request.channel.persistent = False
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        body = self.text.encode("utf-8") + b"\n"
        if request.method == b"HEAD":
            # twisted.web would log a warning for a HEAD body; answer with its length alone.
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return b""
        return body


class _StreamStart(Resource):
    """Renders one request as a stream on an already-resolved channel."""

    isLeaf = True

    def __init__(self, bridge: Bridge, resolved: Resolved) -> None:
        # Resource.__init__ is skipped on purpose: this object lives for one render and needs no children.
        self.bridge = bridge
        self.resolved = resolved

    def render(self, request: Request) -> int:
        self.bridge.start_stream(request, self.resolved)
        return NOT_DONE_YET


#: Response headers of the app that a stream does not carry over (a stream sets its own framing).
_NOT_ON_A_STREAM = HOP_BY_HOP | {b"content-type", b"content-length", b"content-encoding"}
#: Response headers never passed through: the one hop-by-hop set (the upstreams have already removed
#: what the reply's ``Connection`` names, with ``strip_hop_by_hop``).
_HOP_BY_HOP = HOP_BY_HOP


def _write_text(request: Request, code: int, text: str) -> None:
    request.setResponseCode(code)
    request.responseHeaders.setRawHeaders(b"Content-Type", [b"text/plain; charset=utf-8"])
    request.responseHeaders.removeHeader(b"Content-Length")
    request.write(text.encode("utf-8") + b"\n")
    _finish(request)


def _finish(request: Request) -> None:
    if not gone(request):
        request.finish()


class _Guard(Resource):
    """Refuses, before Klein sees it, a request no rule should: a target that is not a UTF-8 path
    (Klein would log a traceback), or more than one ``Host`` field."""

    isLeaf = True

    def __init__(self, router: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.router = router

    def render(self, request: Request) -> Any:
        if not request.uri.startswith(b"/"):
            # "*", "host:port/x", absolute URLs: an origin server's requests name a path. Forwarded to a
            # proxy upstream, anything else could pick another host or port to connect to.
            log.info("refused request: the target {target} is not a path", target=printable(request.uri))
            return _Text(400, "Bad request: the request target must be a path").render(request)
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) > 1:
            # RFC 9112 3.2: 400. The rules would see "a, b" and a proxy upstream the last one.
            shown = printable(b", ".join(hosts))
            log.info("refused request: {count} Host fields: {hosts}", count=len(hosts), hosts=shown)
            return _Text(400, "Bad request: more than one Host field").render(request)
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            log.info("refused request: path {path} is not valid UTF-8", path=printable(request.path))
            return _Text(400, "Bad request: path is not valid UTF-8").render(request)
        # Where the router is mounted, before Klein moves path segments around: the rules see the path
        # below it, as a mounted WSGI app sees PATH_INFO below SCRIPT_NAME.
        request.ssebridge_script_name = (  # type: ignore[attr-defined]
            b"/" + b"/".join(request.prepath) if request.prepath else b""
        )
        return self.router.render(request)


class _Anything(BaseConverter):
    """A werkzeug converter that takes any rest of a path, newlines and empty segments included."""

    regex = r"[\s\S]*"
    part_isolating = False


class _UpstreamStart(Resource):
    """Renders one request by forwarding it to the upstream app."""

    isLeaf = True

    def __init__(self, bridge: Bridge, variables: dict[str, str]) -> None:
        self.bridge = bridge
        self.variables = variables

    def render(self, request: Request) -> int:
        bridge = self.bridge
        assert bridge.upstream is not None
        d = bridge.upstream.forward(request, self.variables)
        d.addCallbacks(
            lambda reply: bridge.upstream_replied(request, self.variables, reply),
            lambda failure: bridge.upstream_failed(request, failure),
        )
        d.addErrback(lambda f: log.failure("handling the upstream reply failed", f))
        return NOT_DONE_YET


class Bridge:
    """The bridge's HTTP application: routing rules, static maps, and the hub the streams attach to.

    ``resource()`` is a twisted.web resource for the whole router: put it in a ``Site``, mount it as a
    child of another resource, or return it from a Klein route with ``branch=True``. The bridge keeps
    every open stream, so it can refuse streams past ``max_streams`` (503 with ``Retry-After``), send
    heartbeats, and close them all gently when the service stops.
    """

    app = Klein()

    def __init__(
        self,
        hub: Hub,
        rules: Sequence[Rule] = (),
        static_maps: Sequence[StaticMap] = (),
        default_server: RedisServer = DEFAULT_SERVER,
        client_buffer: int = CLIENT_BUFFER,
        confirm_timeout: float = CONFIRM_TIMEOUT,
        max_streams: int = 0,
        retry_after: int = 5,
        upstream: Upstream | None = None,
        offload_header: str = OFFLOAD_HEADER,
        reactor: Any = None,
        max_channels: int = MAX_CHANNELS,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.hub = hub
        self.rules = tuple(rules)
        self.static_maps = tuple(static_maps)
        self.default_server = default_server
        #: Where a templated ``server=`` may point: refused with 400 elsewhere, before any connection.
        self.servers = declared_servers(default_server, self.rules)
        self.client_buffer = client_buffer
        self.confirm_timeout = confirm_timeout
        self.max_streams = max_streams
        self.retry_after = retry_after
        self.reactor = reactor
        self.upstream = upstream
        self.offload_header = offload_header.encode("latin-1").lower()
        #: Most channels plus patterns one stream may hold: more is refused with 400.
        self.max_channels = max_channels
        self.streams: set[Stream] = set()
        #: Resources answering exact paths before any rule (metrics and health checks, when configured).
        self.fixed: dict[str, IResource] = {}
        self.stopping = False
        self._heartbeat = Heartbeat(reactor)

    def resource(self) -> IResource:
        """The router as a twisted.web resource."""
        return _Guard(self.app.resource())

    def refusal(self) -> IResource | None:
        """A 503 when no more streams may open (the limit, or the service stopping), else ``None``."""
        if self.stopping or (self.max_streams and len(self.streams) >= self.max_streams):
            self.hub.stats.streams_refused += 1
            why = "shutting down" if self.stopping else "too many streams"
            log.warn("refused a stream: {why} ({count} open)", why=why, count=len(self.streams))
            # The connection closes after the 503: a refused client must not keep a descriptor either.
            return _Text(
                503, f"Service unavailable: {why}", {b"Retry-After": b"%d" % self.retry_after}, close=True
            )
        return None

    def start_stream(self, request: Request, resolved: Resolved, status: int = 200) -> Stream:
        """Attach ``request`` to the hub as a stream on ``resolved``'s channels and patterns."""
        client_buffer = self.client_buffer
        if resolved.buffer_size is not None:
            client_buffer = max(client_buffer, resolved.buffer_size)
        stream = Stream(
            request,
            self.hub,
            resolved.server,
            resolved.channel,
            resolved.mode,
            client_buffer,
            on_close=self._stream_closed,
            status=status,
            more_channels=resolved.channels[1:],
            name_events=resolved.name_events,
            patterns=resolved.patterns,
        )
        self.streams.add(stream)
        self._heartbeat.add(stream)
        attach_stream(stream, request, self.hub, resolved.server, self.confirm_timeout, self.reactor)
        return stream

    def _stream_closed(self, stream: Stream, reason: str) -> None:
        self.streams.discard(stream)
        self._heartbeat.discard(stream)

    # Heartbeats and shutdown.

    def start_heartbeat(self, interval: float) -> None:
        """Every ``interval`` seconds, a comment to every SSE stream: proxies keep quiet streams, and a
        dead peer is found by the write that fails (``ssebridge.http.heartbeat``: a slice at a time)."""
        self._heartbeat.start(interval)

    def stop_heartbeat(self) -> None:
        self._heartbeat.stop()

    def close_all(self, window: float, retry_ms: int) -> Deferred[None]:
        """Close every stream, spread over ``window`` seconds, each told to come back after about
        ``retry_ms`` milliseconds plus a random share of the window: a fleet of browsers does not
        reconnect in one instant."""
        self.stopping = True
        self.stop_heartbeat()
        streams = list(self.streams)
        random.shuffle(streams)
        done: Deferred[None] = Deferred()
        if not streams:
            done.callback(None)
            return done
        steps = max(1, min(len(streams), int(window / 0.05) if window > 0 else 1))
        per_step = -(-len(streams) // steps)
        interval = window / steps if window > 0 else 0.0
        jitter_ms = int(window * 1000)

        def close_batch(index: int) -> None:
            for stream in streams[index * per_step : (index + 1) * per_step]:
                hint = retry_ms + random.randint(0, jitter_ms)
                final = frames.retry(hint) if stream.mode == "sse" else b""
                stream.close("shutdown", final=final)
            if (index + 1) * per_step < len(streams):
                self.reactor.callLater(interval, close_batch, index + 1)
            else:
                done.callback(None)

        close_batch(0)
        return done

    # Every path reaches dispatch as it came: werkzeug's own path converter stops at a newline and
    # merges slashes, which would answer hostile paths before the bridge could refuse them itself.
    app.url_map.converters["anything"] = _Anything
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False

    @app.route("/")
    @app.route("/<anything:rest>")
    def dispatch(self, request: Request, rest: str = "") -> IResource:
        try:
            variables = request_variables(request, getattr(request, "ssebridge_script_name", b""))
        except BadRequest as e:
            log.info("refused request: {why}", why=str(e))
            return _Text(400, f"Bad request: {e}")
        fixed = self.fixed.get(variables["PATH_INFO"]) if self.fixed else None
        if fixed is not None:
            return fixed
        try:
            resolved = resolve_request(
                self.rules, variables, self.default_server, self.servers, max_channels=self.max_channels
            )
        except RefusedChannel as e:
            log.info("refused channel for {path!r}: {why}", path=variables["PATH_INFO"], why=str(e))
            return _Text(400, f"Bad request: {e}")
        if resolved is not None:
            if request.method not in STREAM_METHODS:
                log.info(
                    "refused {method} on stream route {path!r}: 405",
                    method=printable(request.method),
                    path=variables["PATH_INFO"],
                )
                return _Text(405, NOT_ALLOWED_TEXT, {b"Allow": ALLOW})
            return self.refusal() or _StreamStart(self, resolved)
        if self.static_maps:
            found = static_resource_for(self.static_maps, request)
            if found is not None:
                return found
        if self.upstream is not None:
            return _UpstreamStart(self, variables)
        return _Text(404, "Not found")

    # The upstream's answer: offload it to a stream, or pass it through.

    def upstream_replied(self, request: Request, variables: dict[str, str], reply: UpstreamReply) -> None:
        """Decide what the upstream's reply becomes, then write it."""
        if gone(request):
            reply.discard_body()
            return
        merged = {**variables, **reply.variables}
        headers = reply.headers
        native: bytes | None = None
        for name, value in headers:
            if name.lower() == self.offload_header:
                native = value
        cap = self.max_channels
        try:
            resolved = resolve_response(
                self.rules, merged, self.default_server, self.servers, max_channels=cap
            )
            if resolved is None:
                # No rule took it: the native signals need none, the header or the seed's variable,
                # each a comma-separated list of channels ("user-42, news"), taken literally.
                offered = wire_text(native) if native is not None else None
                if offered is None:
                    offered = reply.variables.get(OFFLOAD_VARIABLE)
                if offered is not None:
                    resolved = resolve_action(
                        offload_action(offered),
                        merged,
                        self.default_server,
                        servers=self.servers,
                        max_channels=cap,
                    )
        except RefusedChannel as e:
            reply.discard_body()
            log.warn("upstream offload refused for {path!r}: {why}", path=variables["PATH_INFO"], why=str(e))
            _write_text(request, 400, f"Bad request: {e}")
            return
        if resolved is not None:
            reply.discard_body()
            refused = self.refusal()
            if refused is not None:
                request.render(refused)
                return
            for name, value in headers:
                lname = name.lower()
                if lname in _NOT_ON_A_STREAM or lname == self.offload_header:
                    continue
                request.responseHeaders.addRawHeader(name, value)
            # 204 and 205 carry no body (twisted.web would send no chunked framing): a stream is a 200.
            status = reply.status if 200 <= reply.status < 300 and reply.status not in (204, 205) else 200
            self.start_stream(request, resolved, status)
            return
        request.setResponseCode(reply.status, reply.reason or None)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                request.responseHeaders.addRawHeader(name, value)
        d = reply.send_body(request)
        d.addErrback(lambda f: log.failure("upstream body failed", f))
        d.addBoth(lambda _: _finish(request))

    def upstream_failed(self, request: Request, failure: Failure) -> None:
        if gone(request):
            return
        self.hub.stats.upstream_errors += 1
        if failure.check(UpstreamError):
            error = failure.value
            assert isinstance(error, UpstreamError)
            log.warn("upstream error {code}: {text}", code=error.code, text=error.text)
            if error.code == 503:
                # The upstream refused it unstarted (the service stops): safe to retry, elsewhere or
                # later, and this connection will not serve another request.
                request.setHeader(b"Retry-After", b"%d" % self.retry_after)
                request.setHeader(b"Connection", b"close")
                if request.channel is not None:
                    request.channel.persistent = False
            _write_text(request, error.code, error.text)
        else:
            log.failure("upstream failed", failure)
            _write_text(request, 502, "Bad Gateway")
