"""The wire format, checked against a WHATWG event-stream parser."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssebridge import frames
from ssebridge.testing import EventStreamParser


def parse(data: bytes) -> list[str]:
    parser = EventStreamParser()
    parser.feed(data)
    return [e.data for e in parser.events]


def normalised(message: str) -> str:
    return re.sub(r"\r\n|\r", "\n", message)


@given(st.text())
def test_any_utf8_message_reaches_the_parser_intact(message: str) -> None:
    frame = frames.encode_data(message.encode("utf-8"))
    assert parse(frame) == [normalised(message)]


@given(st.lists(st.text(), max_size=20))
def test_a_batch_is_the_messages_in_order(messages: list[str]) -> None:
    batch = frames.encode_batch(m.encode("utf-8") for m in messages)
    assert parse(batch) == [normalised(m) for m in messages]


@given(st.lists(st.text(), min_size=1, max_size=5), st.integers(min_value=1, max_value=7))
def test_frames_survive_arbitrary_read_boundaries(messages: list[str], step: int) -> None:
    data = frames.encode_batch(m.encode("utf-8") for m in messages)
    parser = EventStreamParser()
    for i in range(0, len(data), step):
        parser.feed(data[i : i + step])
    assert [e.data for e in parser.events] == [normalised(m) for m in messages]


@given(st.lists(st.binary(), max_size=10))
def test_raw_mode_is_the_bytes_untouched(messages: list[bytes]) -> None:
    assert frames.encode_raw(messages) == b"".join(messages)


@pytest.mark.parametrize(
    ("message", "frame"),
    [
        (b"foobar", b"data: foobar\n\n"),
        (b"foobar\nfoobar2", b"data: foobar\ndata: foobar2\n\n"),
        (b"a\rb", b"data: a\ndata: b\n\n"),
        (b"a\r\nb", b"data: a\ndata: b\n\n"),
        (b"", b"data: \n\n"),
        (b" lead", b"data:  lead\n\n"),
    ],
)
def test_examples(message: bytes, frame: bytes) -> None:
    assert frames.encode_data(message) == frame


def test_a_lone_cr_does_not_cut_the_message() -> None:
    # The seed plugin let a CR through inside a data line; browsers ended the line there.
    assert parse(frames.encode_data(b"before\rafter")) == ["before\nafter"]


def test_comment_and_retry() -> None:
    assert frames.comment() == b":\n\n"
    assert frames.comment(b"ping") == b": ping\n\n"
    assert frames.retry(2500) == b"retry: 2500\n\n"
    with pytest.raises(ValueError):
        frames.comment(b"a\nb")
    parser = EventStreamParser()
    parser.feed(frames.comment(b"x") + frames.retry(10))
    assert parser.events == [] and parser.retry == 10
