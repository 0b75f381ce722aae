"""What the hub is given to reach Redis: a transport and a history per server key, chosen by its kind.

A key is a ``RedisServer``. A plain server (``tcp``, ``tls``, ``unix``) and a Sentinel-managed master
(``sentinel``: the connection finds the master through the sentinels at each connect) share one
transport and one history class; a Redis Cluster (``cluster``) has its own, which keeps the slot map
and one connection per node. Everything that builds a hub goes through here, so a new kind of
deployment is one branch in each factory.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from ssebridge.address import RedisServer
from ssebridge.hub.channels import Hub
from ssebridge.interfaces import History, Transport, TransportFactory, TransportSink
from ssebridge.redis.cluster import ClusterHistory, ClusterTransport
from ssebridge.redis.history import RedisHistory
from ssebridge.redis.pubsub import RedisTransport

__all__ = ["redis_history_factory", "redis_hub", "redis_transport_factory"]


def _server(key: Hashable) -> RedisServer:
    if not isinstance(key, RedisServer):
        raise TypeError(f"a Redis transport needs a RedisServer key, not {key!r}")
    return key


def redis_transport_factory(reactor: IReactorTime | None = None) -> TransportFactory:
    """A ``TransportFactory`` for the hub: one transport per ``RedisServer`` key."""

    def make(key: Hashable, sink: TransportSink) -> Transport:
        server = _server(key)
        if server.kind == "cluster":
            return ClusterTransport(server, sink, reactor)
        return RedisTransport(server, sink, reactor)

    return make


def redis_history_factory(reactor: IReactorTime | None = None) -> Callable[[Hashable], History | None]:
    """A ``HistoryFactory`` for the hub: one history per ``RedisServer`` key (it connects on its first
    read)."""

    def make(key: Hashable) -> History | None:
        if not isinstance(key, RedisServer):
            return None
        if key.kind == "cluster":
            return ClusterHistory(key, reactor)
        return RedisHistory(key, reactor)

    return make


def redis_hub(reactor: IReactorTime | None = None, **options: Any) -> Hub:
    """A ``Hub`` fed by Redis pub/sub, with each server's history (Redis Streams) for resuming clients:
    the usual way to make one when mounting streams yourself."""
    options.setdefault("make_history", redis_history_factory(reactor))
    return Hub(redis_transport_factory(reactor), **options)
