"""The hub's patterns with a fake transport: one PSUBSCRIBE pair per pattern, released by the last
subscriber; frames shared per variant; envelope channels never shown as plain messages; channel names
made safe as event names; refusals told; the group kept open while a pattern has subscribers."""

from __future__ import annotations

from collections.abc import Hashable

from twisted.internet.defer import Deferred, succeed

from ssebridge.hub.channels import REFUSED_COMMENT, ChannelGroup, Hub
from ssebridge.hub.patterns import channel_of_envelope, event_name
from ssebridge.interfaces import TransportSink
from ssebridge.publish.envelope import EventId, encode_envelope, envelope_channel


class FakeTransport:
    def __init__(self, key: Hashable, sink: TransportSink) -> None:
        self.sink = sink
        self.requests: list[tuple[str, bytes]] = []
        self.stopped = False

    @property
    def connected(self) -> bool:
        return not self.stopped

    def subscribe(self, channel: bytes) -> None:
        self.requests.append(("subscribe", channel))

    def unsubscribe(self, channel: bytes) -> None:
        self.requests.append(("unsubscribe", channel))

    def psubscribe(self, pattern: bytes) -> None:
        self.requests.append(("psubscribe", pattern))

    def punsubscribe(self, pattern: bytes) -> None:
        self.requests.append(("punsubscribe", pattern))

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


class FakeSubscriber:
    def __init__(self, mode: str = "sse", name_events: bool = False) -> None:
        self.mode = mode
        self.positions: dict[bytes, EventId | None] | None = None
        self.name_events = name_events
        self.received: list[bytes] = []

    def send(self, data: bytes, count: int = 1) -> None:
        self.received.append(data)


def make_hub(limit: int = 1000) -> tuple[Hub, dict[Hashable, FakeTransport]]:
    made: dict[Hashable, FakeTransport] = {}

    def factory(key: Hashable, sink: TransportSink) -> FakeTransport:
        made[key] = FakeTransport(key, sink)
        return made[key]

    return Hub(factory, max_message_size=limit), made


def confirm(group: ChannelGroup, pattern: bytes) -> None:
    group.psubscribed(pattern)
    group.psubscribed(envelope_channel(pattern))


def test_one_psubscribe_pair_per_pattern_released_by_the_last_subscriber() -> None:
    hub, made = make_hub()
    first, second = FakeSubscriber(), FakeSubscriber()
    d1 = hub.attach_pattern("a", b"room.*", first)
    d2 = hub.attach_pattern("a", b"room.*", second)
    transport = made["a"]
    assert transport.requests == [("psubscribe", b"room.*"), ("psubscribe", b"ssebridge:{room.*}:e")]
    group = hub.groups["a"]
    group.psubscribed(b"room.*")
    assert not d1.called  # its envelope form is not confirmed yet
    group.psubscribed(b"ssebridge:{room.*}:e")
    assert d1.called and d2.called
    # A channel of the same name is another subscription: a channel's confirmation is not the pattern's.
    assert hub.subscriber_count() == 2
    hub.detach_pattern("a", b"room.*", first)
    assert ("punsubscribe", b"room.*") not in transport.requests and not transport.stopped
    hub.detach_pattern("a", b"room.*", second)
    assert transport.requests[-2:] == [("punsubscribe", b"room.*"), ("punsubscribe", b"ssebridge:{room.*}:e")]
    # The server was not configured and has nothing left: its transport is closed.
    assert transport.stopped and "a" not in hub.groups


def test_a_group_with_a_pattern_stays_open_when_its_last_channel_leaves() -> None:
    hub, made = make_hub()
    sub = FakeSubscriber()
    hub.attach("a", b"news", sub)
    hub.attach_pattern("a", b"room.*", sub)
    hub.detach("a", b"news", sub)
    assert not made["a"].stopped
    hub.detach_pattern("a", b"room.*", sub)
    assert made["a"].stopped


def test_frames_are_shared_per_variant_and_named_after_the_channel_made_safe() -> None:
    hub, _ = make_hub()
    plain, other, named, raw = (
        FakeSubscriber(),
        FakeSubscriber(),
        FakeSubscriber(name_events=True),
        FakeSubscriber("sseraw"),
    )
    for sub in (plain, other, named, raw):
        hub.attach_pattern("a", b"room.*", sub)
    group = hub.groups["a"]
    confirm(group, b"room.*")
    group.deliver_patterns(
        {b"room.*": [(b"room.1", b"x"), (b"room.\r\n\x00", b"y")], b"nobody": [(b"n", b"z")]}
    )
    assert plain.received == [b"data: x\n\ndata: y\n\n"]
    assert other.received[0] is plain.received[0]
    assert named.received == [b"event: room.1\ndata: x\n\nevent: room.%0D%0A%00\ndata: y\n\n"]
    assert raw.received == [b"xy"]


def test_events_keep_their_id_only_for_subscribers_without_channels() -> None:
    hub, _ = make_hub()
    alone, mixed, mixed_named = FakeSubscriber(), FakeSubscriber(), FakeSubscriber(name_events=True)
    hub.attach_pattern("a", b"r*", alone)
    hub.attach_pattern("a", b"r*", mixed, own_ids=False)
    hub.attach_pattern("a", b"r*", mixed_named, own_ids=False)
    group = hub.groups["a"]
    confirm(group, b"r*")
    envelope = encode_envelope((5, 1), None, b"hi")
    group.deliver_patterns({b"ssebridge:{r*}:e": [(b"ssebridge:{r1}:e", envelope)]})
    assert alone.received == [b"id: 5-1\ndata: hi\n\n"]
    assert mixed.received == [b"data: hi\n\n"]
    assert mixed_named.received == [b"event: r1\ndata: hi\n\n"]


def test_envelope_channels_matched_by_the_pattern_itself_are_never_plain_messages() -> None:
    hub, _ = make_hub()
    sub = FakeSubscriber()
    hub.attach_pattern("a", b"*", sub)
    group = hub.groups["a"]
    confirm(group, b"*")
    envelope = encode_envelope((1, 0), None, b"event")
    group.deliver_patterns(
        {
            b"*": [(b"ssebridge:{news}:e", envelope), (b"news", b"plain")],
            b"ssebridge:{*}:e": [(b"ssebridge:{news}:e", envelope), (b"ssebridge:{x}:e", b"not an envelope")],
        }
    )
    assert sub.received == [b"data: plain\n\n", b"id: 1-0\ndata: event\n\n"]
    assert hub.stats.messages_malformed == 1


def test_oversize_messages_are_dropped_and_counted() -> None:
    hub, _ = make_hub(limit=10)
    sub = FakeSubscriber()
    hub.attach_pattern("a", b"r*", sub)
    group = hub.groups["a"]
    confirm(group, b"r*")
    group.deliver_patterns({b"r*": [(b"r1", b"x" * 11), (b"r2", b"ok")]})
    assert sub.received == [b"data: ok\n\n"]
    assert hub.stats.messages_oversize == 1


def test_refusals_are_told_counted_and_cleared_by_a_confirmation() -> None:
    hub, _ = make_hub()
    hub.connect("a")
    started, waiting = FakeSubscriber(), FakeSubscriber()
    hub.attach_pattern("a", b"secret.*", started)
    hub.activate_early_pattern("a", b"secret.*", started)
    hub.attach_pattern("a", b"secret.*", waiting)
    group = hub.groups["a"]
    group.psubscribe_failed(b"secret.*", "NOPERM no")
    assert started.received == [REFUSED_COMMENT] and waiting.received == []
    assert hub.refused_count() == 1 and hub.not_ready() == "Redis refuses 1 subscription(s)"
    confirm(group, b"secret.*")
    assert hub.refused_count() == 0
    # A reconnect makes every pattern unconfirmed again until the server confirms both names.
    group.connection_down()
    late = FakeSubscriber()
    d = hub.attach_pattern("a", b"secret.*", late)
    assert not d.called
    confirm(group, b"secret.*")
    assert d.called


def test_event_names_and_envelope_channels() -> None:
    assert event_name(b"room.1") == b"room.1"
    assert event_name(b"a\rb\nc\x00d%0A") == b"a%0Db%0Ac%00d%0A"
    assert channel_of_envelope(envelope_channel(b"r}:e{x")) == b"r}:e{x"
    assert channel_of_envelope(b"ssebridge:{}:e") == b""
    assert channel_of_envelope(b"room.1") is None
    assert channel_of_envelope(b"ssebridge:{x}:h") is None
