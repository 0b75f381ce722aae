"""Pattern subscriptions (Redis ``PSUBSCRIBE``): one per (server, pattern), whatever the number of streams.

A pattern is live only: no history, no replay, no catch-up after a reconnect. Its messages come from
whichever channels match it, so each carries its channel, which may be any bytes a publisher chose.

A pattern ``P`` is subscribed under two names, as a channel is: ``P`` itself (plain ``PUBLISH``es on
matching channels) and ``ssebridge:{P}:e`` (``publish.lua``'s envelopes of matching channels: ``{`` and
``}`` are literal in a glob, so ``ssebridge:{room.*}:e`` matches ``ssebridge:{room.1}:e`` exactly when
``room.*`` matches ``room.1``). Envelope channels are internal: a message that ``P`` itself matched on
an envelope channel (``*`` matches ``ssebridge:{news}:e``) is dropped, never shown as plain bytes; the
envelope name delivers it, decoded, when its channel matches ``P``.

Framing, per subscriber (each variant built once per batch and shared):

- events keep their ``id:`` only on a stream of patterns alone (``own_ids``): it tells the page the
  event's id, though a pattern cannot resume. On a stream that also has channels, a pattern's event has
  no ``id:`` line, so the browser's last event id stays the channels' position, what resumes them;
- with ``name_events``, an event (or plain message) with no name of its own is named after its
  channel, with CR, LF and NUL percent-encoded (``%0D``, ``%0A``, ``%00``): such bytes would end the
  ``event:`` line and forge fields. Every other byte is left as is, so a name is the same as a channel
  route's ``event: CHANNEL`` for any channel a route can name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from ssebridge.frames import encode_batch, encode_event, encode_raw
from ssebridge.hub.channel import REFUSED_COMMENT, frame_events
from ssebridge.hub.stats import Stats
from ssebridge.hub.subscription import Subscription
from ssebridge.interfaces import Subscriber, Transport
from ssebridge.logs import printable
from ssebridge.publish.envelope import (
    Envelope,
    MalformedEnvelope,
    decode_envelope,
    envelope_channel,
    format_id,
)

__all__ = ["Pattern", "PatternGroup", "channel_of_envelope", "event_name"]

log = Logger()

#: What an envelope channel's name is made of around its channel: ``ssebridge:{`` and ``}:e``.
_PREFIX, _SUFFIX = envelope_channel(b"\x00").split(b"\x00")
_UNSAFE = {b"\r": b"%0D", b"\n": b"%0A", b"\x00": b"%00"}

#: A subscriber's frame variant: ``(own_ids, named)`` for SSE, ``None`` for raw.
_Variant = tuple[bool, bool] | None


def event_name(channel: bytes) -> bytes:
    """``channel`` as an ``event:`` name: CR, LF and NUL percent-encoded, every other byte kept."""
    if b"\r" in channel or b"\n" in channel or b"\x00" in channel:
        for raw, safe in _UNSAFE.items():
            channel = channel.replace(raw, safe)
    return channel


def channel_of_envelope(name: bytes) -> bytes | None:
    """The channel whose envelope channel is ``name`` (``ssebridge:{C}:e`` -> ``C``), else ``None``."""
    if len(name) >= len(_PREFIX) + len(_SUFFIX) and name.startswith(_PREFIX) and name.endswith(_SUFFIX):
        return name[len(_PREFIX) : -len(_SUFFIX)]
    return None


class Pattern(Subscription):
    """One subscribed pattern: its subscribers, per frame variant, and its confirmation."""

    __slots__ = ("_sets", "_waiting")

    def __init__(self, name: bytes, stats: Stats) -> None:
        # Its transport names: the pattern, and its envelope form.
        super().__init__(name, (name, envelope_channel(name)), stats)
        self._sets: dict[_Variant, set[Subscriber]] = {}
        # Subscribers waiting for confirmation, with their variant.
        self._waiting: dict[Subscriber, tuple[_Variant, Deferred[None]]] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self._sets.values()) + len(self._waiting)

    # Subscribers.

    def add(self, subscriber: Subscriber, own_ids: bool = True) -> Deferred[None]:
        """Add ``subscriber``; the Deferred fires once the pattern is confirmed."""
        variant: _Variant = None if subscriber.mode == "sseraw" else (own_ids, subscriber.name_events)
        if self.confirmed:
            self._sets.setdefault(variant, set()).add(subscriber)
            return succeed(None)

        def withdraw(_: Deferred[None]) -> None:
            self._waiting.pop(subscriber, None)

        d: Deferred[None] = Deferred(withdraw)
        self._waiting[subscriber] = (variant, d)
        return d

    def activate_early(self, subscriber: Subscriber) -> None:
        """Deliver to a waiting subscriber before confirmation (its stream has started)."""
        waiting = self._waiting.pop(subscriber, None)
        if waiting is not None:
            self._sets.setdefault(waiting[0], set()).add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        for members in self._sets.values():
            members.discard(subscriber)
        waiting = self._waiting.pop(subscriber, None)
        if waiting is not None and not waiting[1].called:
            waiting[1].cancel()

    # The subscription.

    def confirm(self, name: bytes) -> bool:
        """The server confirmed ``name``; returns whether the pattern just became confirmed."""
        if not self.confirm_name(name):
            return False
        waiting, self._waiting = self._waiting, {}
        # Placed before the callbacks fire: a callback may close its stream at once (HEAD).
        for subscriber, (variant, _) in waiting.items():
            self._sets.setdefault(variant, set()).add(subscriber)
        for _, d in waiting.values():
            d.callback(None)
        return True

    def refuse(self, error: str) -> None:
        """The server refused it: every started SSE subscriber is told (raw ones are not)."""
        self.refused = error
        for variant, members in self._sets.items():
            if variant is not None:
                for subscriber in tuple(members):
                    subscriber.send(REFUSED_COMMENT, 0)

    # Delivery.

    def deliver(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        """Plain messages, ``(channel, data)``, in order: one frame per variant, shared."""
        n = len(pairs)
        frames: dict[bool | None, bytes] = {}
        for variant, members in self._sets.items():
            if not members:
                continue
            key = None if variant is None else variant[1]
            data = frames.get(key)
            if data is None:
                if key is None:
                    data = encode_raw([d for _, d in pairs])
                elif key:
                    data = b"".join([encode_event(d, event=event_name(c)) for c, d in pairs])
                else:
                    data = encode_batch([d for _, d in pairs])
                frames[key] = data
            self._send_all(members, data, n)

    def deliver_events(self, pairs: Sequence[tuple[bytes, Envelope]]) -> None:
        """Events with ids, ``(channel, event)``, in order: one frame per variant, shared."""
        n = len(pairs)
        for variant, members in self._sets.items():
            if not members:
                continue
            if variant is None:
                data = encode_raw([e.data for _, e in pairs])
            elif variant == (True, False):
                data = frame_events([e for _, e in pairs])
            else:
                own_ids, named = variant
                data = b"".join(
                    [
                        encode_event(
                            e.data,
                            format_id(e.id).encode() if own_ids else b"",
                            e.event or (event_name(c) if named else b""),
                            e.retry,
                        )
                        for c, e in pairs
                    ]
                )
            self._send_all(members, data, n)

    def _send_all(self, members: set[Subscriber], data: bytes, n: int) -> None:
        if not data:
            # Raw mode adds nothing to empty messages; an empty chunk would end the response.
            return
        # A snapshot: a subscriber's send may detach it (a slow client cut off).
        targets = tuple(members)
        for subscriber in targets:
            subscriber.send(data, n)
        self.stats.frames_delivered += len(targets) * n
        self.stats.bytes_delivered += len(targets) * len(data)


class PatternGroup:
    """The pattern half of a ``ChannelGroup`` (a mixin): attach and detach, and the sink's reports.

    The group calls ``_init_patterns`` before making its transport.
    """

    transport: Transport
    stats: Stats
    max_message_size: int
    if TYPE_CHECKING:
        patterns: dict[bytes, Pattern]
        _pattern_names: dict[bytes, tuple[Pattern, bool]]

    def _init_patterns(self) -> None:
        self.patterns = {}
        # Each transport pattern name to its pattern, and whether it is the envelope form.
        self._pattern_names = {}

    def attach_pattern(self, pattern: bytes, subscriber: Subscriber, own_ids: bool = True) -> Deferred[None]:
        p = self.patterns.get(pattern)
        if p is None:
            p = self.patterns[pattern] = Pattern(pattern, self.stats)
            plain, envelope = p.names
            self._pattern_names[plain] = (p, False)
            self._pattern_names[envelope] = (p, True)
            self.transport.psubscribe(plain)
            self.transport.psubscribe(envelope)
        return p.add(subscriber, own_ids)

    def detach_pattern(self, pattern: bytes, subscriber: Subscriber) -> None:
        p = self.patterns.get(pattern)
        if p is None:
            return
        p.remove(subscriber)
        if not len(p):
            del self.patterns[pattern]
            for name in p.names:
                self._pattern_names.pop(name, None)
                self.transport.punsubscribe(name)

    def _unconfirm_patterns(self) -> None:
        for p in self.patterns.values():
            p.unconfirm()

    # TransportSink, the pattern half.

    def psubscribed(self, pattern: bytes) -> None:
        found = self._pattern_names.get(pattern)
        if found is not None:
            found[0].confirm(pattern)

    def psubscribe_failed(self, pattern: bytes, error: str) -> None:
        self.stats.subscribe_refusals += 1
        found = self._pattern_names.get(pattern)
        if found is not None:
            found[0].refuse(error)

    def deliver_patterns(self, batch: Mapping[bytes, list[tuple[bytes, bytes]]]) -> None:
        names = self._pattern_names
        stats = self.stats
        for name, pairs in batch.items():
            stats.messages_received += len(pairs)
            found = names.get(name)
            if found is None:
                continue
            p, is_envelope = found
            if is_envelope:
                self._deliver_pattern_envelopes(p, pairs)
                continue
            # What the pattern matched on an envelope channel is an envelope, not a plain message.
            kept = [
                (c, d) for c, d in pairs if channel_of_envelope(c) is None and self._pattern_fits(p, c, d)
            ]
            if kept:
                p.deliver(kept)

    def _deliver_pattern_envelopes(self, p: Pattern, pairs: list[tuple[bytes, bytes]]) -> None:
        events = []
        for channel, message in pairs:
            if not self._pattern_fits(p, channel, message):
                continue
            inner = channel_of_envelope(channel)
            channel = inner if inner is not None else channel
            try:
                events.append((channel, decode_envelope(message)))
            except MalformedEnvelope as e:
                self.stats.messages_malformed += 1
                log.warn(
                    "malformed event on {channel} (pattern {pattern}): {why}; not delivered",
                    channel=printable(channel),
                    pattern=printable(p.name),
                    why=str(e),
                )
        if events:
            p.deliver_events(events)

    def _pattern_fits(self, p: Pattern, channel: bytes, message: bytes) -> bool:
        limit = self.max_message_size
        if not limit or len(message) <= limit:
            return True
        self.stats.messages_oversize += 1
        log.warn(
            "message of {size} bytes on {channel} (pattern {pattern}) is over the limit of {limit}; "
            "not delivered",
            size=len(message),
            channel=printable(channel),
            pattern=printable(p.name),
            limit=limit,
        )
        return False
