"""Resume in the hub, with a fake transport and a history whose answers the test times by hand.

The cases are the orderings two Redis connections allow: the history read and the live events travel
on different connections, so either may arrive first. Whatever the order, every event reaches the
resuming subscriber once, in id order.
"""

from __future__ import annotations

from collections.abc import Hashable

from twisted.internet.defer import Deferred, succeed

from ssebridge.hub.channels import ChannelGroup, Hub
from ssebridge.interfaces import HistoryEvent, Replay, TransportSink
from ssebridge.publish.envelope import EventId, encode_envelope, envelope_channel
from ssebridge.testing import EventStreamParser
from tests.unit.test_hub import FakeSubscriber, FakeTransport, confirm


class FakeHistory:
    """Reads wait until the test answers them; ``current_id`` answers at once."""

    def __init__(self) -> None:
        self.reads: list[tuple[bytes, EventId | None, Deferred[Replay]]] = []
        self.current: EventId | None = None

    def read_after(self, channel: bytes, position: EventId | None, limit: int) -> Deferred[Replay]:
        d: Deferred[Replay] = Deferred()
        self.reads.append((channel, position, d))
        return d

    def current_id(self, channel: bytes) -> Deferred[EventId | None]:
        return succeed(self.current)

    def stop(self) -> Deferred[None]:
        return succeed(None)


def make() -> tuple[Hub, ChannelGroup, FakeHistory]:
    history = FakeHistory()

    def transport(key: Hashable, sink: TransportSink) -> FakeTransport:
        return FakeTransport(key, sink)

    hub = Hub(transport, make_history=lambda key: history)
    hub.connect("s")
    return hub, hub.groups["s"], history


def live(group: ChannelGroup, *ids: int) -> None:
    """Envelopes for ``ids`` (ms part; each one's previous is the id before it) arrive live."""
    group.deliver(
        {envelope_channel(b"c"): [encode_envelope((i, 0), (i - 1, 0), b"e%d" % i) for i in ids]}
    )


def history(*ids: int) -> Replay:
    return Replay([HistoryEvent((i, 0), b"e%d" % i) for i in ids], None, (ids[-1], 0) if ids else None)


def received(subscriber: FakeSubscriber) -> list[str]:
    parser = EventStreamParser()
    for data, _ in subscriber.received:
        parser.feed(data)
    return [e.id for e in parser.events]


def test_events_the_replay_read_that_arrive_live_afterwards_are_not_sent_twice() -> None:
    hub, group, store = make()
    resuming = FakeSubscriber()
    hub.attach("s", b"c", resuming, resume=True, position=(1, 0))
    confirm(group, b"c")
    (_, position, read) = store.reads[0]
    assert position == (1, 0)
    live(group, 2)  # held while the read is out
    read.callback(history(2, 3, 4))  # history already has 3 and 4; live has not delivered them yet
    assert received(resuming) == ["2-0", "3-0", "4-0"]
    live(group, 3, 4)  # read by the replay: not again
    live(group, 5)
    live(group, 6)
    assert received(resuming) == ["2-0", "3-0", "4-0", "5-0", "6-0"]


def test_live_events_that_overtake_the_replay_are_held_then_deduplicated() -> None:
    hub, group, store = make()
    resuming = FakeSubscriber()
    hub.attach("s", b"c", resuming, resume=True, position=(1, 0))
    confirm(group, b"c")
    live(group, 2, 3)
    live(group, 4)
    store.reads[0][2].callback(history(2, 3))
    live(group, 5)
    assert received(resuming) == ["2-0", "3-0", "4-0", "5-0"]


def test_the_newest_id_learned_at_subscription_never_drops_a_live_event() -> None:
    """The channel learns history's newest id (3) while event 3 is still on its way live."""
    hub, group, store = make()
    store.current = (3, 0)
    subscriber = FakeSubscriber()
    hub.attach("s", b"c", subscriber)
    confirm(group, b"c")
    live(group, 3)
    assert received(subscriber) == ["3-0"]


def test_a_catch_up_after_a_reconnect_delivers_what_was_missed_once() -> None:
    hub, group, store = make()
    subscriber = FakeSubscriber()
    hub.attach("s", b"c", subscriber)
    confirm(group, b"c")
    live(group, 1, 2)
    group.connection_down()
    group.connection_up()
    confirm(group, b"c")
    (_, position, read) = store.reads[0]
    assert position == (2, 0)
    live(group, 5)  # held until the catch-up is delivered
    read.callback(history(3, 4, 5))
    live(group, 5, 6)
    assert received(subscriber) == ["1-0", "2-0", "3-0", "4-0", "5-0", "6-0"]
    assert hub.stats.catch_ups == 1


def test_clients_coming_back_from_one_id_share_a_read_while_nothing_new_arrives() -> None:
    hub, group, store = make()
    first = FakeSubscriber()
    hub.attach("s", b"c", first, resume=True, position=(1, 0))
    confirm(group, b"c")
    store.reads[0][2].callback(history(2, 3))
    # Later clients from the same id: the finished read still holds everything before the live events.
    later = [FakeSubscriber() for _ in range(3)]
    for subscriber in later:
        hub.attach("s", b"c", subscriber, resume=True, position=(1, 0))
    assert len(store.reads) == 1
    assert all(received(s) == ["2-0", "3-0"] for s in later)
    # Once something newer has been delivered live, a client from that id needs a new read.
    live(group, 4)
    late = FakeSubscriber()
    hub.attach("s", b"c", late, resume=True, position=(1, 0))
    assert len(store.reads) == 2
    store.reads[1][2].callback(history(2, 3, 4))
    live(group, 5)
    assert received(late) == ["2-0", "3-0", "4-0", "5-0"]
    assert received(first) == ["2-0", "3-0", "4-0", "5-0"]
