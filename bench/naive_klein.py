"""The straightforward Klein SSE server, as a baseline for bench/: what ssebridge's stream path avoids.

Every client is a Klein route holding its twisted.web ``Request`` open; each message from Redis is
framed again for every client and written with ``request.write`` (one ``send`` and one epoll
re-registration per client per message). One shared txredisapi subscription per channel, as in the
bridge, so the difference measured is the HTTP side alone. Run it through bench/run.py:

    python bench/run.py --clients 10000 --flood --size 64 \
        --bridge-cmd "{python} {repo}/bench/naive_klein.py {config}"

It reads ``http-socket`` and ``redis`` from the bench's generated ini; nothing else is supported.
"""

from __future__ import annotations

import re
import resource
import sys
from typing import Any

import txredisapi
from klein import Klein
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.server import Request, Site

app = Klein()
clients: dict[str, set[Request]] = {}


class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    def connectionMade(self) -> None:
        global subscriber
        subscriber = self

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        for request in list(clients.get(channel, ())):
            frame = "".join(f"data: {line}\n" for line in str(message).split("\n")) + "\n"
            request.write(frame.encode("utf-8"))


subscriber: Subscriber | None = None


@app.route("/events/<channel>")
def events(request: Request, channel: str) -> object:
    request.setHeader(b"Content-Type", b"text/event-stream")
    request.setHeader(b"Cache-Control", b"no-cache")
    waiting = clients.setdefault(channel, set())
    if not waiting and subscriber is not None:
        subscriber.subscribe(channel)
    waiting.add(request)
    request.write(b": ok\n\n")
    request.notifyFinish().addBoth(lambda _: waiting.discard(request))
    # Klein finishes a request whose handler returns; a Deferred that never fires keeps it open (Klein
    # cancels it when the client goes).
    return Deferred()


def main(config_path: str) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    text = open(config_path, encoding="utf-8").read()
    host, port = re.search(r"^http-socket\s*=\s*(\S+):(\d+)", text, re.M).groups()  # type: ignore[union-attr]
    rhost, rport = re.search(r"^redis\s*=\s*(\S+):(\d+)", text, re.M).groups()  # type: ignore[union-attr]
    factory = txredisapi.SubscriberFactory()
    factory.protocol = Subscriber
    factory.startConnecting(TCP4ClientEndpoint(reactor, rhost, int(rport)))
    reactor.listenTCP(int(port), Site(app.resource()), backlog=4096, interface=host)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1])
