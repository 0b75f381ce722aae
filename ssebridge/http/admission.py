"""Which request bodies the bridge reads: only those the upstream app will read.

A body is judged when the request headers are in, before any of it is read (``BridgeRequest`` asks a
``BodyPolicy``). Streams, static files, the metrics and health checks take no body, and with no
upstream nothing does: such a body is refused at once (413, or 400 for a request the router would
refuse anyway) instead of being read to be thrown away. The decision mirrors ``Bridge.dispatch``:
a method a stream route or a static file does not take (anything but GET and HEAD) gets the 405 the
router would give it, with or without a body, whatever the upstream.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.server import Request

from ssebridge.http.router import NOT_ALLOWED_TEXT, STREAM_METHODS, BadRequest, Bridge, request_variables
from ssebridge.http.site import BodyPolicy
from ssebridge.http.static import static_resource_for
from ssebridge.routing.rules import RefusedChannel, resolve_request

__all__ = ["bridge_body_policy", "no_bodies"]

log = Logger()

_NO_READER = "Payload too large: this resource takes no request body"


def no_bodies(request: Request) -> tuple[int, str] | None:
    """A policy for a listener with nothing that reads a body (the metrics listener)."""
    return (413, _NO_READER)


def bridge_body_policy(bridge: Bridge) -> BodyPolicy:
    """The policy of the main listener: a body is read only on its way to ``bridge.upstream``."""

    def policy(request: Request) -> tuple[int, str] | None:
        no_reader = (413, _NO_READER)
        # Without an upstream nothing reads a body: a request the router would refuse (400) gets 413.
        upstream = bridge.upstream is not None
        if not request.uri.startswith(b"/"):
            return (400, "Bad request: the request target must be a path") if upstream else no_reader
        try:
            variables = request_variables(request)
        except BadRequest as e:
            return (400, f"Bad request: {e}") if upstream else no_reader
        if bridge.fixed and variables["PATH_INFO"] in bridge.fixed:
            return no_reader
        try:
            cap = bridge.max_channels
            resolved = resolve_request(
                bridge.rules, variables, bridge.default_server, bridge.servers, max_channels=cap
            )
        except RefusedChannel:
            return (400, "Bad request: refused channel") if upstream else no_reader
        served_here = resolved is not None or bool(
            bridge.static_maps and static_resource_for(bridge.static_maps, request) is not None
        )
        if served_here and request.method not in STREAM_METHODS:
            # The router (or the static file) would answer 405 without a body: so does this, first.
            return (405, NOT_ALLOWED_TEXT)
        if served_here or not upstream:
            return no_reader
        return None

    return policy
