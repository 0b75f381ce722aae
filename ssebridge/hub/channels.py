"""The hub: channels and fan-out, knowing neither HTTP nor Redis.

A ``Hub`` holds, per message server, one ``Transport`` and the channels subscribed through it. Each
channel is one subscription, shared by all of its subscribers: the transport is asked to subscribe when
the first subscriber arrives and to unsubscribe when the last leaves. When messages arrive, each batch
is framed once per mode and the same bytes go to every subscriber of the channel as one write.

Transports are pluggable (Redis pub/sub today; Redis Streams, Sentinel, Cluster later): anything with
``subscribe``/``unsubscribe``/``stop`` that reports back to the ``ChannelGroup`` it was built with.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Protocol

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger

from ssebridge.frames import encode_batch, encode_raw
from ssebridge.hub.stats import Stats

log = Logger()


class Subscriber(Protocol):
    """One client of a channel, as the hub sees it."""

    #: ``"sse"`` gets WHATWG frames, ``"sseraw"`` the message bytes untouched.
    mode: str

    def send(self, data: bytes, count: int = 1) -> None:
        """Deliver already-framed bytes holding ``count`` events; must not raise (a failing client
        detaches itself)."""


class Transport(Protocol):
    """A message source for one server. Calls are requests; results come back to its group."""

    def subscribe(self, channel: bytes) -> None:
        """Start (or, after a reconnect, restart) delivering ``channel``; idempotent."""

    def unsubscribe(self, channel: bytes) -> None:
        """Stop delivering ``channel``."""

    def stop(self) -> Deferred[None]:
        """Close the transport's connections for good."""


#: Messages larger than this are not delivered (logged and counted): 0 means no limit.
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024

TransportFactory = Callable[[Hashable, "ChannelGroup"], Transport]


class Channel:
    """One subscribed channel: its subscribers, and whether the subscription is confirmed.

    Subscribers that arrive before the subscription is confirmed wait in ``_waiting`` and are not sent
    anything: their response has not started, and a message that arrives before the confirmation was
    published before they could be promised it.
    """

    __slots__ = ("name", "confirmed", "stats", "_sse", "_raw", "_waiting")

    def __init__(self, name: bytes, stats: Stats) -> None:
        self.name = name
        self.stats = stats
        self.confirmed = False
        self._sse: set[Subscriber] = set()
        self._raw: set[Subscriber] = set()
        self._waiting: dict[Subscriber, Deferred[None]] = {}

    def __len__(self) -> int:
        return len(self._sse) + len(self._raw) + len(self._waiting)

    def _active_set(self, subscriber: Subscriber) -> set[Subscriber]:
        return self._raw if subscriber.mode == "sseraw" else self._sse

    def add(self, subscriber: Subscriber) -> Deferred[None]:
        if self.confirmed:
            self._active_set(subscriber).add(subscriber)
            return succeed(None)
        def withdraw(_: Deferred[None]) -> None:
            self._waiting.pop(subscriber, None)

        d: Deferred[None] = Deferred(withdraw)
        self._waiting[subscriber] = d
        return d

    def activate_early(self, subscriber: Subscriber) -> None:
        """Let a waiting subscriber receive messages before confirmation (its stream has started)."""
        if self._waiting.pop(subscriber, None) is not None:
            self._active_set(subscriber).add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        self._sse.discard(subscriber)
        self._raw.discard(subscriber)
        waiting = self._waiting.pop(subscriber, None)
        if waiting is not None and not waiting.called:
            waiting.cancel()

    def confirm(self) -> None:
        self.confirmed = True
        waiting, self._waiting = self._waiting, {}
        for subscriber in waiting:
            self._active_set(subscriber).add(subscriber)
        for d in waiting.values():
            d.callback(None)

    def deliver(self, messages: list[bytes]) -> None:
        # Snapshot the sets: a subscriber's send may detach it (a slow client cut off).
        stats = self.stats
        if self._sse:
            data = encode_batch(messages)
            targets = tuple(self._sse)
            n = len(messages)
            for subscriber in targets:
                subscriber.send(data, n)
            stats.frames_delivered += len(targets) * len(messages)
            stats.bytes_delivered += len(targets) * len(data)
        if self._raw:
            data = encode_raw(messages)
            if not data:
                # Raw mode adds nothing to empty messages; an empty chunk would end the response.
                return
            targets = tuple(self._raw)
            n = len(messages)
            for subscriber in targets:
                subscriber.send(data, n)
            stats.frames_delivered += len(targets) * len(messages)
            stats.bytes_delivered += len(targets) * len(data)


class ChannelGroup:
    """The channels of one server, and the transport that feeds them.

    The transport reports to the group: ``subscribed`` when a subscription is confirmed, ``deliver``
    with the messages that arrived together, ``disconnected`` when its connection is lost.
    """

    def __init__(
        self, key: Hashable, make_transport: TransportFactory, stats: Stats, max_message_size: int
    ) -> None:
        self.key = key
        self.stats = stats
        self.max_message_size = max_message_size
        self.channels: dict[bytes, Channel] = {}
        self.transport = make_transport(key, self)

    def attach(self, channel: bytes, subscriber: Subscriber) -> Deferred[None]:
        ch = self.channels.get(channel)
        if ch is None:
            ch = self.channels[channel] = Channel(channel, self.stats)
            self.transport.subscribe(channel)
        return ch.add(subscriber)

    def detach(self, channel: bytes, subscriber: Subscriber) -> None:
        ch = self.channels.get(channel)
        if ch is None:
            return
        ch.remove(subscriber)
        if not len(ch):
            del self.channels[channel]
            self.transport.unsubscribe(channel)

    # Called by the transport.

    def subscribed(self, channel: bytes) -> None:
        ch = self.channels.get(channel)
        if ch is not None and not ch.confirmed:
            ch.confirm()

    def deliver(self, batch: Mapping[bytes, list[bytes]]) -> None:
        channels = self.channels
        limit = self.max_message_size
        stats = self.stats
        for name, messages in batch.items():
            stats.messages_received += len(messages)
            ch = channels.get(name)
            if ch is None:
                continue
            if limit and any(len(m) > limit for m in messages):
                messages = self._drop_oversize(name, messages)
                if not messages:
                    continue
            ch.deliver(messages)

    def _drop_oversize(self, name: bytes, messages: list[bytes]) -> list[bytes]:
        kept = []
        for m in messages:
            if len(m) > self.max_message_size:
                self.stats.messages_oversize += 1
                log.warn(
                    "message of {size} bytes on {channel!r} is over the limit of {limit}; not delivered",
                    size=len(m),
                    channel=name,
                    limit=self.max_message_size,
                )
            else:
                kept.append(m)
        return kept

    def disconnected(self) -> None:
        # New subscribers wait for the resubscription to be confirmed; current ones stay attached and
        # receive again as soon as the transport has resubscribed.
        for ch in self.channels.values():
            ch.confirmed = False

    def live_channels(self) -> Iterable[bytes]:
        return list(self.channels)


class Hub:
    """Every channel of this process, grouped by server; one transport per server, made on demand."""

    def __init__(
        self,
        make_transport: TransportFactory,
        stats: Stats | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._make_transport = make_transport
        self.stats = stats if stats is not None else Stats()
        self.max_message_size = max_message_size
        self.groups: dict[Hashable, ChannelGroup] = {}

    def _group(self, server: Hashable) -> ChannelGroup:
        group = self.groups.get(server)
        if group is None:
            group = self.groups[server] = ChannelGroup(
                server, self._make_transport, self.stats, self.max_message_size
            )
        return group

    def connect(self, server: Hashable) -> None:
        """Open the transport for ``server`` ahead of the first subscriber."""
        self._group(server)

    def connected(self) -> bool:
        """Whether every transport reports a live connection (what readiness means)."""
        return all(getattr(g.transport, "connected", True) for g in self.groups.values())

    def attach(self, server: Hashable, channel: bytes, subscriber: Subscriber) -> Deferred[None]:
        """Add a subscriber; the Deferred fires once the channel's subscription is confirmed.

        Cancelling the Deferred (the client left while waiting) withdraws the subscriber.
        """
        return self._group(server).attach(channel, subscriber)

    def activate_early(self, server: Hashable, channel: bytes, subscriber: Subscriber) -> None:
        """Deliver to a subscriber still waiting for confirmation (its stream started without it)."""
        group = self.groups.get(server)
        if group is not None:
            ch = group.channels.get(channel)
            if ch is not None:
                ch.activate_early(subscriber)

    def detach(self, server: Hashable, channel: bytes, subscriber: Subscriber) -> None:
        """Remove a subscriber; the last one out releases the subscription."""
        group = self.groups.get(server)
        if group is not None:
            group.detach(channel, subscriber)

    def subscriber_count(self) -> int:
        return sum(len(ch) for g in self.groups.values() for ch in g.channels.values())

    def channel_count(self) -> int:
        return sum(len(g.channels) for g in self.groups.values())

    def stop(self) -> Deferred[None]:
        """Stop every transport."""
        groups, self.groups = list(self.groups.values()), {}
        d = gatherResults([g.transport.stop() for g in groups], consumeErrors=True)
        return d.addCallback(lambda _: None)
