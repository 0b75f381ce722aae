"""Publishing events with ids from inside a reactor: ``ssebridge.publish.Publisher`` over txredisapi.

Same script, same validation, same ids as the redis-py publisher; every call returns a Deferred.
``twisted_publisher_for(address)`` makes one with its own connection from any server address the
bridge takes, a Sentinel-managed master included (it follows a failover as the bridge does), and a
Redis Cluster (``SPUBLISH`` at each channel's slot owner, following ``-MOVED`` and ``-ASK``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime

from ssebridge.address import RedisServer, parse_server
from ssebridge.publish.envelope import history_key
from ssebridge.publish.publisher import (
    DEFAULT_HISTORY_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    SCRIPT,
    PublishCall,
    channel_names,
    position_of,
)
from ssebridge.redis.cluster_commands import ClusterCommands
from ssebridge.redis.commands import command_factory
from ssebridge.redis.handshake import close_endpoint, endpoint_for

__all__ = ["TwistedPublisher", "twisted_publisher_for"]


def _text(reply: Any) -> str:
    return reply.decode("ascii") if isinstance(reply, bytes) else str(reply)


class TwistedPublisher:
    """``Publisher`` for code running in a reactor, given a connected txredisapi client.

    ``redis`` is what ``txredisapi.Connection()`` / ``lazyConnection()`` returns (any client with
    ``eval`` and ``execute_command``; on a cluster a ``ClusterCommands``, with ``sharded=True``). The
    options mean what they mean for ``Publisher``.
    """

    def __init__(
        self,
        redis: Any,
        *,
        history: int = DEFAULT_HISTORY_SIZE,
        max_age: float | None = None,
        ttl: float | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        sharded: bool = False,
    ) -> None:
        self._call = PublishCall(
            history=history, max_age=max_age, ttl=ttl, max_message_size=max_message_size, sharded=sharded
        )
        self._redis = redis
        #: Run by ``close()`` (``twisted_publisher_for`` sets it; a given client is the caller's).
        self._close: Callable[[], Deferred[None]] | None = None

    def close(self) -> Deferred[None]:
        """Close the connection ``twisted_publisher_for`` opened (nothing for a client given)."""
        close, self._close = self._close, None
        return close() if close is not None else succeed(None)

    def publish(
        self, channel: str | bytes, data: str | bytes, *, event: str | None = None, retry: int | None = None
    ) -> Deferred[str]:
        """The event's id, once it is in history and announced; a bad value raises ``ValueError`` now."""
        keys, args = self._call.arguments(channel, data, event, retry)
        d: Deferred[Any] = self._redis.eval(SCRIPT, keys, args)
        return d.addCallback(_text)

    def current_id(self, channels: str | bytes | Iterable[str | bytes]) -> Deferred[str]:
        names = channel_names(channels)
        replies = [
            self._redis.execute_command("XREVRANGE", history_key(n), "+", "-", "COUNT", 1) for n in names
        ]
        return gatherResults(replies).addCallback(lambda newest: position_of(names, newest))


def twisted_publisher_for(
    address: str | RedisServer, reactor: IReactorTime | None = None, *, timeout: float = 5.0, **options: Any
) -> TwistedPublisher:
    """A ``TwistedPublisher`` with a connection of its own to ``address`` (any form the bridge takes);
    ``options`` are ``TwistedPublisher``'s. Calls made before the connection is up wait for it;
    ``close()`` closes it.

    On a ``cluster://`` address it publishes with ``SPUBLISH`` at the master of each channel's slot and
    follows the cluster's redirections (``ssebridge.redis.cluster_commands``); a call the cluster does
    not run within ``timeout`` seconds fails with ``ClusterCommandError``."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = cast(IReactorTime, default_reactor)
    server = parse_server(address) if isinstance(address, str) else address
    if server.kind == "cluster":
        commands = ClusterCommands(server, reactor, timeout=timeout)
        clustered = TwistedPublisher(commands, **{**options, "sharded": True})
        clustered._close = commands.close
        return clustered
    endpoint = endpoint_for(reactor, server)
    factory = command_factory(server, reactor, timeout, endpoint)
    publisher = TwistedPublisher(factory.handler, **options)

    def close() -> Deferred[None]:
        return gatherResults([factory.disconnect(), close_endpoint(endpoint)]).addCallback(lambda _: None)

    publisher._close = close
    return publisher
