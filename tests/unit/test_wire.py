"""The one decoding from wire bytes to rule text (ssebridge.routing.wire), against check_channel."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ssebridge.routing.rules import MAX_CHANNEL_LENGTH, RefusedChannel, check_channel
from ssebridge.routing.wire import wire_text


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_distinct_bytes_stay_distinct_text(a: bytes, b: bytes) -> None:
    if a != b:
        assert wire_text(a) != wire_text(b)


@given(st.binary(min_size=1, max_size=MAX_CHANNEL_LENGTH))
def test_a_channel_is_its_own_bytes_or_refused(raw: bytes) -> None:
    """Valid UTF-8 (without CR, LF, NUL) subscribes exactly those bytes; anything else is refused."""
    try:
        channel = check_channel(wire_text(raw))
    except RefusedChannel:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return
        assert any(c in raw for c in b"\r\n\x00")
        return
    assert channel == raw
