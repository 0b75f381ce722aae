"""The contract ssebridge.takeover relies on, pinned against the installed Twisted.

If an upgrade of Twisted breaks one of these, this fails (and the bridge, at run time, falls back to
writing through twisted.web, logging which internal is missing).
"""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.web.http import Request

from ssebridge import takeover


def test_the_class_contract_holds() -> None:
    assert takeover.missing_internals() == []
    assert takeover.DIRECT
    assert Request._disconnected is False


class _Reactor:
    """Just enough of a reactor for a connection to register for writing."""

    def addWriter(self, writer: object) -> None:
        pass

    def removeWriter(self, writer: object) -> None:
        pass

    def addReader(self, reader: object) -> None:
        pass

    def removeReader(self, reader: object) -> None:
        pass


class _PullProducer:
    resumed = 0

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        pass


def test_a_pull_producer_hears_when_twisteds_buffer_has_emptied() -> None:
    """What the direct path's ordering rests on: a pull producer's resumeProducing is called at
    registration, and again once the buffer is written, also when it was empty (``startWriting``)."""
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        connection = tcp.Connection(a, None, reactor=_Reactor())
        connection.connected = 1  # as the reactor marks an established connection
        b.settimeout(5)
        for name in takeover.INSTANCE_CONTRACT:
            assert hasattr(connection, name)
        producer = _PullProducer()
        connection.registerProducer(producer, False)
        assert producer.resumed == 1
        connection.write(b"head")
        connection.doWrite()
        assert b.recv(16) == b"head" and producer.resumed == 2
        connection.startWriting()
        connection.doWrite()  # nothing to write: still reported
        assert producer.resumed == 3
        send = takeover.direct_sender(connection)
        assert send(b"hello") == 5 and b.recv(16) == b"hello"
    finally:
        a.close()
        b.close()


def test_the_http_channel_hooks_the_site_overrides_exist() -> None:
    """``ssebridge.http.site`` overrides these to refuse early; a rename would silently bypass it."""
    from twisted.web.http import HTTPChannel

    for name in ("_send100Continue", "checkPersistence", "allHeadersReceived", "requestDone"):
        assert callable(getattr(HTTPChannel, name, None)), name


def test_an_http_channel_keeps_the_request_line_it_parsed() -> None:
    """``takeover.request_line``: what the site reads to refuse a body before twisted.web reads it."""
    from twisted.internet.testing import StringTransport
    from twisted.web.http import HTTPChannel

    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.lineReceived(b"POST /upload?x=1 HTTP/1.1")
    for name in takeover.CHANNEL_CONTRACT:
        assert hasattr(channel, name), name
    assert takeover.request_line(channel) == (b"POST", b"/upload?x=1", b"HTTP/1.1")


def test_a_tcp_connection_sends_without_nagle_and_a_unix_one_is_left_as_it_is() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname()[:2])
    served, _ = listener.accept()
    local, remote = socket.socketpair()
    try:
        assert served.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        takeover.no_delay(tcp.Connection(served, None, reactor=_Reactor()))
        assert served.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        takeover.no_delay(tcp.Connection(local, None, reactor=_Reactor()))  # no TCP options: no error
    finally:
        for s in (listener, client, served, local, remote):
            s.close()
