"""One question to a Redis node on a connection of its own: ``ask`` writes some commands in one go,
returns their replies (error replies as values, in order) and closes.

For what must neither wait behind nor disturb a long-lived connection: asking a sentinel where the
master is, reading a cluster's slot map, sending ``ASKING`` and a command to a node mid-migration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from ssebridge.redis.resp import Arg, encode_command

__all__ = ["ask", "auth_commands"]


def auth_commands(username: str | None, password: str | None) -> list[tuple[Arg, ...]]:
    """The ``AUTH`` to send first for these credentials (none without a password)."""
    if password is None:
        return []
    return [("AUTH", username, password) if username else ("AUTH", password)]


class _Query(Protocol):
    """Write the commands in one go, collect one reply each, then close."""

    def __init__(self, commands: Sequence[tuple[Arg, ...]]) -> None:
        self.commands = commands
        self.replies: list[Any] = []
        self.done: Deferred[list[Any]] = Deferred(lambda _: self._abort())
        self._reader = hiredis.Reader()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(encode_command(*c) for c in self.commands))

    def dataReceived(self, data: bytes) -> None:
        self._reader.feed(data)
        while len(self.replies) < len(self.commands):
            reply = self._reader.gets()
            if reply is False:
                return
            self.replies.append(reply)
        if not self.done.called:
            self.done.callback(self.replies)
        self._abort()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.errback(ConnectionError("the connection closed before every reply came"))

    def _abort(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()


async def ask(
    reactor: Any, addr: tuple[str, int], commands: Sequence[tuple[Arg, ...]], timeout: float
) -> list[Any]:
    """The replies of ``commands`` sent to the node at ``addr``, each within ``timeout`` seconds of
    connecting and of answering.

    Raises ``twisted.internet.defer.TimeoutError`` when the node is too slow, a
    ``twisted.internet.error.ConnectError`` when it cannot be reached, ``ConnectionError`` when it
    closes the connection before answering; cancelling the call closes the connection."""
    query = _Query(commands)
    connecting = connectProtocol(HostnameEndpoint(reactor, addr[0], addr[1], timeout=timeout), query)
    await connecting.addTimeout(timeout, reactor)
    return await query.done.addTimeout(timeout, reactor)
