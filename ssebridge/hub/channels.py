"""The hub: channels and fan-out, knowing neither HTTP nor Redis.

A ``Hub`` holds, per message server, one ``Transport`` and the channels subscribed through it. Each
channel is one subscription, shared by all of its subscribers: the transport is asked to subscribe when
the first subscriber arrives and to unsubscribe when the last leaves. When messages arrive, each batch
is framed once per mode and the same bytes go to every subscriber of the channel as one write.

Transports are pluggable (Redis pub/sub today; Redis Streams, Sentinel, Cluster later): anything that
implements ``ssebridge.interfaces.Transport`` and reports to the ``ChannelGroup`` it was built with,
a ``TransportSink``.

Patterns (``PSUBSCRIBE``, live only) are subscriptions of the group too, one per pattern, kept by
``ssebridge.hub.patterns``: subscribers attach with ``Hub.attach_pattern``.

Servers the hub was told to ``connect`` are the configured ones: they stay open with no channel, and
they alone decide readiness. Any other server's transport is opened for its first channel and closed
with its last, so that requests cannot leave connections (and reconnect loops) behind.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssebridge.config.defaults import MAX_MESSAGE_SIZE, REPLAY_LIMIT
from ssebridge.hub.channel import REFUSED_COMMENT, Channel, Cork
from ssebridge.hub.patterns import Pattern, PatternGroup
from ssebridge.hub.replay import MAX_REPLAY_PAGES, HistoryReplay
from ssebridge.hub.stats import Stats
from ssebridge.interfaces import History, Subscriber, Transport, TransportFactory, TransportSink
from ssebridge.logs import printable
from ssebridge.publish.envelope import Envelope, EventId, MalformedEnvelope, decode_envelope, envelope_channel

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_REPLAY_PAGES",
    "REFUSED_COMMENT",
    "Channel",
    "ChannelGroup",
    "HistoryFactory",
    "Hub",
    "Pattern",
]

log = Logger()

#: Messages larger than this are not delivered (logged and counted): 0 means no limit.
DEFAULT_MAX_MESSAGE_SIZE = MAX_MESSAGE_SIZE
#: Events read from history per read, for a resuming client or a catch-up.
DEFAULT_REPLAY_LIMIT = REPLAY_LIMIT

#: How the hub gets the history of a server key (``None``: that server keeps none).
HistoryFactory = Callable[[Hashable], "History | None"]


class ChannelGroup(PatternGroup, HistoryReplay):
    """The channels of one server, the transport that feeds them (it reports here: the transport's
    sink), and the server's history when it keeps one.

    Each channel is subscribed under two names: its own (plain ``PUBLISH``) and its envelope channel
    (``publish.lua``'s events with ids). With a ``history``, the group also keeps every channel's ids
    whole: when a channel is first confirmed it learns the newest id; after a reconnect, or when an
    event's predecessor was never seen, it reads what was missed and delivers it before anything newer.
    """

    def __init__(
        self,
        key: Hashable,
        make_transport: TransportFactory,
        stats: Stats,
        max_message_size: int,
        history: History | None = None,
        replay_limit: int = DEFAULT_REPLAY_LIMIT,
    ) -> None:
        self.key = key
        self.stats = stats
        self.max_message_size = max_message_size
        self.history = history
        self.replay_limit = replay_limit
        self.channels: dict[bytes, Channel] = {}
        # Every transport name to its channel, and whether it is the envelope name.
        self._names: dict[bytes, tuple[Channel, bool]] = {}
        # The last replay turned into events and frames: resuming clients that shared one read (the
        # history coalesces them) share this work too.
        self._memo: tuple[object, list[Envelope], bytes] | None = None
        self._init_patterns()
        self.transport: Transport = make_transport(key, self)

    @property
    def refused(self) -> int:
        """How many of its channels and patterns the server refuses now."""
        return sum(1 for ch in self.channels.values() if ch.refused is not None) + sum(
            1 for p in self.patterns.values() if p.refused is not None
        )

    def attach(
        self, channel: bytes, subscriber: Subscriber, resume: bool = False, position: EventId | None = None
    ) -> Deferred[None]:
        ch = self.channels.get(channel)
        if ch is None:
            envelope = envelope_channel(channel)
            ch = self.channels[channel] = Channel(channel, (channel, envelope), self.stats, self)
            self._names[channel] = (ch, False)
            self._names[envelope] = (ch, True)
            self.transport.subscribe(channel)
            self.transport.subscribe(envelope)
        return ch.add(subscriber, resume, position)

    def detach(self, channel: bytes, subscriber: Subscriber) -> None:
        ch = self.channels.get(channel)
        if ch is None:
            return
        ch.remove(subscriber)
        if not len(ch):
            del self.channels[channel]
            envelope = envelope_channel(channel)
            self._names.pop(channel, None)
            self._names.pop(envelope, None)
            self.transport.unsubscribe(channel)
            self.transport.unsubscribe(envelope)

    def stop(self) -> Deferred[None]:
        """Close the transport and the history's connection."""
        pending = [self.transport.stop()]
        if self.history is not None:
            pending.append(self.history.stop())
        return gatherResults(pending, consumeErrors=True).addCallback(lambda _: None)

    # TransportSink: called by the transport.

    def connection_up(self) -> None:
        self.stats.redis_connects += 1

    def connection_down(self) -> None:
        self.stats.redis_disconnects += 1
        # New subscribers wait for the resubscription to be confirmed; current ones stay attached and
        # receive again as soon as the transport has resubscribed (and the channel has caught up).
        for ch in self.channels.values():
            ch.unconfirm()
        self._unconfirm_patterns()

    def subscriptions_lost(self, names: Iterable[bytes], *, disconnected: bool = False) -> None:
        if disconnected:
            self.stats.redis_disconnects += 1
        # Only these names: the rest of the transport's subscriptions still deliver. Once confirmed
        # again, the channel catches up from history as after a reconnect.
        for name in names:
            found = self._names.get(name)
            if found is not None:
                found[0].unconfirm_name(name)
                found[0].replays.clear()

    def subscribed(self, channel: bytes) -> None:
        found = self._names.get(channel)
        if found is None:
            return
        ch = found[0]
        again = ch.ever_confirmed
        if ch.confirm(channel) and self.history is not None:
            if again and (ch.last_id is not None or ch.known_id is not None):
                # Resubscribed after a reconnect: what was published meanwhile is in history.
                ch.hold()
                self._catch_up(ch)
            elif ch.last_id is None and ch.known_id is None:
                self._learn_last_id(ch)

    def subscribe_failed(self, channel: bytes, error: str) -> None:
        self.stats.subscribe_refusals += 1
        found = self._names.get(channel)
        if found is not None:
            found[0].refuse(error)

    def deliver(self, batch: Mapping[bytes, list[bytes]]) -> None:
        names = self._names
        limit = self.max_message_size
        stats = self.stats
        # Streams of several channels get one send for the whole read (see channel.Cork).
        cork = Cork()
        try:
            for name, messages in batch.items():
                stats.messages_received += len(messages)
                found = names.get(name)
                if found is None:
                    continue
                if limit and any(len(m) > limit for m in messages):
                    messages = self._drop_oversize(name, messages)
                    if not messages:
                        continue
                ch, is_envelope = found
                if is_envelope:
                    self._deliver_envelopes(ch, messages, cork)
                else:
                    ch.deliver(messages, cork)
        finally:
            cork.flush()

    def _deliver_envelopes(self, ch: Channel, messages: list[bytes], cork: Cork | None = None) -> None:
        events = []
        for message in messages:
            try:
                events.append(decode_envelope(message))
            except MalformedEnvelope as e:
                self.stats.messages_malformed += 1
                log.warn(
                    "malformed event on {channel}: {why}; not delivered",
                    channel=printable(ch.name),
                    why=str(e),
                )
        if ch.holding:
            ch.hold(events)
            return
        events = ch.fresh(events)
        hole = ch.hole_at(events) if self.history is not None else None
        if hole is None:
            ch.deliver_events(events, cork)
            return
        if cork is not None:
            cork.flush()  # what the catch-up sends (a gap notice) must not pass what the read held
        # An event whose predecessor this bridge never saw (it was not listening, or Redis dropped a
        # message): read the missing ones before delivering anything newer.
        ch.deliver_events(events[:hole])
        ch.hold(events[hole:])
        self._catch_up(ch)

    def _drop_oversize(self, name: bytes, messages: list[bytes]) -> list[bytes]:
        kept = []
        for m in messages:
            if len(m) > self.max_message_size:
                self.stats.messages_oversize += 1
                log.warn(
                    "message of {size} bytes on {channel} is over the limit of {limit}; not delivered",
                    size=len(m),
                    channel=printable(name),
                    limit=self.max_message_size,
                )
            else:
                kept.append(m)
        return kept


class Hub:
    """Every channel of this process, grouped by server; one transport per server, made on demand."""

    def __init__(
        self,
        make_transport: TransportFactory,
        stats: Stats | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        make_history: HistoryFactory | None = None,
        replay_limit: int = DEFAULT_REPLAY_LIMIT,
    ) -> None:
        self._make_transport = make_transport
        self._make_history = make_history
        self.stats = stats if stats is not None else Stats()
        self.max_message_size = max_message_size
        self.replay_limit = replay_limit
        self.groups: dict[Hashable, ChannelGroup] = {}
        #: Servers opened with ``connect``: kept open without channels, and what readiness means.
        self.configured: set[Hashable] = set()
        # Transports of servers left without channels, while they close (``stop`` waits for them).
        self._closing: set[Deferred[None]] = set()

    def _group(self, server: Hashable) -> ChannelGroup:
        group = self.groups.get(server)
        if group is None:
            history = self._make_history(server) if self._make_history is not None else None
            group = self.groups[server] = ChannelGroup(
                server, self._make_transport, self.stats, self.max_message_size, history, self.replay_limit
            )
        return group

    def connect(self, server: Hashable) -> None:
        """Open the transport for a configured ``server`` now, and keep it open with no channel."""
        self.configured.add(server)
        self._group(server)

    def connected(self) -> bool:
        """Whether every transport reports a live connection (``Transport.connected``)."""
        return all(g.transport.connected for g in self.groups.values())

    def not_ready(self) -> str | None:
        """Why the node is not ready, or ``None`` when it is.

        Ready: every configured server's transport is connected (the same ``Transport.connected`` the
        ``redis_connected`` gauge shows) and refuses none of its subscriptions. With no configured
        server (a hub used without ``connect``), every open transport counts.
        """
        keys = self.configured or set(self.groups)
        if not keys:
            return "no message server"
        for key in keys:
            group = self.groups.get(key)
            if group is None or not group.transport.connected:
                return "Redis is not connected"
            refused = group.refused
            if refused:
                return f"Redis refuses {refused} subscription(s)"
        return None

    def attach(
        self,
        server: Hashable,
        channel: bytes,
        subscriber: Subscriber,
        resume: bool = False,
        position: EventId | None = None,
    ) -> Deferred[None]:
        """Add a subscriber; the Deferred fires once the channel's subscription is confirmed.

        With ``resume`` (an SSE client that came back with a ``Last-Event-ID``), it first gets every
        event after ``position`` that history holds (``None``: an id that could not be read, a gap),
        then the live ones, none twice. Cancelling the Deferred (the client left while waiting)
        withdraws the subscriber.
        """
        return self._group(server).attach(channel, subscriber, resume, position)

    def activate_early(self, server: Hashable, channel: bytes, subscriber: Subscriber) -> None:
        """Deliver to a subscriber still waiting for confirmation (its stream started without it)."""
        group = self.groups.get(server)
        if group is not None:
            ch = group.channels.get(channel)
            if ch is not None:
                ch.activate_early(subscriber)

    def detach(self, server: Hashable, channel: bytes, subscriber: Subscriber) -> None:
        """Remove a subscriber; the last one out releases the subscription, and the last channel (or
        pattern) out of a server that is not configured closes its transport."""
        group = self.groups.get(server)
        if group is None:
            return
        group.detach(channel, subscriber)
        self._release(server, group)

    def attach_pattern(
        self, server: Hashable, pattern: bytes, subscriber: Subscriber, own_ids: bool = True
    ) -> Deferred[None]:
        """Add a subscriber to the glob ``pattern`` (one ``PSUBSCRIBE`` per pattern, whatever the number
        of subscribers); the Deferred fires once it is confirmed. Live only: no history, no resume.

        ``own_ids``: events with ids keep their ``id:`` line; pass ``False`` for a subscriber whose
        ``id:`` is another's (a stream that also has channels: its last event id must stay theirs).
        """
        return self._group(server).attach_pattern(pattern, subscriber, own_ids)

    def activate_early_pattern(self, server: Hashable, pattern: bytes, subscriber: Subscriber) -> None:
        """Deliver a pattern's messages to a subscriber still waiting for its confirmation."""
        group = self.groups.get(server)
        if group is not None:
            p = group.patterns.get(pattern)
            if p is not None:
                p.activate_early(subscriber)

    def detach_pattern(self, server: Hashable, pattern: bytes, subscriber: Subscriber) -> None:
        """Remove a pattern's subscriber; the last one out PUNSUBSCRIBEs."""
        group = self.groups.get(server)
        if group is None:
            return
        group.detach_pattern(pattern, subscriber)
        self._release(server, group)

    def _release(self, server: Hashable, group: ChannelGroup) -> None:
        if not group.channels and not group.patterns and server not in self.configured:
            del self.groups[server]
            self._close(group)

    def _close(self, group: ChannelGroup) -> None:
        d = group.stop()
        self._closing.add(d)

        def done(result: None | Failure) -> None:
            self._closing.discard(d)
            if isinstance(result, Failure):
                log.failure("closing the transport of {server} failed", result, server=group.key)

        d.addBoth(done)

    def subscriber_count(self) -> int:
        """Subscriptions of subscribers: a stream counts once per channel and per pattern it holds."""
        return sum(len(ch) for g in self.groups.values() for ch in g.channels.values()) + sum(
            len(p) for g in self.groups.values() for p in g.patterns.values()
        )

    def channel_count(self) -> int:
        return sum(len(g.channels) for g in self.groups.values())

    def refused_count(self) -> int:
        """Channels and patterns whose subscription the server refuses now."""
        return sum(g.refused for g in self.groups.values())

    def stop(self) -> Deferred[None]:
        """Stop every transport (and wait for those already closing)."""
        groups, self.groups = list(self.groups.values()), {}
        pending: list[Deferred[Any]] = [g.stop() for g in groups]
        pending.extend(self._closing)
        d = gatherResults(pending, consumeErrors=True)
        return d.addCallback(lambda _: None)


def _conforms(group: ChannelGroup) -> TransportSink:
    return group
