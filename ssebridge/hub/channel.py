"""One subscribed channel: its subscribers, their frames, and where the channel's ids stand.

A channel carries two kinds of messages: plain ones (``PUBLISH CHANNEL bytes``, framed as ``data:``
lines with no id, exactly as always) and events with ids (``publish.lua``'s envelopes on
``ssebridge:{CHANNEL}:e``, framed with ``id:``, ``event:`` and ``retry:``).

Subscribers come in three sets, so that the common case stays one shared frame for every client:

- ``_sse``: SSE streams of this one channel, with no naming: every client gets the same bytes;
- ``_raw``: ``sseraw`` streams: the messages' bytes (an event's data), untouched;
- ``_mux``: SSE streams of several channels (their ``id:`` is a composite of their positions) or that
  name events after their channel. Plain messages carry no id: they get one frame per naming. Events
  get one frame per group of subscribers at the same positions (see "Shared positions" below).

Every frame goes to its subscribers through one call of the fan-out loop (``ssebridge.fanout``): a
``send`` per client and nothing else, where the client can take it directly.

Shared positions: streams of the same channels that have been sent the same events are at the same
positions, and their events' composite ids are the same bytes. So they share one positions mapping
(``_Positions``, which counts its sharers): an event advances it once and is framed once for all of
them. Sharing is copy-on-write: a delivery that reaches only some of a mapping's sharers (others are
replaying, or were cut off) gives those a copy first, and a subscriber sent events on its own
(``send_events``: a replay, a trailing subscriber) gets a mapping of its own. Groups at equal
positions that are delivered together are merged, so streams that connected apart come to share.

A subscriber that resumes (it came with a ``Last-Event-ID``) is in ``_replaying`` while its history is
read: what arrives live meanwhile is held for it, and after the replay it gets the held items without
the events the replay already gave it, then joins its live set. The channel as a whole does the same
(``_held``) while it catches up after a reconnect or a hole in the ids. The reads themselves are the
group's (``ssebridge.hub.channels``), which owns the history.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed

from ssebridge.fanout import deliver as fan_out
from ssebridge.frames import comment, encode_batch, encode_event, encode_raw, gap
from ssebridge.hub.stats import Stats
from ssebridge.hub.subscription import Subscription
from ssebridge.interfaces import Subscriber
from ssebridge.publish.envelope import Envelope, EventId, format_id, format_position

__all__ = ["REFUSED_COMMENT", "Channel", "Cork", "Replayer", "frame_events", "frame_plain"]

#: What an SSE subscriber is told while the server refuses its channel's subscription.
REFUSED_COMMENT = comment(b"subscription refused by the message server, retrying")

#: What is held for a replaying subscriber: plain messages (``"m"``) or events (``"e"``), in order.
_Held = tuple[str, Sequence[bytes] | Sequence[Envelope]]


class Replayer(Protocol):
    """What a channel asks of its group: read history for one resuming subscriber."""

    def replay(self, channel: Channel, subscriber: Subscriber, position: EventId | None) -> None: ...


class Cork:
    """The frames of one read for streams of several channels, held until the read is delivered, then
    sent as one frame per group of streams that get the same frames (one ``send`` per stream per read).

    A read that carries messages of 16 channels would otherwise cost a stream of those 16 channels 16
    sends where a stream of one channel costs one. Streams of the same channels get the same frames in
    the same order, so the groups are few: they are found by splitting the streams by membership in each
    frame's targets (set operations, no Python call per stream). Each stream gets its frames in the
    order they were added; a channel's own order is never changed.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: list[tuple[bytes, int, set[Subscriber]]] = []

    def add(self, data: bytes, count: int, targets: set[Subscriber]) -> None:
        """Hold ``data`` (``count`` events) for ``targets`` (a set of the cork's own)."""
        if targets:
            self._held.append((data, count, targets))

    def flush(self) -> None:
        """Send what is held: one frame per group of streams that share their frames."""
        held, self._held = self._held, []
        if not held:
            return
        if len(held) == 1:
            data, count, targets = held[0]
            fan_out(data, count, tuple(targets))
            return
        groups: list[tuple[set[Subscriber], list[int]]] = [(held[0][2], [0])]
        for i in range(1, len(held)):
            targets = held[i][2]
            left = set(targets)
            split: list[tuple[set[Subscriber], list[int]]] = []
            for members, frames in groups:
                if members <= targets:
                    split.append((members, [*frames, i]))
                    left -= members
                    continue
                inside = members & targets
                if not inside:
                    split.append((members, frames))
                    continue
                left -= inside
                split.append((members - inside, frames))
                split.append((inside, [*frames, i]))
            if left:
                split.append((left, [i]))
            groups = split
        for members, frames in groups:
            if len(frames) == 1:
                data, count = held[frames[0]][0], held[frames[0]][1]
            else:
                data = b"".join([held[f][0] for f in frames])
                count = sum(held[f][1] for f in frames)
            fan_out(data, count, tuple(members))


class _Positions(dict[bytes, EventId | None]):
    """A positions mapping that several subscribers may share; ``sharers`` never undercounts them
    (a subscriber that leaves is not subtracted: the next delivery splits the rest off, once)."""

    __slots__ = ("sharers",)

    def __init__(self, items: Any, sharers: int) -> None:
        super().__init__(items)
        self.sharers = sharers


def _own_positions(subscriber: Subscriber) -> dict[bytes, EventId | None] | None:
    """``subscriber``'s positions, made its own first if they are shared (about to change alone)."""
    positions = subscriber.positions
    if isinstance(positions, _Positions) and positions.sharers > 1:
        positions.sharers -= 1
        positions = subscriber.positions = dict(positions)
    return positions


def frame_events(events: Sequence[Envelope]) -> bytes:
    """Events with their own ids, framed once for every single-channel SSE client."""
    return b"".join([encode_event(e.data, format_id(e.id).encode(), e.event, e.retry) for e in events])


def frame_plain(messages: Sequence[bytes], name: bytes = b"") -> bytes:
    """Plain messages (no ids), named ``event: NAME`` when a name is given (``name_events``)."""
    if not name:
        return encode_batch(messages)
    return b"".join([encode_event(m, event=name) for m in messages])


class Channel(Subscription):
    """One subscribed channel (see the module's docstring)."""

    __slots__ = (
        "ever_confirmed",
        "last_id",
        "known_id",
        "replayer",
        "replays",
        "_sse",
        "_raw",
        "_mux",
        "_waiting",
        "_resume",
        "_replaying",
        "_trailing",
        "_held",
    )

    def __init__(self, name: bytes, names: tuple[bytes, ...], stats: Stats, replayer: Replayer) -> None:
        # Its transport names: the channel, and its envelope channel.
        super().__init__(name, names, stats)
        self.replayer = replayer
        #: Finished replays by position, for clients coming back from the same id (``hub.replay``).
        self.replays: dict[EventId, Any] = {}
        #: Whether it was ever confirmed: a confirmation after that follows a reconnect.
        self.ever_confirmed = False
        #: The newest id delivered live: what later live events are checked against (none twice).
        self.last_id: EventId | None = None
        #: The newest id history held when the channel was subscribed, before anything was delivered:
        #: where a catch-up starts when nothing was. Never used to drop a live event: one published
        #: before that read may still be on its way on the other connection.
        self.known_id: EventId | None = None
        self._sse: set[Subscriber] = set()
        self._raw: set[Subscriber] = set()
        self._mux: set[Subscriber] = set()
        self._waiting: dict[Subscriber, Deferred[None]] = {}
        self._resume: dict[Subscriber, EventId | None] = {}
        self._replaying: dict[Subscriber, list[_Held]] = {}
        # Replayed subscribers whose replay reached further than the live events have yet: live events
        # up to that id (read by the replay, still on their way on the subscriber connection) are not
        # sent them again. They join their live set once the live events pass it.
        self._trailing: dict[Subscriber, EventId] = {}
        #: Events that arrived live while the channel catches up from history, else ``None``.
        self._held: list[Envelope] | None = None

    def __len__(self) -> int:
        return (
            len(self._sse)
            + len(self._raw)
            + len(self._mux)
            + len(self._waiting)
            + len(self._replaying)
            + len(self._trailing)
        )

    def _live_set(self, subscriber: Subscriber) -> set[Subscriber]:
        if subscriber.mode == "sseraw":
            return self._raw
        if subscriber.positions is not None or subscriber.name_events:
            return self._mux
        return self._sse

    # Subscribers.

    def add(
        self, subscriber: Subscriber, resume: bool = False, position: EventId | None = None
    ) -> Deferred[None]:
        """Add ``subscriber``; the Deferred fires once the subscription is confirmed.

        With ``resume``, the subscriber first gets what history holds after ``position`` (``None``: an
        id that could not be read, reported as a gap).
        """
        if resume and subscriber.mode == "sse":
            self._resume[subscriber] = position
        if self.confirmed:
            self._activate(subscriber)
            return succeed(None)

        def withdraw(_: Deferred[None]) -> None:
            self._waiting.pop(subscriber, None)
            self._resume.pop(subscriber, None)

        d: Deferred[None] = Deferred(withdraw)
        self._waiting[subscriber] = d
        return d

    def _activate(self, subscriber: Subscriber) -> None:
        if subscriber in self._resume:
            self._replaying[subscriber] = []
            self.replayer.replay(self, subscriber, self._resume.pop(subscriber))
        else:
            self._live_set(subscriber).add(subscriber)

    def activate_early(self, subscriber: Subscriber) -> None:
        """Let a waiting subscriber receive messages before confirmation (its stream has started).

        The server is not answering, so neither is its history: a subscriber that asked to resume is
        told of a gap instead.
        """
        if self._waiting.pop(subscriber, None) is not None:
            if self._resume.pop(subscriber, False) is not False:
                subscriber.send(gap([self.name], "unavailable"), 0)
            self._live_set(subscriber).add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        self._sse.discard(subscriber)
        self._raw.discard(subscriber)
        self._mux.discard(subscriber)
        self._resume.pop(subscriber, None)
        self._replaying.pop(subscriber, None)
        self._trailing.pop(subscriber, None)
        waiting = self._waiting.pop(subscriber, None)
        if waiting is not None and not waiting.called:
            waiting.cancel()

    # The subscription.

    def confirm(self, name: bytes) -> bool:
        """The server confirmed ``name``; returns whether the channel just became confirmed."""
        if not self.confirm_name(name):
            return False
        self.ever_confirmed = True
        waiting, self._waiting = self._waiting, {}
        # Activate before the callbacks: a callback may close its stream at once (a HEAD request),
        # and its removal must find it where it was put.
        for subscriber in waiting:
            self._activate(subscriber)
        for d in waiting.values():
            d.callback(None)
        return True

    def unconfirm(self) -> None:
        """The connection was lost: confirm again, and read history anew for resuming clients (what
        was published meanwhile is known only once the catch-up has read it)."""
        super().unconfirm()
        self.replays.clear()

    def refuse(self, error: str) -> None:
        """The server refused the subscription: say so to every started SSE subscriber.

        Raw subscribers are told nothing: their bytes belong to the publisher's own framing. Waiting
        subscribers have no response yet; they start with their own notice when their wait times out,
        and hear this at the next refusal.
        """
        self.refused = error
        for subscriber in (*self._sse, *self._mux):
            subscriber.send(REFUSED_COMMENT, 0)

    # Delivery.

    def deliver(self, messages: list[bytes], cork: Cork | None = None) -> None:
        """Plain messages (no ids): one shared frame per mode. With a ``cork``, the frames for streams of
        several channels wait in it for the rest of the read (see ``Cork``)."""
        stats = self.stats
        n = len(messages)
        for held in self._replaying.values():
            held.append(("m", messages))
        if self._trailing and cork is not None:
            cork.flush()  # what a trailing stream is sent now must not pass what it was sent before
        for subscriber in tuple(self._trailing):
            self._send_plain_one(subscriber, messages)
        # Snapshot the sets: a subscriber's send may detach it (a slow client cut off).
        if self._sse or self._mux:
            data = encode_batch(messages)
            reached = len(self._sse) + len(self._mux)
            if self._sse:
                fan_out(data, n, tuple(self._sse))
            if self._mux:
                plain = {s for s in self._mux if not s.name_events}
                named = self._mux - plain
                if cork is None:
                    fan_out(data, n, tuple(plain))
                    if named:
                        fan_out(frame_plain(messages, self.name), n, tuple(named))
                else:
                    cork.add(data, n, plain)
                    if named:
                        cork.add(frame_plain(messages, self.name), n, named)
            stats.frames_delivered += reached * n
            stats.bytes_delivered += reached * len(data)
        if self._raw:
            raw = encode_raw(messages)
            if not raw:
                # Raw mode adds nothing to empty messages; an empty chunk would end the response.
                return
            raw_targets = tuple(self._raw)
            fan_out(raw, n, raw_targets)
            stats.frames_delivered += len(raw_targets) * n
            stats.bytes_delivered += len(raw_targets) * len(raw)

    def fresh(self, events: Sequence[Envelope]) -> list[Envelope]:
        """``events`` without those already delivered (a live event the catch-up also read)."""
        last = self.last_id
        return list(events) if last is None else [e for e in events if e.id > last]

    def hole_at(self, events: Sequence[Envelope]) -> int | None:
        """The index of the first event whose predecessor in history was never delivered, if any."""
        last = self.last_id if self.last_id is not None else self.known_id
        for i, e in enumerate(events):
            if last is not None and e.previous is not None and e.previous > last:
                return i
            last = e.id
        return None

    def deliver_events(self, events: Sequence[Envelope], cork: Cork | None = None) -> None:
        """Events with ids, in id order, none delivered before (``fresh``). With a ``cork``, the frames
        for streams of several channels wait in it for the rest of the read (see ``Cork``)."""
        if not events:
            return
        if self._trailing and cork is not None:
            cork.flush()  # what a trailing stream is sent now must not pass what it was sent before
        self.last_id = events[-1].id
        for held in self._replaying.values():
            held.append(("e", events))
        stats = self.stats
        n = len(events)
        if self._sse:
            data = frame_events(events)
            targets = tuple(self._sse)
            fan_out(data, n, targets)
            stats.frames_delivered += len(targets) * n
            stats.bytes_delivered += len(targets) * len(data)
        if self._mux:
            self._deliver_mux(events, cork)
        if self._raw:
            raw = encode_raw([e.data for e in events])
            if raw:
                raw_targets = tuple(self._raw)
                fan_out(raw, n, raw_targets)
                stats.frames_delivered += len(raw_targets) * n
        # Last: a trailing subscriber that joins its live set here must not get this batch again.
        if self._trailing:
            self._overtake(events)

    def _overtake(self, events: Sequence[Envelope]) -> None:
        """Live events to trailing subscribers: those past each one's replay; a subscriber the live
        events have caught up with joins its live set."""
        newest = events[-1].id
        for subscriber, floor in tuple(self._trailing.items()):
            newer = [e for e in events if e.id > floor]
            if newer:
                self._send_one(subscriber, newer)
            if newest >= floor:
                del self._trailing[subscriber]
                self._live_set(subscriber).add(subscriber)

    def _deliver_mux(self, events: Sequence[Envelope], cork: Cork | None = None) -> None:
        """Live events to the ``_mux`` set: one frame per group of subscribers at the same positions
        with the same naming (see "Shared positions" in the module's docstring)."""
        groups: dict[tuple[int, bool], list[Subscriber]] = {}
        for subscriber in self._mux:
            key = (id(subscriber.positions), subscriber.name_events)
            members = groups.get(key)
            if members is None:
                groups[key] = [subscriber]
            else:
                members.append(subscriber)
        # Groups at equal positions (and naming), each delivered in full: merged into one.
        merged: dict[tuple[Any, bool], tuple[dict[bytes, EventId | None], list[Subscriber]]] = {}
        frames: list[tuple[dict[bytes, EventId | None] | None, bool, list[Subscriber]]] = []
        for (_, named), members in groups.items():
            positions = members[0].positions
            if positions is None:
                frames.append((None, named, members))
                continue
            sharers = positions.sharers if isinstance(positions, _Positions) else 1
            if sharers > len(members) and isinstance(positions, _Positions):
                # Some of its sharers are not being sent this (replaying, say): these split off.
                positions.sharers -= len(members)
                positions = _Positions(positions, len(members))
                for subscriber in members:
                    subscriber.positions = positions
            content = (tuple(positions.items()), named)
            found = merged.get(content)
            if found is None:
                merged[content] = (positions, members)
                continue
            shared, others = found
            if not isinstance(shared, _Positions):
                shared = _Positions(shared, len(others))
                for subscriber in others:
                    subscriber.positions = shared
                merged[content] = (shared, others)
            shared.sharers += len(members)
            others.extend(members)
            for subscriber in members:
                subscriber.positions = shared
        for (_, named), (positions, members) in merged.items():
            frames.append((positions, named, members))
        n = len(events)
        stats = self.stats
        for positions, named, members in frames:
            data = self._frame_positioned(events, positions, named)
            if cork is None:
                fan_out(data, n, members)
            else:
                cork.add(data, n, set(members))
            stats.frames_delivered += len(members) * n
            stats.bytes_delivered += len(members) * len(data)

    def _frame_positioned(
        self, events: Sequence[Envelope], positions: dict[bytes, EventId | None] | None, named: bool
    ) -> bytes:
        """``events`` framed for subscribers at ``positions`` (advanced here), named or not."""
        parts = []
        for e in events:
            event = e.event or (self.name if named else b"")
            if positions is not None:
                positions[self.name] = e.id
                ident = format_position(positions).encode()
            else:
                ident = format_id(e.id).encode()
            parts.append(encode_event(e.data, ident, event, e.retry))
        return b"".join(parts)

    def send_events(self, subscriber: Subscriber, events: Sequence[Envelope]) -> None:
        """Events to one subscriber that has its own ``id:`` (several channels) or names events."""
        data = self._frame_positioned(events, _own_positions(subscriber), subscriber.name_events)
        subscriber.send(data, len(events))
        self.stats.frames_delivered += len(events)
        self.stats.bytes_delivered += len(data)

    def send_gap(self, reason: str, subscribers: Sequence[Subscriber] | None = None) -> None:
        """Tell SSE subscribers (all of them, or those given) that events were missed."""
        frame = gap([self.name], reason)
        everyone = (*self._sse, *self._mux, *self._trailing)
        for subscriber in subscribers if subscribers is not None else everyone:
            subscriber.send(frame, 0)

    # Catching up (the group reads; the channel holds and releases).

    def hold(self, events: Sequence[Envelope] = ()) -> None:
        """Hold live events from now on (a catch-up read is under way)."""
        if self._held is None:
            self._held = list(events)
        else:
            self._held.extend(events)

    @property
    def holding(self) -> bool:
        return self._held is not None

    def release(self, replayed: Sequence[Envelope]) -> None:
        """The catch-up read answered: deliver what it found, then what was held, once each."""
        held, self._held = self._held or [], None
        self.deliver_events(self.fresh(replayed))
        self.deliver_events(self.fresh(held))

    def replayed(
        self,
        subscriber: Subscriber,
        events: Sequence[Envelope],
        gap_reason: str | None,
        frame: bytes | None = None,
    ) -> None:
        """A resuming subscriber's history arrived: the gap notice, the events, what was held, then live.

        ``frame`` is ``frame_events(events)`` when the caller has it already: every single-channel
        client resuming from the same read shares it.
        """
        held = self._replaying.pop(subscriber, None)
        if held is None:
            return  # it left meanwhile
        if gap_reason is not None:
            self.send_gap(gap_reason, [subscriber])
        last = events[-1].id if events else None
        if events:
            self._send_one(subscriber, events, frame)
        for kind, items in held:
            if kind == "m":
                self._send_plain_one(subscriber, items)  # type: ignore[arg-type]
                continue
            newer = [e for e in items if last is None or e.id > last]  # type: ignore[union-attr]
            if newer:
                self._send_one(subscriber, newer)  # type: ignore[arg-type]
                last = newer[-1].id  # type: ignore[union-attr]
        if last is not None and (self.last_id is None or self.last_id < last):
            # History answered on its own connection, ahead of the live events: some it read may
            # still arrive live. Until they have, this subscriber is sent only what is newer.
            self._trailing[subscriber] = last
        else:
            self._live_set(subscriber).add(subscriber)

    def _send_one(
        self, subscriber: Subscriber, events: Sequence[Envelope], frame: bytes | None = None
    ) -> None:
        if subscriber.positions is not None or subscriber.name_events:
            self.send_events(subscriber, events)
        else:
            data = frame if frame is not None else frame_events(events)
            fan_out(data, len(events), (subscriber,))
            self.stats.frames_delivered += len(events)
            self.stats.bytes_delivered += len(data)

    def _send_plain_one(self, subscriber: Subscriber, messages: Sequence[bytes]) -> None:
        subscriber.send(frame_plain(messages, self.name if subscriber.name_events else b""), len(messages))
