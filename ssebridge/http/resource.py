"""Requests into streams: ``attach_stream`` (a request waits for its subscription, then starts), and
``ChannelResource``, the twisted.web resource streaming one channel, mountable in any ``Site`` or
returned from a Klein route.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ssebridge import frames
from ssebridge.config.defaults import CLIENT_BUFFER, CONFIRM_TIMEOUT
from ssebridge.http.stream import Stream
from ssebridge.hub.channels import Hub
from ssebridge.logs import printable
from ssebridge.publish.envelope import parse_position
from ssebridge.routing.rules import RefusedChannel, check_channel
from ssebridge.routing.wire import wire_text

__all__ = ["ChannelResource", "attach_stream"]

log = Logger()


class ChannelResource(Resource):
    """A twisted.web resource that streams one channel of one server to every request it renders.

    Mount it anywhere: ``root.putChild(b"news", ChannelResource(hub, server, b"news"))``, or return it
    from a Klein route. The response starts (headers sent) only once the Redis subscription is
    confirmed, so every message published after a client has its headers reaches it. If the
    subscription cannot be confirmed within ``confirm_timeout`` seconds (Redis is away), the stream
    starts anyway and receives messages as soon as the bridge has resubscribed.
    """

    isLeaf = True

    def __init__(
        self,
        hub: Hub,
        server: Hashable,
        channel: bytes | str,
        mode: str = "sse",
        client_buffer: int = CLIENT_BUFFER,
        confirm_timeout: float = CONFIRM_TIMEOUT,
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.hub = hub
        self.redis_server = server
        # A channel often comes from the URL (a Klein route's argument): refuse what must not be
        # subscribed here, once, and answer 400 for it at render time.
        text = wire_text(channel) if isinstance(channel, bytes) else channel
        self.refused: str | None = None
        try:
            self.channel = check_channel(text)
        except RefusedChannel as e:
            self.refused = str(e)
            self.channel = b""
        self.mode = mode
        self.client_buffer = client_buffer
        self.confirm_timeout = confirm_timeout
        self.reactor: Any = reactor

    def render(self, request: Request) -> Any:
        if self.refused is not None:
            log.info("refused channel: {why}", why=self.refused)
            request.setResponseCode(400)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return f"Bad request: {self.refused}\n".encode()
        stream = Stream(request, self.hub, self.redis_server, self.channel, self.mode, self.client_buffer)
        attach_stream(stream, request, self.hub, self.redis_server, self.confirm_timeout, self.reactor)
        return NOT_DONE_YET


#: Where a client says which event it saw last: the header a browser sends on its own reconnects, then
#: the query parameters a page can set for its first connection.
RESUME_HEADER = b"last-event-id"
RESUME_PARAMETERS = (b"last_event_id", b"lastEventId")


def resume_from(request: Request) -> str | None:
    """The ``Last-Event-ID`` of ``request`` (header first, then ``?last_event_id=`` or
    ``?lastEventId=``), or ``None`` when it names none."""
    values = request.requestHeaders.getRawHeaders(RESUME_HEADER)
    if values and values[-1].strip():
        return wire_text(values[-1].strip())
    args = request.args or {}
    for name in RESUME_PARAMETERS:
        given = args.get(name)
        if given and given[0].strip():
            return wire_text(given[0].strip())
    return None


def attach_stream(
    stream: Stream,
    request: Request,
    hub: Hub,
    server: Hashable,
    confirm_timeout: float,
    reactor: Any,
) -> Deferred[None]:
    """Attach ``stream`` to the hub on each of its channels and patterns and start it once every
    subscription is confirmed (or the wait timed out). A request that carries a ``Last-Event-ID``
    resumes: each channel first replays what history holds after the stream's position on it
    (patterns are live only: they ignore it)."""
    text = resume_from(request) if stream.mode == "sse" else None
    positions = parse_position(text, stream.channels) if text is not None else {}
    if stream.positions is not None:
        stream.positions.update((name, pos) for name, pos in positions.items() if pos is not None)
    waits = [
        hub.attach(server, channel, stream, text is not None, positions.get(channel))
        for channel in stream.channels
    ]
    # A pattern's events keep their own id only on a stream of patterns alone: on a stream with
    # channels, the browser's last event id must stay the channels' position.
    own_ids = not stream.channels
    waits.extend(hub.attach_pattern(server, p, stream, own_ids) for p in stream.patterns)
    if not waits:
        # Neither channel nor pattern (a Stream made by hand): nothing to wait for.
        waits.append(succeed(None))
    confirmed: Deferred[Any] = waits[0] if len(waits) == 1 else gatherResults(waits, consumeErrors=True)
    timer = reactor.callLater(confirm_timeout, _start_unconfirmed, stream, hub, server)

    def on_confirmed(_: object) -> None:
        if timer.active():
            timer.cancel()
        stream.start()

    def on_error(failure: Failure) -> None:
        if timer.active():
            timer.cancel()
        if isinstance(failure.value, FirstError):
            failure = failure.value.subFailure
        if not failure.check(CancelledError):
            log.failure("attaching a stream failed", failure)
            stream.close("internal error")

    confirmed.addCallbacks(on_confirmed, on_error)

    def on_finish(result: object) -> None:
        if timer.active():
            timer.cancel()
        for wait in waits:
            if not wait.called:
                wait.cancel()
        stream.close("client gone")

    request.notifyFinish().addBoth(on_finish)
    return confirmed.addCallback(lambda _: None)


def _start_unconfirmed(stream: Stream, hub: Hub, server: Hashable) -> None:
    log.warn(
        "subscription to {channel} not confirmed in time; stream started, receiving once resubscribed",
        channel=printable(b",".join((*stream.channels, *stream.patterns))),
    )
    for channel in stream.channels:
        hub.activate_early(server, channel, stream)
    for pattern in stream.patterns:
        hub.activate_early_pattern(server, pattern, stream)
    # A comment, so the client sees a live stream while Redis is away.
    stream.start(frames.comment(b"waiting for the message server") if stream.mode == "sse" else b"")
