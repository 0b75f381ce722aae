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
    assert isinstance(tcp.Connection.dataBuffer, bytes) and tcp.Connection.offset == 0
    assert Request._disconnected is False


def test_a_connection_has_the_instance_attributes_and_the_sender_follows_its_buffer() -> None:
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        connection = tcp.Connection(a, None)
        for name in takeover.INSTANCE_CONTRACT:
            assert hasattr(connection, name)
        send = takeover.direct_sender(connection)
        assert send(b"hello") == 5
        assert b.recv(16) == b"hello"
        # Twisted holds bytes for this connection: they go first, so nothing is sent directly.
        connection._tempDataLen = 3
        assert send(b"later") == 0
        connection._tempDataLen = 0
        b.close()
        # The peer is gone: the kernel refuses (EPIPE) at the latest on the second try.
        assert takeover.GONE in (send(b"x"), send(b"y"))
    finally:
        a.close()


def test_the_http_channel_hooks_the_site_overrides_exist() -> None:
    """``ssebridge.http.site`` overrides these to refuse early; a rename would silently bypass it."""
    from twisted.web.http import HTTPChannel

    for name in ("_send100Continue", "checkPersistence", "allHeadersReceived", "requestDone"):
        assert callable(getattr(HTTPChannel, name, None)), name
