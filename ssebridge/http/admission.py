"""Which request bodies the bridge reads: only those the upstream app will read.

A body is judged when the request headers are in, before any of it is read (``BridgeRequest`` asks a
``BodyPolicy``). Streams, static files, the metrics and health checks take no body, and with no
upstream nothing does: such a body is refused at once (413, or 400 for a request the router would
refuse anyway) instead of being read to be thrown away. The decision mirrors ``Bridge.dispatch``.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.server import Request

from ssebridge.http.router import BadRequest, Bridge, request_variables
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
        if bridge.upstream is None:
            return (413, _NO_READER)
        if not request.uri.startswith(b"/"):
            return (400, "Bad request: the request target must be a path")
        try:
            variables = request_variables(request)
        except BadRequest as e:
            return (400, f"Bad request: {e}")
        if bridge.fixed and variables["PATH_INFO"] in bridge.fixed:
            return (413, _NO_READER)
        try:
            cap = bridge.max_channels
            resolved = resolve_request(
                bridge.rules, variables, bridge.default_server, bridge.servers, max_channels=cap
            )
            if resolved is not None:
                return (413, _NO_READER)
        except RefusedChannel:
            return (400, "Bad request: refused channel")
        if bridge.static_maps and static_resource_for(bridge.static_maps, request) is not None:
            return (413, _NO_READER)
        return None

    return policy
