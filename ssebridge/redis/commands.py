"""A command connection for publishing: txredisapi's client with the bridge's handshake.

``command_factory`` starts one (lazily connected, reconnected for good) to a server; the Twisted
publisher uses it for a server or a Sentinel-managed master, and ``cluster_commands`` for each master
of a cluster. Its ``handler`` is the txredisapi client calls go through.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from ssebridge.address import RedisServer
from ssebridge.redis.handshake import factory_for, handshake

__all__ = ["CommandFactory", "command_factory"]


class CommandProtocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """txredisapi's command protocol with the bridge's handshake (a deadline, retries, ``ROLE`` on a
    Sentinel-managed address) that drops its connection on ``READONLY`` (a demoted master): the
    reconnect asks the sentinels again, and a publish retried by the caller reaches the new master."""

    factory: CommandFactory

    def connectionMade(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._handshake())

    async def _handshake(self) -> None:
        factory = self.factory
        await handshake(self, factory.timeout, factory.clock, master=factory.server.kind == "sentinel")

    def replyReceived(self, reply: Any) -> None:
        super().replyReceived(reply)
        if isinstance(reply, Exception) and str(reply).startswith("READONLY") and self.transport:
            self.transport.loseConnection()


class CommandFactory(txredisapi.RedisFactory):  # type: ignore[misc]
    """Reconnects for good, quickly (one connection per node), without Twisted's per-connection log line."""

    protocol = CommandProtocol
    noisy = False
    initialDelay = 0.1
    factor = 2.0
    maxDelay = 1.0
    jitter = 0.2
    server: RedisServer
    clock: IReactorTime
    timeout: float


def command_factory(
    server: RedisServer, reactor: IReactorTime, timeout: float, endpoint: IStreamClientEndpoint
) -> CommandFactory:
    """A ``CommandFactory`` for ``server``, connecting through ``endpoint`` now and after every loss."""
    factory = factory_for(CommandFactory, server)
    factory.server, factory.clock, factory.timeout = server, reactor, timeout
    factory.startConnecting(endpoint)
    return factory
