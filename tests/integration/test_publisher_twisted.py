"""The Twisted publisher (``ssebridge.redis.publisher``) against a real redis-server."""

from __future__ import annotations

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import reactor

from ssebridge.publish.envelope import history_key, parse_id
from ssebridge.redis.publisher import TwistedPublisher
from ssebridge.testing import RedisProcess


@pytest_twisted.ensureDeferred
async def test_publish_and_current_id_from_a_reactor(shared_redis: RedisProcess) -> None:
    conn = await txredisapi.Connection(
        "127.0.0.1", shared_redis.port, reconnect=False, charset=None, convertNumbers=False
    ).addTimeout(10, reactor)
    try:
        publisher = TwistedPublisher(conn, history=50)
        assert await publisher.current_id("tw-a").addTimeout(10, reactor) == "0-0"
        first = await publisher.publish("tw-a", "hello\nworld", event="greet").addTimeout(10, reactor)
        second = await publisher.publish(b"tw-a", b"\x00bytes").addTimeout(10, reactor)
        assert parse_id(first) < parse_id(second)  # type: ignore[operator]
        assert await publisher.current_id(["tw-a"]).addTimeout(10, reactor) == second
        entries = shared_redis.command("XRANGE", history_key(b"tw-a"), "-", "+")
        assert entries == [
            [first.encode(), [b"d", b"hello\nworld", b"e", b"greet"]],
            [second.encode(), [b"d", b"\x00bytes"]],
        ]
        with pytest.raises(ValueError):
            publisher.publish("tw-a", "x", retry=-1)
    finally:
        await conn.disconnect()
