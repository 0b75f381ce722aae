"""Mount ssebridge streams inside your own twisted.web site.

    python examples/mounting/twisted_web_site.py [PORT] [REDIS]

``/news`` streams the Redis channel ``news``; ``/bridge/...`` is the whole ssebridge router (routing
rules included) mounted under a prefix; everything else is your own site.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from ssebridge import Bridge, ChannelResource, parse_server, redis_hub
from ssebridge.routing.rules import parse_rule


def build_site(redis: str = "127.0.0.1:6379") -> tuple[Site, object]:
    """The example's site; returns it with the hub (stop the hub when you are done)."""
    server = parse_server(redis)
    hub = redis_hub()  # one hub: every stream below shares its Redis connection and subscriptions
    root = Resource()
    root.putChild(b"", Data(b"<h1>my own site</h1>", "text/html"))
    root.putChild(b"news", ChannelResource(hub, server, b"news"))
    bridge = Bridge(
        hub,
        rules=[parse_rule("route", r"^/rooms/(?P<room>[a-z0-9-]+)$ sse:room-${room}")],
        default_server=server,
    )
    root.putChild(b"bridge", bridge.resource())
    return Site(root), hub


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    site, _ = build_site(sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:6379")
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
