"""The HTTP side: a Klein app that turns requests into streams, static files, or refusals.

A request is described as uWSGI-style variables (``PATH_INFO``, ``QUERY_STRING``, ``HTTP_*``...), the
routing rules decide whether it becomes a stream and on which channel, and the stream is attached to the
hub. Nothing here knows Redis; nothing here writes SSE frames.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from ssebridge import frames
from ssebridge.config import StaticMap
from ssebridge.hub import Hub
from ssebridge.redisaddr import DEFAULT_SERVER, RedisServer
from ssebridge.routing import RefusedChannel, Resolved, Rule, resolve_request
from ssebridge.stream import DEFAULT_MAX_BUFFER, Stream, attach_stream

log = Logger()


class BadRequest(ValueError):
    """A request the bridge refuses with 400 before any rule sees it."""


def request_variables(request: IRequest) -> dict[str, str]:
    """The uWSGI request variables of ``request``, as the routing rules read them.

    ``PATH_INFO`` is percent-decoded and must be UTF-8, as in uWSGI; header names become ``HTTP_`` plus
    the upper-cased name with ``-`` as ``_``.
    """
    uri: bytes = request.uri
    path, _, query = uri.partition(b"?")
    try:
        path_info = unquote_to_bytes(path).decode("utf-8")
        variables = {
            "PATH_INFO": path_info,
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
    variables["SERVER_PROTOCOL"] = request.clientproto.decode("ascii", "replace")
    for name, values in request.requestHeaders.getAllRawHeaders():
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        variables[key] = ", ".join(v.decode("latin-1") for v in values)
    return variables


class _Text(Resource):
    """A short plain-text answer with a status: what a refusal looks like."""

    isLeaf = True

    def __init__(self, code: int, text: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__()
        self.code = code
        self.text = text
        self.headers = headers or {}

    def render(self, request: Request) -> bytes:  # type: ignore[override]
        request.setResponseCode(self.code)
        for name, value in self.headers.items():
            request.setHeader(name, value)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        return self.text.encode("utf-8") + b"\n"


class _StreamStart(Resource):
    """Renders one request as a stream on an already-resolved channel."""

    isLeaf = True

    def __init__(self, bridge: Bridge, resolved: Resolved) -> None:
        # Resource.__init__ is skipped on purpose: this object lives for one render and needs no children.
        self.bridge = bridge
        self.resolved = resolved

    def render(self, request: Request) -> int:  # type: ignore[override]
        self.bridge.start_stream(request, self.resolved)
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
        max_buffer: int = DEFAULT_MAX_BUFFER,
        confirm_timeout: float = 3.0,
        max_streams: int = 0,
        retry_after: int = 5,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.hub = hub
        self.rules = tuple(rules)
        self.static_maps = tuple(static_maps)
        self.default_server = default_server
        self.max_buffer = max_buffer
        self.confirm_timeout = confirm_timeout
        self.max_streams = max_streams
        self.retry_after = retry_after
        self.reactor = reactor
        self.streams: set[Stream] = set()
        self.stopping = False
        self._heartbeat: LoopingCall | None = None
        self._static: Any = None
        if self.static_maps:
            from ssebridge.static import StaticFiles

            self._static = StaticFiles(self.static_maps)

    def resource(self) -> IResource:
        """The router as a twisted.web resource."""
        resource: IResource = self.app.resource()
        return resource

    def refusal(self) -> IResource | None:
        """A 503 when no more streams may open (the limit, or the service stopping), else ``None``."""
        if self.stopping or (self.max_streams and len(self.streams) >= self.max_streams):
            self.hub.stats.streams_refused += 1
            why = "shutting down" if self.stopping else "too many streams"
            log.warn("refused a stream: {why} ({count} open)", why=why, count=len(self.streams))
            return _Text(503, f"Service unavailable: {why}", {b"Retry-After": b"%d" % self.retry_after})
        return None

    def start_stream(self, request: Request, resolved: Resolved) -> Stream:
        """Attach ``request`` to the hub as a stream on ``resolved``'s channel."""
        max_buffer = self.max_buffer
        if resolved.buffer_size is not None:
            max_buffer = max(max_buffer, resolved.buffer_size)
        stream = Stream(
            request,
            self.hub,
            resolved.server,
            resolved.channel,
            resolved.mode,
            max_buffer,
            on_close=self._stream_closed,
        )
        self.streams.add(stream)
        attach_stream(
            stream, request, self.hub, resolved.server, resolved.channel, self.confirm_timeout, self.reactor
        )
        return stream

    def _stream_closed(self, stream: Stream, reason: str) -> None:
        self.streams.discard(stream)

    # Heartbeats and shutdown.

    def start_heartbeat(self, interval: float) -> None:
        """Every ``interval`` seconds, a comment to every SSE stream: proxies keep quiet streams, and a
        dead peer is found by the write that fails."""
        if interval > 0 and self._heartbeat is None:
            self._heartbeat = LoopingCall(self._beat)
            self._heartbeat.clock = self.reactor
            self._heartbeat.start(interval, now=False)

    def _beat(self) -> None:
        beat = frames.comment()
        for stream in tuple(self.streams):
            if stream.mode == "sse" and stream.started:
                stream.send(beat)

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None

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

    @app.route("/", branch=True)
    def dispatch(self, request: Request) -> IResource:
        try:
            variables = request_variables(request)
        except BadRequest as e:
            log.info("refused request: {why}", why=str(e))
            return _Text(400, f"Bad request: {e}")
        try:
            resolved = resolve_request(self.rules, variables, self.default_server)
        except RefusedChannel as e:
            log.info("refused channel for {path!r}: {why}", path=variables["PATH_INFO"], why=str(e))
            return _Text(400, f"Bad request: {e}")
        if resolved is not None:
            return self.refusal() or _StreamStart(self, resolved)
        if self._static is not None:
            found: IResource | None = self._static.resource_for(request, variables["PATH_INFO"])
            if found is not None:
                return found
        return _Text(404, "Not found")
