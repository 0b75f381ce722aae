"""The hub: channels and fan-out, knowing neither HTTP nor Redis.

A ``Hub`` holds, per message server, one ``Transport`` and the channels subscribed through it. Each
channel is one subscription, shared by all of its subscribers: the transport is asked to subscribe when
the first subscriber arrives and to unsubscribe when the last leaves. When messages arrive, each batch
is framed once per mode and the same bytes go to every subscriber of the channel as one write.

Transports are pluggable (Redis pub/sub today; Redis Streams, Sentinel, Cluster later): anything that
implements ``ssebridge.interfaces.Transport`` and reports to the ``ChannelGroup`` it was built with,
a ``TransportSink``.

Servers the hub was told to ``connect`` are the configured ones: they stay open with no channel, and
they alone decide readiness. Any other server's transport is opened for its first channel and closed
with its last, so that requests cannot leave connections (and reconnect loops) behind.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssebridge.frames import comment, encode_batch, encode_raw
from ssebridge.hub.stats import Stats
from ssebridge.interfaces import Subscriber, Transport, TransportFactory, TransportSink

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "REFUSED_COMMENT", "Channel", "ChannelGroup", "Hub"]

log = Logger()

#: Messages larger than this are not delivered (logged and counted): 0 means no limit.
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024

#: What an SSE subscriber is told while the server refuses its channel's subscription.
REFUSED_COMMENT = comment(b"subscription refused by the message server, retrying")


class Channel:
    """One subscribed channel: its subscribers, and whether the subscription is confirmed.

    Subscribers that arrive before the subscription is confirmed wait in ``_waiting`` and are not sent
    anything: their response has not started, and a message that arrives before the confirmation was
    published before they could be promised it.
    """

    __slots__ = ("name", "confirmed", "refused", "stats", "_sse", "_raw", "_waiting")

    def __init__(self, name: bytes, stats: Stats) -> None:
        self.name = name
        self.stats = stats
        self.confirmed = False
        #: The server's error while it refuses the subscription, else ``None``.
        self.refused: str | None = None
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
        self.refused = None
        waiting, self._waiting = self._waiting, {}
        for subscriber in waiting:
            self._active_set(subscriber).add(subscriber)
        for d in waiting.values():
            d.callback(None)

    def refuse(self, error: str) -> None:
        """The server refused the subscription: say so to every started SSE subscriber.

        Raw subscribers are told nothing: their bytes belong to the publisher's own framing. Waiting
        subscribers have no response yet; they start with their own notice when their wait times out,
        and hear this at the next refusal.
        """
        self.refused = error
        for subscriber in tuple(self._sse):
            subscriber.send(REFUSED_COMMENT, 0)

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
    """The channels of one server, and the transport that feeds them: the transport's sink.

    The transport reports to the group (``TransportSink``): ``connection_up``/``connection_down``,
    ``subscribed`` when a subscription is confirmed, ``subscribe_failed`` when it is refused, and
    ``deliver`` with the messages that arrived together.
    """

    def __init__(
        self, key: Hashable, make_transport: TransportFactory, stats: Stats, max_message_size: int
    ) -> None:
        self.key = key
        self.stats = stats
        self.max_message_size = max_message_size
        self.channels: dict[bytes, Channel] = {}
        self.transport: Transport = make_transport(key, self)

    @property
    def refused(self) -> int:
        """How many of its channels the server refuses now."""
        return sum(1 for ch in self.channels.values() if ch.refused is not None)

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

    # TransportSink: called by the transport.

    def connection_up(self) -> None:
        self.stats.redis_connects += 1

    def connection_down(self) -> None:
        self.stats.redis_disconnects += 1
        # New subscribers wait for the resubscription to be confirmed; current ones stay attached and
        # receive again as soon as the transport has resubscribed.
        for ch in self.channels.values():
            ch.confirmed = False

    def subscribed(self, channel: bytes) -> None:
        ch = self.channels.get(channel)
        if ch is not None and not ch.confirmed:
            ch.confirm()

    def subscribe_failed(self, channel: bytes, error: str) -> None:
        self.stats.subscribe_refusals += 1
        ch = self.channels.get(channel)
        if ch is not None:
            ch.refuse(error)

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
        #: Servers opened with ``connect``: kept open without channels, and what readiness means.
        self.configured: set[Hashable] = set()
        # Transports of servers left without channels, while they close (``stop`` waits for them).
        self._closing: set[Deferred[None]] = set()

    def _group(self, server: Hashable) -> ChannelGroup:
        group = self.groups.get(server)
        if group is None:
            group = self.groups[server] = ChannelGroup(
                server, self._make_transport, self.stats, self.max_message_size
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
        """Remove a subscriber; the last one out releases the subscription, and the last channel out of
        a server that is not configured closes its transport."""
        group = self.groups.get(server)
        if group is None:
            return
        group.detach(channel, subscriber)
        if not group.channels and server not in self.configured:
            del self.groups[server]
            self._close(group)

    def _close(self, group: ChannelGroup) -> None:
        d = group.transport.stop()
        self._closing.add(d)

        def done(result: None | Failure) -> None:
            self._closing.discard(d)
            if isinstance(result, Failure):
                log.failure("closing the transport of {server} failed", result, server=group.key)

        d.addBoth(done)

    def subscriber_count(self) -> int:
        return sum(len(ch) for g in self.groups.values() for ch in g.channels.values())

    def channel_count(self) -> int:
        return sum(len(g.channels) for g in self.groups.values())

    def refused_count(self) -> int:
        """Channels whose subscription the server refuses now."""
        return sum(g.refused for g in self.groups.values())

    def stop(self) -> Deferred[None]:
        """Stop every transport (and wait for those already closing)."""
        groups, self.groups = list(self.groups.values()), {}
        pending: list[Deferred[Any]] = [g.transport.stop() for g in groups]
        pending.extend(self._closing)
        d = gatherResults(pending, consumeErrors=True)
        return d.addCallback(lambda _: None)


def _conforms(group: ChannelGroup) -> TransportSink:
    return group
