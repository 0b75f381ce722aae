"""The HTTP side: a Klein app that turns requests into streams, static files, or refusals.

A request is described as uWSGI-style variables (``PATH_INFO``, ``QUERY_STRING``, ``HTTP_*``...), the
routing rules decide whether it becomes a stream and on which channel, and the stream is attached to the
hub. Nothing here knows Redis; nothing here writes SSE frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

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

    def __init__(self, code: int, text: str) -> None:
        super().__init__()
        self.code = code
        self.text = text

    def render(self, request: Request) -> bytes:  # type: ignore[override]
        request.setResponseCode(self.code)
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

    ``resource()`` is a twisted.web resource for the whole router: put it in a ``Site``, or mount it as a
    child of another resource, or return it from a Klein route with ``branch=True``.
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
        self.reactor = reactor
        self._static: Any = None
        if self.static_maps:
            from ssebridge.static import StaticFiles

            self._static = StaticFiles(self.static_maps)

    def resource(self) -> IResource:
        """The router as a twisted.web resource."""
        resource: IResource = self.app.resource()
        return resource

    def start_stream(self, request: Request, resolved: Resolved) -> Stream:
        """Attach ``request`` to the hub as a stream on ``resolved``'s channel."""
        max_buffer = self.max_buffer
        if resolved.buffer_size is not None:
            max_buffer = max(max_buffer, resolved.buffer_size)
        stream = Stream(request, self.hub, resolved.server, resolved.channel, resolved.mode, max_buffer)
        attach_stream(
            stream, request, self.hub, resolved.server, resolved.channel, self.confirm_timeout, self.reactor
        )
        return stream

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
            return _StreamStart(self, resolved)
        if self._static is not None:
            found: IResource | None = self._static.resource_for(request, variables["PATH_INFO"])
            if found is not None:
                return found
        return _Text(404, "Not found")
