"""A Stream's write path over twisted.web's own parts and a StringTransport: no sockets, no reactor.

What is pinned: every frame is counted once however it leaves (straight out, or queued while the client
is paused); what is queued counts against the client's buffer bound, whatever its size; queued frames
are the shared objects (or views of them), never a copy per client.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ssebridge.frames import encode_batch
from ssebridge.http.stream import PIECE, SLOW_CLIENT, Stream
from ssebridge.hub.channels import Hub
from ssebridge.interfaces import TransportSink


class _Transport:
    """A transport that is always up and confirms nothing (the test drives the stream by hand)."""

    connected = True

    def subscribe(self, channel: bytes) -> None:
        pass

    def unsubscribe(self, channel: bytes) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)


def _hub() -> Hub:
    def make(key: Hashable, sink: TransportSink) -> Any:
        return _Transport()

    return Hub(make)


def _stream(client_buffer: int = 1024 * 1024) -> tuple[Stream, StringTransport, list[str]]:
    transport = StringTransport()
    channel = HTTPChannel()
    channel.site = Site(Resource())  # type: ignore[attr-defined]
    channel.makeConnection(transport)
    request = Request(channel)
    channel.requests.append(request)  # as HTTPChannel does when a request arrives
    request.method = b"GET"
    request.clientproto = b"HTTP/1.1"
    request.uri = request.path = b"/events/x"
    reasons: list[str] = []
    stream = Stream(
        request,
        _hub(),
        "server",
        b"x",
        client_buffer=client_buffer,
        on_close=lambda s, why: reasons.append(why),
    )
    stream.start()
    transport.clear()  # the response head
    return stream, transport, reasons


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_frames_written_while_paused_are_counted_once() -> None:
    stream, transport, _ = _stream()
    stream.pauseProducing()
    for n in range(3):
        stream.send(encode_batch([b"event %d" % n]))
    assert transport.value() == b""  # paused: queued, not written
    stream.resumeProducing()
    assert stream.frames == 3
    assert transport.value() == b"".join(_chunk(encode_batch([b"event %d" % n])) for n in range(3))
    stream.send(encode_batch([b"event 3"]))
    assert stream.frames == 4
    assert stream.bytes == sum(len(encode_batch([b"event %d" % n])) for n in range(4))


def test_a_paused_client_past_its_buffer_is_cut_off() -> None:
    stream, transport, reasons = _stream(client_buffer=1000)
    stream.pauseProducing()
    stream.send(b"x" * 600)
    assert not stream.closed
    stream.send(b"x" * 600)
    assert stream.closed and reasons == [SLOW_CLIENT]
    assert transport.disconnecting or transport.disconnected


def test_a_large_frame_is_fed_in_pieces_and_counted_against_the_buffer() -> None:
    """A frame larger than the buffer bound cannot sit queued for a client that does not read."""
    stream, transport, reasons = _stream(client_buffer=4 * PIECE)
    # Twisted would pause a producer once its buffer passes its bufferSize: mimic a client that
    # never reads by pausing after the first piece arrives.
    written: list[int] = []
    original_write = transport.write

    def write(data: bytes) -> None:
        written.append(len(data))
        original_write(data)
        stream.pauseProducing()

    transport.write = write  # type: ignore[method-assign]
    stream.send(b"y" * (3 * PIECE))
    assert not stream.closed
    assert max(written) <= PIECE + 16  # one piece (plus the chunk's own framing)
    stream.send(b"y" * (3 * PIECE))
    assert stream.closed and reasons == [SLOW_CLIENT]


def test_a_gentle_close_sends_the_queue_then_its_last_words() -> None:
    stream, transport, _ = _stream()
    stream.pauseProducing()
    stream.send(b"data: a\n\n")
    stream.close("shutdown", final=b"retry: 5000\n\n")
    assert transport.value() == _chunk(b"data: a\n\n") + _chunk(b"retry: 5000\n\n") + b"0\r\n\r\n"
