"""The SSE wire format (WHATWG ``text/event-stream``): the one place that knows how frames look.

Pure functions from message bytes to frame bytes. The hub frames each message once and hands the same
bytes to every client of a channel, so these run once per message, not once per delivery.
"""

from __future__ import annotations

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
