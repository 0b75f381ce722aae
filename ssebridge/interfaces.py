"""The seams between the bridge's parts, as ``typing.Protocol``s: what each side may rely on.

- ``Subscriber``: one client of a channel, as the hub delivers to it (``ssebridge.http.stream.Stream``).
- ``TransportSink``: what a transport reports to (the hub's ``ChannelGroup``): confirmations, refused
  subscriptions (of channels and of patterns), batches of messages (per channel, and per pattern
  with the channel each message came from), and the connection going up and down. A transport never touches
  the hub's channels or counters directly.
- ``Transport``: a message source for one server (``ssebridge.redis.pubsub.RedisTransport``; Sentinel
  and Cluster transports next). ``connected`` is the one answer to "is it up": readiness and the
  ``redis_connected`` gauge both read it, so they cannot disagree.
- ``History``: the optional capability of a transport whose server keeps each channel's past events
  (Redis Streams): read what came after an id, so a reconnecting client, or the bridge itself after a
  reconnect, catches up. The hub stays free of Redis: it only sees this interface.
- ``Upstream``: the app behind the bridge (``ssebridge.upstream``), re-exported from its home.

Each implementation is checked against its protocol where it is defined (``_conforms`` functions that
mypy type-checks), the way Mercure writes ``var _ Transport = (*BoltTransport)(nil)``.

May import: the standard library, ``twisted.internet.defer`` (for ``Deferred`` only), and
``ssebridge.publish.envelope`` (the id type). Nothing else of ssebridge, so every layer may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from twisted.internet.defer import Deferred

from ssebridge.publish.envelope import EventId

__all__ = [
    "History",
    "HistoryEvent",
    "HistoryUnavailable",
    "Replay",
    "Subscriber",
    "Transport",
    "TransportFactory",
    "TransportSink",
]


class Subscriber(Protocol):
    """One client of a channel, as the hub sees it."""

    #: ``"sse"`` gets WHATWG frames, ``"sseraw"`` the message bytes untouched.
    mode: str
    #: For a stream of several channels, where it is on each (its ``id:`` is the composite of them);
    #: ``None`` for a stream of one channel, whose ``id:`` is the event's own id, shared by every client.
    positions: dict[bytes, EventId | None] | None
    #: Events with no name of their own are named after their channel (``event: CHANNEL``).
    name_events: bool

    def send(self, data: bytes, count: int = 1) -> None:
        """Deliver already-framed bytes holding ``count`` events (0 for a comment or a hint).

        Must not raise: a client that cannot take the bytes detaches itself.
        """


class TransportSink(Protocol):
    """What a transport reports to. Every call is a fact about the server's connection."""

    def connection_up(self) -> None:
        """The server answered on a new connection (counted; readiness reads ``Transport.connected``)."""

    def connection_down(self) -> None:
        """The connection was lost: subscriptions are void until confirmed again."""

    def subscriptions_lost(self, names: Iterable[bytes], *, disconnected: bool = False) -> None:
        """The server dropped these subscriptions while the rest stay (a Redis Cluster node's connection
        lost, a slot migrated or failed over): each is void until ``subscribed`` again. ``disconnected``:
        they went with one of the transport's connections (counted as a lost Redis connection)."""

    def subscribed(self, channel: bytes) -> None:
        """The server confirmed the subscription to ``channel``."""

    def subscribe_failed(self, channel: bytes, error: str) -> None:
        """The server refused the subscription (``NOAUTH``, ``NOPERM``...); the transport retries."""

    def deliver(self, batch: Mapping[bytes, list[bytes]]) -> None:
        """Messages read together, per channel, in the order the server sent them."""

    def psubscribed(self, pattern: bytes) -> None:
        """The server confirmed the subscription to the glob ``pattern`` (``PSUBSCRIBE``)."""

    def psubscribe_failed(self, pattern: bytes, error: str) -> None:
        """The server refused the pattern's subscription; the transport retries, as for a channel."""

    def deliver_patterns(self, batch: Mapping[bytes, list[tuple[bytes, bytes]]]) -> None:
        """Pattern messages read together: per pattern, ``(channel, data)`` pairs in the server's
        order, ``channel`` being the one the message was published on (any bytes the publisher chose).

        A separate call from ``deliver`` because a pattern's messages carry their channel and a
        pattern's name lives apart from channels' (``room.*`` may be both). Runs of channel messages
        and of pattern messages are reported in the order they were read.
        """


class Transport(Protocol):
    """A message source for one server. Calls are requests; results come back to its sink."""

    @property
    def connected(self) -> bool:
        """Up: connected, and the server has answered on this connection."""

    def subscribe(self, channel: bytes) -> None:
        """Start (or, after a reconnect, restart) delivering ``channel``; idempotent."""

    def unsubscribe(self, channel: bytes) -> None:
        """Stop delivering ``channel``."""

    def psubscribe(self, pattern: bytes) -> None:
        """Start (or, after a reconnect, restart) delivering every channel matching the glob
        ``pattern``, through ``TransportSink.deliver_patterns``; idempotent."""

    def punsubscribe(self, pattern: bytes) -> None:
        """Stop delivering ``pattern``."""

    def stop(self) -> Deferred[None]:
        """Close the transport's connections for good."""


#: How the hub makes the transport of a server key, reporting to a sink.
TransportFactory = Callable[[Hashable, TransportSink], Transport]


class HistoryUnavailable(Exception):
    """A history read that could not be answered: the server is down, too slow, or refused the read.

    Every ``History`` read fails with this (the cause chained), never hangs: the caller decides
    whether to go live with a gap or to retry.
    """


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One past event of a channel, as its publisher wrote it (``b""`` where a field was not set)."""

    id: EventId
    data: bytes
    event: bytes = b""
    retry: bytes = b""


@dataclass(frozen=True, slots=True)
class Replay:
    """What history holds after a position.

    ``events`` are in id order: the oldest ones after the position, at most the read's limit.
    ``gap`` is ``None`` when they are everything published after the position; otherwise why not:

    - ``"evicted"``: something published after the position is no longer held (trimmed by count or
      age, or deleted). Without the ids of trimmed entries this is judged conservatively: a position
      older than the oldest entry held, in a stream that has lost entries, counts as evicted.
    - ``"unknown"``: the channel has no history (never had, expired, flushed), or its history began
      after the position and never lost an entry, so the position was never one of its ids (a
      history deleted and re-created). The position ``0-0`` (what ``Publisher.current_id`` gives a
      channel without history) is the start of every history: never a gap by itself.
    - ``"future"``: the position is newer than anything published (no events).
    - ``"truncated"``: no other gap, but history holds more than the limit after the position.

    ``more`` says the read stopped at its limit (whatever the gap): read again after the last of
    ``events`` to continue without loss.
    """

    events: Sequence[HistoryEvent]
    gap: str | None = None
    #: The newest id the channel's history knows of (``None``: no history); where live events resume.
    last_id: EventId | None = None
    #: History holds events after the last of ``events``.
    more: bool = False


@runtime_checkable
class History(Protocol):
    """A transport's record of each channel's past events (optional: check with ``isinstance``)."""

    def read_after(self, channel: bytes, position: EventId | None, limit: int) -> Deferred[Replay]:
        """The events of ``channel`` after ``position`` (``None``: only the newest id, no events).

        The answer is read from the server after this call was made (a read already on its way is
        never shared with a later caller), so a caller that starts buffering live events before it
        calls misses nothing in between. Concurrent calls with the same (channel, position, limit)
        share one such read. Failures are ``HistoryUnavailable``, within the implementation's deadline.
        Cancelling the returned Deferred affects no other caller.
        """

    def current_id(self, channel: bytes) -> Deferred[EventId | None]:
        """The newest id of ``channel``'s history, or ``None`` when it has none."""

    def stop(self) -> Deferred[None]:
        """Close the history's connections for good."""
