"""RequestBody: the bounded in-memory buffer between a client's request body and its one consumer."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ssebridge.upstream.body import BUFFER_HIGH, BUFFER_LOW, BodyBroken, RequestBody


class Client:
    """The client's transport, as the body sees it: paused or not."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume(self) -> None:
        self.paused = False


def _body(declared: int | None = None) -> tuple[RequestBody, Client]:
    client = Client()
    return RequestBody(declared, client.pause, client.resume, lambda f, *a: f(*a)), client


def test_reads_lines_and_sizes_across_chunks() -> None:
    body, _ = _body()
    reader = body.reader()
    for piece in (b"first li", b"ne\nsecond", b" line\nrest"):
        body.feed(piece)
    body.finish()
    assert reader.readline() == b"first line\n"
    assert reader.read(3) == b"sec"
    assert reader.readline(4) == b"ond "
    assert list(reader) == [b"line\n", b"rest"]
    assert reader.read() == b""
    assert body.length == len(b"first line\nsecond line\nrest")


def test_the_client_is_paused_past_the_high_mark_and_resumed_below_the_low_one() -> None:
    body, client = _body()
    reader = body.reader()
    chunk = b"x" * 65536
    while not client.paused:
        body.feed(chunk)
    assert body.buffered > BUFFER_HIGH
    reader.read(body.buffered - BUFFER_LOW)  # still at the low mark: stays paused
    assert client.paused
    reader.read(1)
    assert not client.paused and client.pauses == 1


def test_a_read_waits_for_data_and_fails_when_the_body_breaks() -> None:
    body, _ = _body(10)
    reader = body.reader()
    got: list[Any] = []

    def read() -> None:
        try:
            got.append(reader.read())
        except BodyBroken as e:
            got.append(e)

    thread = threading.Thread(target=read)
    thread.start()
    body.feed(b"abc")
    body.fail(BodyBroken("the client went away"))
    thread.join(5)
    assert isinstance(got[0], BodyBroken)


def test_a_whole_read_takes_more_than_the_buffer_holds() -> None:
    """read() drains as it goes: waiting for the whole body with the client paused would never end."""
    body, client = _body()
    reader = body.reader()
    total = 3 * BUFFER_HIGH
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.append(reader.read()))
    thread.start()
    sent = 0
    while sent < total:
        if client.paused:
            thread.join(0.01)
            continue
        body.feed(b"y" * 65536)
        sent += 65536
    body.finish()
    thread.join(5)
    assert got == [b"y" * total]


def test_closing_the_reader_drops_the_rest() -> None:
    body, client = _body()
    reader = body.reader()
    while not client.paused:
        body.feed(b"z" * 65536)
    reader.close()
    assert body.buffered == 0 and not client.paused
    body.feed(b"more")
    assert body.buffered == 0


class Consumer:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def test_the_producer_writes_as_the_body_comes_and_holds_it_while_paused() -> None:
    body, client = _body(None)
    producer: Any = body.producer()
    body.feed(b"early ")
    consumer = Consumer()
    done = producer.startProducing(consumer)
    assert consumer.data == b"early "
    producer.pauseProducing()
    while not client.paused:
        body.feed(b"w" * 65536)
    producer.resumeProducing()
    assert not client.paused and body.buffered == 0
    body.feed(b" end")
    assert not done.called
    body.finish()
    assert done.called and consumer.data.endswith(b" end")


def test_one_consumer_only() -> None:
    body, _ = _body()
    body.reader()
    with pytest.raises(RuntimeError):
        body.producer()
