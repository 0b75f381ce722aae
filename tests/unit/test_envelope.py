"""The id and envelope format publishers and bridges agree on (ssebridge.publish.envelope)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssebridge.publish.envelope import (
    MalformedEnvelope,
    decode_envelope,
    encode_envelope,
    envelope_channel,
    format_position,
    history_key,
    parse_id,
    parse_position,
    validate_event,
    validate_retry,
)

ids = st.tuples(st.integers(0, 2**63), st.integers(0, 2**63))
names = st.binary(min_size=1, max_size=40).filter(lambda b: not ({13, 10, 0} & set(b)))


def test_ids_compare_as_numbers() -> None:
    assert parse_id("999-0") < parse_id("1000-0")  # type: ignore[operator]
    assert parse_id("5-10") > parse_id("5-9")  # type: ignore[operator]


@pytest.mark.parametrize("text", ["", "5", "5-", "-5", "a-1", "1-1-1", "1 -1", "1-1\n"])
def test_not_an_id(text: str) -> None:
    assert parse_id(text) is None


def test_keys_share_the_hash_tag() -> None:
    assert history_key(b"news") == b"ssebridge:{news}:h"
    assert envelope_channel(b"news") == b"ssebridge:{news}:e"


@given(ids, st.one_of(st.none(), ids), st.binary(), names, st.integers(0, 10**9))
def test_envelope_round_trip(
    event_id: tuple[int, int], previous: tuple[int, int] | None, data: bytes, event: bytes, retry: int
) -> None:
    env = decode_envelope(encode_envelope(event_id, previous, data, event, str(retry).encode()))
    assert (env.id, env.previous, env.data, env.event, env.retry) == (
        event_id,
        previous,
        data,
        event,
        str(retry).encode(),
    )


@pytest.mark.parametrize(
    "message",
    [
        b"1-0\n\n\n\nhello",  # a plain PUBLISH that looks like one: no tag
        b"ssebridge1\nx-0\n\n\n\nd",
        b"ssebridge1\n1-0\nzz\n\n\nd",
        b"ssebridge1\n1-0\n\n\n12a\nd",
        b"ssebridge1\n1-0\n\nev\x00\n\nd",
        b"ssebridge1\n1-0\n\n",
    ],
)
def test_malformed_envelopes_are_refused(message: bytes) -> None:
    with pytest.raises(MalformedEnvelope):
        decode_envelope(message)


@given(st.dictionaries(names, ids, min_size=2, max_size=5))
def test_composite_positions_round_trip(positions: dict[bytes, tuple[int, int]]) -> None:
    text = format_position(positions)  # type: ignore[arg-type]
    assert "\n" not in text and "\r" not in text and text.isascii()
    assert parse_position(text, positions) == positions


def test_hostile_names_in_a_composite_id() -> None:
    positions = {b"a,b": (1, 0), b"c:d": (2, 0), b"100%": (3, 0), "zoé".encode(): (4, 0)}
    text = format_position(positions)  # type: ignore[arg-type]
    assert text == "a%2Cb:1-0,c%3Ad:2-0,100%25:3-0,zo%C3%A9:4-0"
    assert parse_position(text, positions) == positions


def test_single_channel_and_plain_ids() -> None:
    assert format_position({b"news": (7, 1)}) == "7-1"
    assert parse_position("7-1", [b"news", b"other"]) == {b"news": (7, 1), b"other": (7, 1)}
    assert parse_position("news:7-1,nope:bad", [b"news", b"x"]) == {b"news": (7, 1), b"x": None}


@pytest.mark.parametrize("event", ["", "a\nb", "a\rb", "a\x00"])
def test_bad_event_names(event: str) -> None:
    with pytest.raises(ValueError):
        validate_event(event)


@pytest.mark.parametrize("retry", [-1, True, 1.5, "10"])
def test_bad_retry(retry: object) -> None:
    with pytest.raises(ValueError):
        validate_retry(retry)  # type: ignore[arg-type]
