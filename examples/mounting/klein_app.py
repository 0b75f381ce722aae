"""Return ssebridge streams from your own Klein routes.

    python examples/mounting/klein_app.py [PORT] [REDIS]

``/live/<channel>`` streams any channel the route accepts (a hostile name gets 400);
``/users/<name>/events`` is the kind of route where you would check the user first; ``/sse/...`` is the
whole ssebridge router mounted as a branch.
"""

from __future__ import annotations

import sys

from klein import Klein
from twisted.web.server import Request

from ssebridge import Bridge, ChannelResource, parse_server, redis_hub
from ssebridge.routing.rules import parse_rule


def build_app(redis: str = "127.0.0.1:6379") -> tuple[Klein, object]:
    server = parse_server(redis)
    hub = redis_hub()
    bridge = Bridge(hub, rules=[parse_rule("route", r"^/clock$ sse:clock")], default_server=server)
    app = Klein()

    @app.route("/live/<channel>")
    def live(request: Request, channel: str) -> ChannelResource:
        return ChannelResource(hub, server, channel)

    @app.route("/users/<name>/events")
    def user_events(request: Request, name: str) -> object:
        if request.getHeader(b"authorization") != b"Bearer " + name.encode():
            request.setResponseCode(401)
            return b"who are you?\n"
        return ChannelResource(hub, server, f"user-{name}")

    @app.route("/sse/", branch=True)
    def sse(request: Request) -> object:
        return bridge.resource()

    return app, hub


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    app, _ = build_app(sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:6379")
    app.run("127.0.0.1", port)
