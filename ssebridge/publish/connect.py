"""A ``Publisher`` from an address: the same address forms the bridge takes, one call.

``publisher_for("redis://cache:6379/0")`` makes the redis-py client that reaches that address and the
``Publisher`` over it. Each kind of address has its client: a server (``host:port``, ``redis://``,
``rediss://``, ``unix://``) a ``redis.Redis``; a Sentinel-managed master (``sentinel://``) the master
client of ``redis.sentinel.Sentinel``, which asks the sentinels again after a failover; a cluster
(``cluster://``) a ``redis.cluster.RedisCluster``, with ``SPUBLISH`` (sharded pub/sub).
"""

from __future__ import annotations

from typing import Any

from ssebridge.address import RedisServer, parse_server
from ssebridge.publish.publisher import Publisher

__all__ = ["publisher_for", "redis_client_for"]


def redis_client_for(server: RedisServer, **client_options: Any) -> Any:
    """The redis-py client that reaches ``server`` (``client_options`` go to its constructor)."""
    import redis

    if server.kind == "unix":
        return redis.Redis(
            unix_socket_path=server.path,
            username=server.username,
            password=server.password,
            db=server.db or 0,
            **client_options,
        )
    if server.kind in ("tcp", "tls"):
        return redis.Redis(
            host=server.host,
            port=server.port,
            username=server.username,
            password=server.password,
            db=server.db or 0,
            ssl=server.kind == "tls",
            **client_options,
        )
    if server.kind == "sentinel":
        from redis.sentinel import Sentinel

        # redis-py asks the sentinels again whenever a connection to the master drops, and drops one
        # answering READONLY (a demoted master), so a publish retried after a failover reaches the new one.
        sentinel_kwargs = {
            k: v
            for k, v in (("username", server.sentinel_username), ("password", server.sentinel_password))
            if v is not None
        }
        timeouts = {
            k: v for k, v in client_options.items() if k in ("socket_timeout", "socket_connect_timeout")
        }
        sentinels = Sentinel(list(server.nodes), sentinel_kwargs={**timeouts, **sentinel_kwargs})
        return sentinels.master_for(
            server.master,
            username=server.username,
            password=server.password,
            db=server.db or 0,
            **client_options,
        )
    if server.kind == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        # redis-py routes EVALSHA by its first key's slot, and publish.lua's key and its SPUBLISH
        # channel share the channel's hash tag: one node, one atomic step. It follows MOVED/ASK and
        # reads the slot map again after a failover.
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in server.nodes],  # type: ignore[no-untyped-call]
            username=server.username,
            password=server.password,
            **client_options,
        )
    raise ValueError(f"{server.kind}:// addresses are not supported by the publisher yet")


def publisher_for(address: str | RedisServer, **options: Any) -> Publisher:
    """A ``Publisher`` for ``address`` (any form ``ssebridge.address.parse_server`` reads).

    ``options`` are ``Publisher``'s (``history``, ``max_age``, ``ttl``, ``max_message_size``). A bad
    address is a ``ValueError`` naming what is wrong with it.
    """
    server = parse_server(address) if isinstance(address, str) else address
    return Publisher(redis_client_for(server), sharded=server.kind == "cluster", **options)
