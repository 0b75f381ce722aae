"""How a channel's history is read from a Redis Stream: the read script and what its reply means.

Pure (no I/O): ``RedisHistory`` sends ``READ_SCRIPT``; ``replay_from`` turns the reply into a
``Replay``. One script call takes the stream's metadata (``XINFO STREAM``) and the events after a
position (``XRANGE key (ID + COUNT n``) atomically, so a publish can never fall between the two;
gaps are judged here, in Python, where 64-bit ids compare exactly (Lua numbers are doubles).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ssebridge.interfaces import HistoryEvent, Replay
from ssebridge.publish.envelope import EventId, format_id, parse_id

__all__ = ["READ_SCRIPT", "READ_SHA", "read_arguments", "replay_from"]

# KEYS[1] the history stream; ARGV[1] "(" .. position (an exclusive XRANGE start), or "" for no events;
# ARGV[2] how many events at most. Returns {} when the key does not exist, otherwise
# {last-generated-id, max-deleted-entry-id, entries-added, length, first entry's id or "", entries}.
# entries-added and max-deleted-entry-id exist from Redis 7.0 (-1 and "0-0" before: see replay_from).
READ_SCRIPT = b"""
local key = KEYS[1]
local kind = redis.call('TYPE', key)['ok']
if kind == 'none' then
  return {}
end
if kind ~= 'stream' then
  return redis.error_reply('WRONGTYPE ssebridge: the history key holds a ' .. kind .. ', not a stream')
end
local info = redis.call('XINFO', 'STREAM', key)
local f = {}
for i = 1, #info, 2 do
  f[info[i]] = info[i + 1]
end
local first = ''
if f['first-entry'] then
  first = f['first-entry'][1]
end
local entries = {}
if ARGV[1] ~= '' then
  entries = redis.call('XRANGE', key, ARGV[1], '+', 'COUNT', ARGV[2])
end
return {f['last-generated-id'], f['max-deleted-entry-id'] or '0-0', f['entries-added'] or -1,
        f['length'], first, entries}
"""
READ_SHA = hashlib.sha1(READ_SCRIPT).hexdigest().encode()

#: The start of every history: ``Publisher.current_id`` of a channel that has none.
_ORIGIN: EventId = (0, 0)
#: The largest stream id; ``(`` before it is refused by Redis, and nothing can come after it.
_MAX_PART = 2**64 - 1
_MAX_ID: EventId = (_MAX_PART, _MAX_PART)


def read_arguments(position: EventId | None, limit: int) -> tuple[bytes, int]:
    """``READ_SCRIPT``'s ARGV for a read of at most ``limit`` events after ``position``.

    A position past any possible id (parts over 64 bits come from clients) is read as the nearest
    one Redis accepts that has the same ids after it; ``replay_from`` still compares the original.
    """
    if position is None or position >= _MAX_ID or position[0] > _MAX_PART:
        return b"", limit + 1
    start = (position[0], min(position[1], _MAX_PART))
    return b"(" + format_id(start).encode(), limit + 1


def _id(raw: Any) -> EventId:
    parsed = parse_id(raw) if isinstance(raw, bytes) else None
    if parsed is None:
        raise ValueError(f"not a stream id: {raw!r:.40}")
    return parsed


def _event(entry: Any) -> HistoryEvent:
    raw_id, flat = entry
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return HistoryEvent(_id(raw_id), fields.get(b"d", b""), fields.get(b"e", b""), fields.get(b"r", b""))


def replay_from(position: EventId | None, limit: int, reply: Sequence[Any]) -> Replay:
    """The ``Replay`` for a read after ``position`` from ``READ_SCRIPT``'s reply (see ``Replay``).

    Trims only ever remove the oldest entries, and Redis 7.0 records XDELs (max-deleted-entry-id) but
    not trims, so: at or after the oldest entry held, only an XDEL after the position is a loss;
    before it, any entry ever removed may have come after the position (a conservative "evicted"),
    and a stream that never lost one cannot have held the position (``"unknown"``), bar ``0-0``.
    """
    if not reply:
        if position is None or position == _ORIGIN:
            return Replay(())
        return Replay((), "unknown")
    raw_last, raw_deleted, added, length, raw_first, entries = reply
    last = _id(raw_last)
    if position is None:
        return Replay((), None, last)
    if position > last:
        return Replay((), "future", last)
    events = tuple(_event(e) for e in entries[:limit])
    more = len(entries) > limit
    first = _id(raw_first) if raw_first else None
    gap: str | None = None
    if position == last:
        pass  # nothing can come after the newest id ever given
    elif first is None or position < first:
        # Redis < 7.0 does not count entries added (-1): assume some were removed.
        removed = int(added) < 0 or int(added) > int(length)
        if removed:
            gap = "evicted"
        elif position != _ORIGIN:
            gap = "unknown"
    elif _id(raw_deleted) > position:
        gap = "evicted"
    if gap is None and more:
        gap = "truncated"
    return Replay(events, gap, last, more)
