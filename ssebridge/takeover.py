"""The one door to Twisted's internals: taking a connection over from twisted.web, writing to its
socket directly, and asking whether a request's client is gone.

Why internals at all: a stream is the hot path. Once its headers are out, holding a ``Request`` and an
``HTTPChannel`` per client costs kilobytes each, and writing through ``transport.write`` costs two
``epoll_ctl`` calls and a reactor turn per delivery, while the kernel's buffer almost always has room.
So a stream becomes the TCP connection's protocol, and sends straight to the socket.

Order is kept without reading Twisted's write buffer: ``take_over`` registers the stream as a *pull*
producer, and Twisted calls a pull producer's ``resumeProducing`` each time its buffer for the
connection has emptied. A stream that hands Twisted bytes (the rest of a send the kernel took only
part of) sends nothing directly again until that call: Twisted's bytes always go first. The first
direct send waits for the first such call after the take-over (the response head goes first).

What this relies on: ``tcp.Connection`` producer registration (``registerProducer``,
``unregisterProducer``), ``startWriting`` and a settable ``protocol``, and
``twisted.web.http.Request._disconnected``: checked once at import (``CONTRACT``); a connection's
``socket``: checked on the first connection taken over (``INSTANCE_CONTRACT``). When any is missing (a
Twisted release that changed them), ``DIRECT`` becomes false, a warning is logged once, and streams use
only public API: ``request.write`` with a registered producer. Slower, never wrong. The range of Twisted
releases this was checked on is pinned in ``setup.py``; ``tests/unit/test_takeover.py`` pins the
contract itself.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.http import Request

__all__ = [
    "CHANNEL_CONTRACT",
    "CONTRACT",
    "DIRECT",
    "INSTANCE_CONTRACT",
    "direct_sender",
    "direct_socket",
    "gone",
    "missing_internals",
    "no_delay",
    "request_line",
    "take_over",
]

log = Logger()

#: (class, attribute) pairs the direct path reads or writes.
CONTRACT: tuple[tuple[type, str], ...] = (
    (tcp.Connection, "registerProducer"),
    (tcp.Connection, "unregisterProducer"),
    (tcp.Connection, "startWriting"),
    (Request, "_disconnected"),
)

#: Attributes an ``HTTPChannel`` sets once it has parsed a request line (``request_line``).
CHANNEL_CONTRACT = ("_command", "_path", "_version")

#: Attributes a live ``tcp.Connection`` must have (set in its ``__init__``, so not on the class).
INSTANCE_CONTRACT = ("socket",)


def missing_internals() -> list[str]:
    """The names of ``CONTRACT`` that this Twisted lacks (empty: the direct path is safe)."""
    return [f"{cls.__module__}.{cls.__name__}.{name}" for cls, name in CONTRACT if not hasattr(cls, name)]


def _report(missing: list[str]) -> bool:
    if missing:
        log.warn(
            "this Twisted lacks {missing}: streams write through twisted.web (slower, same behaviour)",
            missing=", ".join(missing),
        )
    return not missing


#: Whether streams may take connections over and send directly.
DIRECT = _report(missing_internals())
_instance_checked = False


def _instance_ok(transport: tcp.Connection) -> bool:
    """Check ``INSTANCE_CONTRACT`` on the first connection; its answer holds for every later one."""
    global DIRECT, _instance_checked
    if not _instance_checked:
        _instance_checked = True
        missing = [f"tcp.Connection().{name}" for name in INSTANCE_CONTRACT if not hasattr(transport, name)]
        DIRECT = _report(missing)
    return DIRECT


def take_over(request: Request, producer: IPushProducer) -> Any | None:
    """Make ``producer`` (a stream) the protocol and producer of ``request``'s TCP connection.

    Returns the connection's transport, now the stream's alone (twisted.web's ``HTTPChannel`` lets go
    of it), or ``None`` when the connection cannot be taken over (TLS, a unix socket wrapped by
    something else, or the contract unmet): the stream then keeps writing through ``request``.
    """
    channel = request.channel
    transport = channel.transport if channel is not None else None
    if not DIRECT or not isinstance(transport, tcp.Connection) or not _instance_ok(transport):
        return None
    # The HTTPChannel registered itself as the transport's producer; the stream replaces it, and
    # becomes the protocol that hears about reads and the connection's end.
    transport.unregisterProducer()
    transport.protocol = producer
    # A pull producer: Twisted calls its resumeProducing whenever its buffer has emptied (and once now,
    # whatever the buffer holds: the caller ignores that call). The response head may still be in
    # Twisted's buffer: startWriting makes the reactor flush it and then say so, on its next turn, even
    # when it is already empty.
    transport.registerProducer(producer, False)
    transport.startWriting()
    # twisted.web may have paused reading while it handled the request; a stream must keep reading,
    # or it would not notice the client leave.
    transport.resumeProducing()
    channel.transport = None
    no_delay(transport)
    return transport


def no_delay(transport: tcp.Connection) -> None:
    """Turn Nagle's algorithm off on a TCP connection; leave any other (a unix socket) as it is.

    Why: a stream's writes are small and each is wanted now, the right default for SSE. With Nagle on,
    a frame written while an earlier small one is unacknowledged waits for that ACK, which the client's
    kernel may delay by up to 40 ms: a stream would stall exactly when it is busiest. nginx sets
    ``tcp_nodelay`` on keep-alive connections for the same reason, and the fan-out floor
    (``bench/floor.py``) on every client's socket.
    """
    if transport.socket.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        transport.setTcpNoDelay(True)
    except OSError:
        pass  # the peer has already gone: the reactor reports it


def direct_sender(transport: Any) -> Callable[[bytes], int]:
    """The ``send`` of a taken-over connection's socket: how many bytes the kernel took, or
    ``BlockingIOError`` when it took none, ``OSError`` when the peer has gone.

    Call it only while Twisted holds nothing for the connection (see the module's docstring).
    """
    send: Callable[[bytes], int] = transport.socket.send
    return send


def direct_socket(transport: Any) -> socket.socket:
    """The socket of a taken-over connection, for the fan-out loop (``ssebridge.fanout``) and a stream's
    own sends: non-blocking, so a ``send`` takes what the kernel's buffer has room for and raises
    ``BlockingIOError`` when it has none. The same rule as ``direct_sender``: only while Twisted holds
    nothing for the connection."""
    sock: socket.socket = transport.socket
    return sock


def request_line(channel: Any) -> tuple[bytes, bytes, bytes]:
    """The method, target and version an ``HTTPChannel`` has parsed for the request whose body is still
    arriving (twisted.web hands them to the ``Request`` only once the body is in; the site needs them
    earlier, to refuse a body nobody will read before reading it). Pinned by ``CHANNEL_CONTRACT``."""
    return channel._command, channel._path, channel._version


def gone(request: Request) -> bool:
    """Whether ``request`` can no longer be written to: finished, or its client disconnected."""
    return bool(request.finished or getattr(request, "_disconnected", False))
