"""The hub with a fake transport: subscriptions follow subscribers, batches fan out, refusals are told,
readiness means the configured servers, and a server left without channels is closed."""

from __future__ import annotations

from collections.abc import Hashable

from twisted.internet.defer import Deferred, succeed

from ssebridge.hub.channels import REFUSED_COMMENT, ChannelGroup, Hub
from ssebridge.interfaces import TransportSink
from ssebridge.publish.envelope import EventId, envelope_channel


class FakeTransport:
    """Records the hub's requests; the test plays the server through ``sink``."""

    def __init__(self, key: Hashable, sink: TransportSink) -> None:
        self.key = key
        self.sink = sink
        self.subscribed: list[bytes] = []
        self.unsubscribed: list[bytes] = []
        self.stopped = False
        self.up = True

    @property
    def connected(self) -> bool:
        return self.up and not self.stopped

    def subscribe(self, channel: bytes) -> None:
        self.subscribed.append(channel)

    def unsubscribe(self, channel: bytes) -> None:
        self.unsubscribed.append(channel)

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


class FakeSubscriber:
    def __init__(self, mode: str = "sse") -> None:
        self.mode = mode
        self.positions: dict[bytes, EventId | None] | None = None
        self.name_events = False
        self.received: list[tuple[bytes, int]] = []

    def send(self, data: bytes, count: int = 1) -> None:
        self.received.append((data, count))


def make_hub() -> tuple[Hub, dict[Hashable, FakeTransport]]:
    made: dict[Hashable, FakeTransport] = {}

    def factory(key: Hashable, sink: TransportSink) -> FakeTransport:
        made[key] = FakeTransport(key, sink)
        return made[key]

    return Hub(factory, max_message_size=10), made


def group(hub: Hub, key: Hashable) -> ChannelGroup:
    return hub.groups[key]


def confirm(sink: ChannelGroup, channel: bytes) -> None:
    """The server confirms both names a channel is subscribed under (plain, and its events')."""
    sink.subscribed(channel)
    sink.subscribed(envelope_channel(channel))


def test_one_subscription_per_channel_released_by_the_last_subscriber() -> None:
    hub, made = make_hub()
    hub.connect("a")
    first, second = FakeSubscriber(), FakeSubscriber()
    d1 = hub.attach("a", b"news", first)
    d2 = hub.attach("a", b"news", second)
    assert made["a"].subscribed == [b"news", envelope_channel(b"news")]
    assert not d1.called and not d2.called
    confirm(group(hub, "a"), b"news")
    assert d1.called and d2.called
    hub.detach("a", b"news", first)
    assert made["a"].unsubscribed == []
    hub.detach("a", b"news", second)
    assert made["a"].unsubscribed == [b"news", envelope_channel(b"news")]
    # A configured server stays open with no channel.
    assert "a" in hub.groups and not made["a"].stopped


def test_a_batch_is_framed_once_and_oversize_messages_dropped() -> None:
    hub, _ = make_hub()
    sse, raw = FakeSubscriber(), FakeSubscriber("sseraw")
    hub.attach("a", b"c", sse)
    hub.attach("a", b"c", raw)
    confirm(group(hub, "a"), b"c")
    group(hub, "a").deliver({b"c": [b"one", b"x" * 11, b"two"], b"other": [b"y"]})
    assert sse.received == [(b"data: one\n\ndata: two\n\n", 2)]
    assert raw.received == [(b"onetwo", 2)]
    assert sse.received[0][0] is not raw.received[0][0]
    assert hub.stats.messages_oversize == 1
    assert hub.stats.messages_received == 4


def test_a_refused_subscription_is_counted_told_and_makes_the_node_unready() -> None:
    hub, made = make_hub()
    hub.connect("a")
    sse, raw, waiting = FakeSubscriber(), FakeSubscriber("sseraw"), FakeSubscriber()
    sink = group(hub, "a")
    hub.attach("a", b"c", sse)
    hub.attach("a", b"c", raw)
    confirm(sink, b"c")
    assert hub.not_ready() is None
    sink.connection_down()
    sink.connection_up()
    pending = hub.attach("a", b"c", waiting)
    sink.subscribe_failed(b"c", "NOPERM no permissions to access the 'c' channel")
    assert hub.stats.subscribe_refusals == 1
    assert hub.refused_count() == 1
    assert "refuses 1" in (hub.not_ready() or "")
    # Started SSE subscribers hear it; raw ones get nothing foreign in their bytes; waiting ones have no
    # response to write to yet.
    assert sse.received == [(REFUSED_COMMENT, 0)]
    assert REFUSED_COMMENT == b": subscription refused by the message server, retrying\n\n"
    assert raw.received == [] and waiting.received == [] and not pending.called
    confirm(sink, b"c")
    assert pending.called
    assert hub.not_ready() is None and hub.refused_count() == 0
    assert made["a"].subscribed == [b"c", envelope_channel(b"c")]


def test_readiness_reads_transport_connected_for_configured_servers_only() -> None:
    hub, made = make_hub()
    assert hub.not_ready() == "no message server"
    hub.connect("configured")
    assert hub.not_ready() is None
    # A server some request opened, down: not the node's readiness.
    hub.attach("other", b"x", FakeSubscriber())
    made["other"].up = False
    assert hub.not_ready() is None
    assert not hub.connected()
    made["configured"].up = False
    assert hub.not_ready() == "Redis is not connected"


def test_a_server_left_without_channels_is_closed_and_forgotten() -> None:
    hub, made = make_hub()
    hub.connect("configured")
    subscriber = FakeSubscriber()
    hub.attach("elsewhere", b"x", subscriber)
    transport = made["elsewhere"]
    hub.detach("elsewhere", b"x", subscriber)
    assert transport.stopped and "elsewhere" not in hub.groups
    assert list(hub.groups) == ["configured"]
    # Back on demand, as a new transport.
    hub.attach("elsewhere", b"x", subscriber)
    assert made["elsewhere"] is not transport
    d = hub.stop()
    assert d.called and made["elsewhere"].stopped and made["configured"].stopped


def test_a_waiting_subscriber_that_leaves_is_withdrawn() -> None:
    hub, made = make_hub()
    subscriber = FakeSubscriber()
    d = hub.attach("s", b"c", subscriber)
    d.cancel()
    hub.detach("s", b"c", subscriber)
    assert made["s"].unsubscribed == [b"c", envelope_channel(b"c")] and made["s"].stopped
    assert hub.subscriber_count() == 0


def test_reconnect_unconfirms_until_resubscribed() -> None:
    hub, _ = make_hub()
    early = FakeSubscriber()
    hub.attach("a", b"c", early)
    sink = group(hub, "a")
    confirm(sink, b"c")
    sink.connection_down()
    assert hub.stats.redis_disconnects == 1
    late = FakeSubscriber()
    d = hub.attach("a", b"c", late)
    assert not d.called
    # The current subscriber stays attached and receives as soon as messages flow again.
    sink.deliver({b"c": [b"m"]})
    assert early.received == [(b"data: m\n\n", 1)] and late.received == []
    confirm(sink, b"c")
    assert d.called
