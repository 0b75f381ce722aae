"""Reading a channel's history for the group: replays for resuming clients, and catch-ups.

``HistoryReplay`` is the half of ``ssebridge.hub.channels.ChannelGroup`` that talks to its ``History``:
what a resuming subscriber missed (``replay``, the channel's ``Replayer``), what the channel itself
missed after a reconnect or a hole in the ids (``_catch_up``), and the newest id of a channel just
subscribed (``_learn_last_id``). Replays are read a page at a time; the events of one read, and their
frame, are made once for every client that shares the read.
"""

from __future__ import annotations

from typing import NamedTuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssebridge.hub.channel import Channel, frame_events
from ssebridge.hub.stats import Stats
from ssebridge.interfaces import History, Replay, Subscriber
from ssebridge.logs import printable
from ssebridge.publish.envelope import Envelope, EventId

__all__ = ["MAX_REPLAY_PAGES", "REMEMBERED_REPLAYS", "Found", "HistoryReplay"]

log = Logger()

#: Reads of ``replay_limit`` events at most, for one replay: past them, a ``"truncated"`` gap.
MAX_REPLAY_PAGES = 10
#: Finished replays a channel keeps for clients that come back from the same id (see ``_still_whole``).
REMEMBERED_REPLAYS = 16


class Found(NamedTuple):
    """What history held after a position: the events (as envelopes), the gap, their frame (built once
    for every single-channel client), and the newest id history knew when it was read."""

    events: list[Envelope]
    gap: str | None
    frame: bytes
    newest: EventId | None


def _still_whole(channel: Channel, found: Found) -> bool:
    """Whether a replay read earlier is still everything a client resuming now needs before the live
    events: nothing newer than what it read has been delivered live since (anything newer still on its
    way reaches the client live, held behind the replay), and the channel is not catching up.

    This is what makes a reconnect storm one history read per (channel, id) while nothing new is
    published: thousands of browsers coming back over seconds share the first read.
    """
    if not channel.confirmed or channel.holding:
        return False
    last = channel.last_id
    return last is None or (found.newest is not None and last <= found.newest)


def _remember(channel: Channel, position: EventId, found: Found) -> None:
    replays = channel.replays
    if position not in replays and len(replays) >= REMEMBERED_REPLAYS:
        del replays[next(iter(replays))]
    replays[position] = found


class HistoryReplay:
    """The group's reads of its history (a mixin: the group sets the attributes below)."""

    history: History | None
    replay_limit: int
    stats: Stats
    _memo: tuple[object, list[Envelope], bytes] | None

    # History.

    def _learn_last_id(self, ch: Channel) -> None:
        assert self.history is not None

        def learned(last: EventId | None) -> None:
            ch.known_id = last

        def failed(failure: Failure) -> None:
            log.info(
                "history of {channel} not read ({why}); ids resume from the next event",
                channel=printable(ch.name),
                why=failure.getErrorMessage(),
            )

        self.history.current_id(ch.name).addCallbacks(learned, failed)

    def read_all(self, channel: bytes, position: EventId) -> Deferred[Found]:
        """Every event after ``position`` that history holds, a page of ``replay_limit`` at a time, up to
        ``MAX_REPLAY_PAGES`` pages (past them: a ``"truncated"`` gap)."""
        assert self.history is not None
        history = self.history
        return Deferred.fromCoroutine(self._read_all(history, channel, position))

    async def _read_all(self, history: History, channel: bytes, position: EventId) -> Found:
        events: list[Envelope] = []
        first_gap: str | None = None
        for page in range(MAX_REPLAY_PAGES):
            replay = await history.read_after(channel, position, self.replay_limit)
            converted = self._convert(replay)
            if page == 0 and replay.gap != "truncated":
                first_gap = replay.gap
            events.extend(converted[0])
            if not replay.more or not converted[0]:
                if page == 0:
                    return Found(converted[0], first_gap, converted[1], replay.last_id)
                return Found(events, first_gap, frame_events(events), replay.last_id)
            position = events[-1].id
        return Found(events, first_gap or "truncated", frame_events(events), replay.last_id)

    def _convert(self, replay: Replay) -> tuple[list[Envelope], bytes]:
        memo = self._memo
        if memo is not None and memo[0] is replay:
            return memo[1], memo[2]
        events = [Envelope(e.id, None, e.event, e.retry, e.data) for e in replay.events]
        frame = frame_events(events)
        self._memo = (replay, events, frame)
        return events, frame

    def replay(self, channel: Channel, subscriber: Subscriber, position: EventId | None) -> None:
        """Replayer: read history after ``position`` for one resuming subscriber."""
        if position is None:
            channel.replayed(subscriber, [], "unknown")
            return
        if self.history is None:
            channel.replayed(subscriber, [], "unavailable")
            return
        done = channel.replays.get(position)
        if done is not None and _still_whole(channel, done):
            channel.replayed(subscriber, done.events, done.gap, done.frame)
            return

        def found(result: Found) -> None:
            _remember(channel, position, result)
            channel.replayed(subscriber, result.events, result.gap, result.frame)

        d = self.read_all(channel.name, position)
        d.addCallbacks(found, lambda failure: self._replay_failed(channel, subscriber, failure))

    def _replay_failed(self, channel: Channel, subscriber: Subscriber, failure: Failure) -> None:
        log.warn(
            "history of {channel} not read for a resuming client ({why})",
            channel=printable(channel.name),
            why=failure.getErrorMessage(),
        )
        channel.replayed(subscriber, [], "unavailable")

    def _catch_up(self, ch: Channel) -> None:
        """Read what ``ch`` missed since its last id; deliver it, then what was held meanwhile."""
        last = ch.last_id if ch.last_id is not None else ch.known_id
        if last is None or self.history is None:
            ch.release([])
            return
        self.stats.catch_ups += 1

        def found(result: Found) -> None:
            if result.gap is not None:
                ch.send_gap(result.gap)
            ch.release(result.events)

        def failed(failure: Failure) -> None:
            log.warn(
                "catching {channel} up from history failed ({why}); its streams are told of a gap",
                channel=printable(ch.name),
                why=failure.getErrorMessage(),
            )
            ch.send_gap("unavailable")
            ch.release([])

        self.read_all(ch.name, last).addCallbacks(found, failed)
