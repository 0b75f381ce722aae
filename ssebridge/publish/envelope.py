"""Event ids, history keys and the live envelope: the format publishers and bridges agree on.

Pure and Twisted-free: the publisher library, the bridge and other languages' publishers (through
``publish.lua``) all follow what is written here. See ``docs/resume.md`` for the same in prose.

- A channel ``C`` with history has two Redis names, sharing one hash tag so they share a cluster slot:
  the stream ``ssebridge:{C}:h`` (its entries: ``d`` data, ``e`` event, ``r`` retry) and the pub/sub
  channel ``ssebridge:{C}:e`` that carries envelopes. Plain ``PUBLISH C ...`` stays as it was.
- An id is the stream id ``MS-SEQ``; ids compare as pairs of integers (``999-0`` < ``1000-0``).
- A stream of several channels gives the browser a composite id, ``C1:ID1,C2:ID2``, the names
  percent-encoded (``%``, ``,``, ``:`` and everything outside printable ASCII), so one
  ``Last-Event-ID`` carries the position on every channel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote_from_bytes, unquote_to_bytes

__all__ = [
    "ENVELOPE_TAG",
    "Envelope",
    "EventId",
    "MalformedEnvelope",
    "decode_envelope",
    "encode_envelope",
    "envelope_channel",
    "format_id",
    "format_position",
    "history_key",
    "parse_id",
    "parse_position",
    "validate_event",
    "validate_retry",
]

#: The first field of every envelope: the format's name and version.
ENVELOPE_TAG = b"ssebridge1"

#: A stream id as a comparable pair.
EventId = tuple[int, int]

_ID = re.compile(rb"([0-9]{1,20})-([0-9]{1,20})")
_BAD_EVENT = re.compile(r"[\r\n\x00]")
# Channel names in a composite id: unreserved ASCII stays, the rest (and , : %) is percent-encoded.
_SAFE = "!$&'()*+;=@/-._~[]{}"


class MalformedEnvelope(ValueError):
    """A message on an envelope channel that does not follow the format (never delivered)."""


def history_key(channel: bytes) -> bytes:
    """The Redis Stream holding ``channel``'s history."""
    return b"ssebridge:{" + channel + b"}:h"


def envelope_channel(channel: bytes) -> bytes:
    """The pub/sub channel on which ``channel``'s events with ids are announced."""
    return b"ssebridge:{" + channel + b"}:e"


def parse_id(text: bytes | str) -> EventId | None:
    """``b"1700000000000-3"`` as ``(1700000000000, 3)``; ``None`` when it is not a stream id."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    m = _ID.fullmatch(raw)
    return (int(m.group(1)), int(m.group(2))) if m else None


def format_id(event_id: EventId) -> str:
    return f"{event_id[0]}-{event_id[1]}"


def validate_event(event: str | None) -> str | None:
    """An event name as given, or ``ValueError`` when it would corrupt a stream (CR, LF, NUL)."""
    if event is None:
        return None
    if not isinstance(event, str):
        raise ValueError("event must be a str")
    if not event or _BAD_EVENT.search(event):
        raise ValueError(f"invalid event name {event!r}: empty, or holds CR, LF or NUL")
    return event


def validate_retry(retry: int | None) -> int | None:
    """A reconnection delay in ms, or ``ValueError`` (an SSE ``retry:`` is digits only)."""
    if retry is None:
        return None
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
        raise ValueError(f"invalid retry {retry!r}: a non-negative int of milliseconds")
    return retry


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event as announced live: its id, the id before it in history, and what the client gets."""

    id: EventId
    previous: EventId | None
    event: bytes
    retry: bytes
    data: bytes


def encode_envelope(
    event_id: EventId, previous: EventId | None, data: bytes, event: bytes = b"", retry: bytes = b""
) -> bytes:
    """What ``publish.lua`` publishes (for tests and tools; the script is the one publisher)."""
    prev = format_id(previous).encode() if previous else b""
    return b"\n".join([ENVELOPE_TAG, format_id(event_id).encode(), prev, event, retry, data])


def decode_envelope(message: bytes) -> Envelope:
    """Parse an envelope; ``MalformedEnvelope`` when any field is off (the message is not delivered)."""
    parts = message.split(b"\n", 5)
    if len(parts) != 6 or parts[0] != ENVELOPE_TAG:
        raise MalformedEnvelope("not an ssebridge1 envelope")
    _, raw_id, raw_prev, event, retry, data = parts
    event_id = parse_id(raw_id)
    if event_id is None:
        raise MalformedEnvelope(f"bad id {raw_id[:40]!r}")
    previous = parse_id(raw_prev) if raw_prev else None
    if raw_prev and previous is None:
        raise MalformedEnvelope(f"bad previous id {raw_prev[:40]!r}")
    if b"\r" in event or b"\x00" in event:
        raise MalformedEnvelope("bad event name")
    if retry and not retry.isdigit():
        raise MalformedEnvelope("bad retry")
    return Envelope(event_id, previous, event, retry, data)


def format_position(positions: Mapping[bytes, EventId | None]) -> str:
    """The SSE id of a stream at these per-channel positions.

    One channel: its id alone (what ``Publisher.publish`` returned). Several: ``C1:ID1,C2:ID2`` in the
    mapping's order, names percent-encoded; a channel with no position yet is left out.
    """
    if len(positions) == 1:
        (only,) = positions.values()
        return format_id(only) if only is not None else ""
    return ",".join(f"{_quoted(name)}:{pos[0]}-{pos[1]}" for name, pos in positions.items() if pos)


@lru_cache(maxsize=4096)
def _quoted(name: bytes) -> str:
    # A stream of several channels writes its composite id with every event: the names are few and
    # the same each time, so each is quoted once.
    return quote_from_bytes(name, safe=_SAFE)


def parse_position(text: str, channels: Iterable[bytes]) -> dict[bytes, EventId | None]:
    """Read a ``Last-Event-ID`` for a stream of ``channels``: each channel's position, or ``None``.

    A plain id applies to a single channel (and, for a stream of several, to every one of them, so an
    id embedded by ``Publisher.current_id`` for one channel still resumes). Unknown names are ignored;
    a position that does not parse is ``None`` (the stream reports a gap for it).
    """
    names = list(channels)
    plain = parse_id(text.strip())
    if plain is not None:
        return dict.fromkeys(names, plain)
    wanted: dict[bytes, EventId | None] = dict.fromkeys(names)
    for item in text.split(","):
        name, sep, raw = item.strip().rpartition(":")
        if not sep:
            continue
        channel = unquote_to_bytes(name)
        if channel in wanted:
            wanted[channel] = parse_id(raw)
    return wanted
