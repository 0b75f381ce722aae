"""Reaching a Redis server: its client endpoint (``endpoint_for``), and AUTH and SELECT on a new
txredisapi connection with a deadline (``handshake``): txredisapi's own ``connectionMade``, made to retry.

txredisapi stops reconnecting for good when AUTH or SELECT fails for any reason, a connection lost
midway included, and waits for their answers without a deadline (a frozen Redis). Here a failure drops
the connection, and the factory tries again with its backoff. Both the subscriber connection
(``pubsub``) and the command connection (``history``) open this way.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS

from ssebridge.address import RedisServer

__all__ = ["endpoint_for", "handshake"]


def endpoint_for(reactor: Any, server: RedisServer) -> IStreamClientEndpoint:
    """The Twisted client endpoint that reaches ``server``."""
    if server.kind == "unix":
        return UNIXClientEndpoint(reactor, server.path)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, server.host, server.port)
    if server.kind == "tls":
        endpoint = wrapClientTLS(optionsForClientTLS(server.host), endpoint)
    return endpoint



async def handshake(protocol: Any, timeout: float, reactor: IReactorTime) -> Exception | None:
    """Authenticate and select the database on ``protocol`` (a txredisapi ``RedisProtocol``).

    Returns ``None`` once the connection is ready (txredisapi's ``getConnection()`` callers are
    released), or the error after aborting the connection.
    """
    try:
        for command, args in (("auth", (protocol.password, protocol.username)), ("select", (protocol.dbid,))):
            if args[0] is None:
                continue
            pending = cast(Deferred[Any], getattr(protocol, command)(*args))
            response = await pending.addTimeout(timeout, reactor)
            if isinstance(response, Exception):
                raise response
    except Exception as e:
        protocol.transport.abortConnection()
        return e
    protocol.connected = 1
    protocol._ready = True
    # txredisapi's getConnection() callers wait here (its base class keeps the list).
    waiting: list[Deferred[Any]] = getattr(protocol, "_waiting_for_connect", [])
    protocol._waiting_for_connect = []
    for d in waiting:
        d.callback(protocol)
    return None
