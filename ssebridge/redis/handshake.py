"""Reaching a Redis server: its client endpoint (``endpoint_for``), and AUTH and SELECT on a new
txredisapi connection with a deadline (``handshake``): txredisapi's own ``connectionMade``, made to retry.

txredisapi stops reconnecting for good when AUTH or SELECT fails for any reason, a connection lost
midway included, and waits for their answers without a deadline (a frozen Redis). Here a failure drops
the connection, and the factory tries again with its backoff. Both the subscriber connection
(``pubsub``) and the command connection (``history``) open this way.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS

from ssebridge.address import RedisServer

__all__ = [
    "NotMaster",
    "close_endpoint",
    "endpoint_for",
    "factory_for",
    "handshake",
    "peer_of",
    "switched_away",
]


class NotMaster(Exception):
    """A Sentinel-managed connection reached a server whose ``ROLE`` is not master."""


_Factory = TypeVar("_Factory")


def factory_for(factory_class: type[_Factory], server: RedisServer) -> _Factory:
    """A txredisapi factory of ``factory_class`` for ``server``: one lazy connection, replies as bytes
    (no decoding, no number conversion), with the server's credentials and database for ``handshake``."""
    return factory_class(  # type: ignore[call-arg]
        None,
        server.db,
        1,
        isLazy=True,
        charset=None,
        password=server.password,
        convertNumbers=False,
        username=server.username,
    )


def endpoint_for(reactor: Any, server: RedisServer) -> IStreamClientEndpoint:
    """The Twisted client endpoint that reaches ``server``.

    For a ``sentinel://`` address, an endpoint that asks the sentinels for the master at every connect
    (``ssebridge.redis.sentinel``); its owner calls ``close_endpoint`` when it stops.
    """
    if server.kind == "sentinel":
        from ssebridge.redis.sentinel import SentinelEndpoint

        return SentinelEndpoint(reactor, server)
    if server.kind == "unix":
        return UNIXClientEndpoint(reactor, server.path)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, server.host, server.port)
    if server.kind == "tls":
        endpoint = wrapClientTLS(optionsForClientTLS(server.host), endpoint)
    return endpoint


def close_endpoint(endpoint: IStreamClientEndpoint) -> Deferred[None]:
    """Release what an endpoint from ``endpoint_for`` holds besides its connections (a Sentinel
    endpoint's watcher of ``+switch-master``); the owner calls it when it stops connecting."""
    close = getattr(endpoint, "close", None)
    return cast(Deferred[None], close()) if close is not None else succeed(None)


def switched_away(endpoint: IStreamClientEndpoint, protocol: Any) -> tuple[str, int] | None:
    """The new master's address when ``endpoint`` (a Sentinel endpoint) closed ``protocol``'s connection
    because the sentinels announced a switch; ``None`` for any other close and any other endpoint."""
    probe = getattr(endpoint, "switched_away", None)
    return cast("tuple[str, int] | None", probe(protocol)) if probe is not None else None


def peer_of(protocol: Any) -> str:
    """``host:port`` (or the socket path) of the server ``protocol`` is connected to."""
    peer = protocol.transport.getPeer()
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(getattr(peer, "name", peer))


async def handshake(
    protocol: Any, timeout: float, reactor: IReactorTime, *, master: bool = False
) -> Exception | None:
    """Authenticate and select the database on ``protocol`` (a txredisapi ``RedisProtocol``); with
    ``master`` (a Sentinel-managed address), also check that ``ROLE`` says master.

    Returns ``None`` once the connection is ready (txredisapi's ``getConnection()`` callers are
    released), or the error after aborting the connection. A replica refused here is dropped and the
    reconnect asks the sentinels again, with the factory's backoff: txredisapi counts a connection
    dropped before it was ready as a failed attempt.
    """
    try:
        for command, args in (("auth", (protocol.password, protocol.username)), ("select", (protocol.dbid,))):
            if args[0] is None:
                continue
            pending = cast(Deferred[Any], getattr(protocol, command)(*args))
            response = await pending.addTimeout(timeout, reactor)
            if isinstance(response, Exception):
                raise response
        if master:
            pending = cast(Deferred[Any], protocol.execute_command("ROLE"))
            role = await pending.addTimeout(timeout, reactor)
            if isinstance(role, Exception):
                raise role
            name = role[0] if isinstance(role, list) and role else role
            if name not in (b"master", "master"):
                peer = protocol.transport.getPeer()
                raise NotMaster(
                    f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')} is not the master "
                    f"(ROLE {name!r}); asking the sentinels again"
                )
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
