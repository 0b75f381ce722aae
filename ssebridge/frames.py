"""The SSE wire format (WHATWG ``text/event-stream``): the one place that knows how frames look.

Pure functions from message bytes to frame bytes. The hub frames each message once and hands the same
bytes to every client of a channel, so these run once per message, not once per delivery.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

_DATA = b"data: "
_NEWLINE_DATA = b"\ndata: "


def encode_data(message: bytes) -> bytes:
    """Frame one message as an event: one ``data: `` line for each line of the message.

    Every line terminator in the message (LF, CRLF or a lone CR) starts a new ``data:`` line, because a
    WHATWG parser ends a line on each of them: a CR left inside a ``data:`` line would cut the message
    short in the browser. The browser rejoins the lines with LF, so the message arrives intact with its
    line terminators normalised to LF. The one space after ``data:`` is what the parser strips, so
    leading spaces of a line survive.
    """
    if b"\r" in message:
        message = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if b"\n" in message:
        message = message.replace(b"\n", _NEWLINE_DATA)
    return _DATA + message + b"\n\n"


def encode_batch(messages: Iterable[bytes]) -> bytes:
    """Frame several messages as consecutive events, in order, as one buffer (one write per client)."""
    return b"".join([encode_data(m) for m in messages])


def encode_raw(messages: Iterable[bytes]) -> bytes:
    """``sseraw``: the messages' bytes untouched; the publisher owns the framing."""
    return b"".join(messages)


def comment(text: bytes = b"") -> bytes:
    """A comment line (ignored by clients): keeps proxies from cutting a quiet stream."""
    if b"\n" in text or b"\r" in text:
        raise ValueError("a comment must be a single line")
    return b":" + text + b"\n\n" if not text else b": " + text + b"\n\n"


def retry(milliseconds: int) -> bytes:
    """A ``retry:`` field: how long the browser waits before it reconnects after the stream ends."""
    if milliseconds < 0:
        raise ValueError("retry must not be negative")
    return b"retry: %d\n\n" % milliseconds


def event_head(event: bytes = b"", retry_ms: bytes = b"") -> bytes:
    """The ``event:`` and ``retry:`` lines of an event (either may be absent). Both were validated by
    the publisher (``ssebridge.publish.envelope``): no CR, LF or NUL in an event name, digits only in
    a retry."""
    head = b""
    if event:
        head = b"event: " + event + b"\n"
    if retry_ms:
        head += b"retry: " + retry_ms + b"\n"
    return head


def id_line(event_id: bytes) -> bytes:
    """An ``id:`` line. A browser keeps it as the stream's last event id and sends it back as
    ``Last-Event-ID`` when it reconnects."""
    return b"id: " + event_id + b"\n"


def encode_event(data: bytes, event_id: bytes = b"", event: bytes = b"", retry_ms: bytes = b"") -> bytes:
    """One event with its id, name and retry hint (each optional) and its data framed as
    ``encode_data`` frames it."""
    return event_head(event, retry_ms) + (id_line(event_id) if event_id else b"") + encode_data(data)


#: The event name of the notice that a stream could not be resumed whole.
GAP_EVENT = b"ssebridge.gap"


def gap(channels: Iterable[bytes], reason: str) -> bytes:
    """The ``ssebridge.gap`` event: the page missed events (history no longer holds them, or the id it
    came back with is unknown or from the future) and should reload its state. It carries no ``id:``,
    so the browser's last event id stays that of the last real event."""
    names = [name.decode("utf-8", "replace") for name in channels]
    body = json.dumps({"channels": names, "reason": reason}, separators=(",", ":")).encode()
    return b"event: " + GAP_EVENT + b"\n" + encode_data(body)
