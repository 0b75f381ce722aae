"""A channel resource mounted in a plain twisted.web Site, against a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site

from ssebridge.address import RedisServer
from ssebridge.http.resource import ChannelResource
from ssebridge.hub.channels import Hub
from ssebridge.redis.connect import redis_transport_factory
from ssebridge.testing import RedisProcess, connect_sse, redis_pipeline


async def until(predicate: Any, timeout: float = 5.0) -> None:
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError("condition not reached in time")
        await deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


@pytest_twisted.async_yield_fixture
async def site(redis: RedisProcess) -> AsyncIterator[tuple[Hub, int]]:
    hub = Hub(redis_transport_factory(reactor))
    server = RedisServer(host="127.0.0.1", port=redis.port)
    root = Resource()
    root.putChild(b"news", ChannelResource(hub, server, b"news"))
    root.putChild(b"raw", ChannelResource(hub, server, b"news", mode="sseraw"))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
    yield hub, port.getHost().port
    await port.stopListening()
    await hub.stop()


@pytest_twisted.ensureDeferred
async def test_one_subscription_for_many_clients_released_by_the_last(
    site: tuple[Hub, int], redis: RedisProcess
) -> None:
    hub, port = site
    clients = [await connect_sse(reactor, "127.0.0.1", port, b"/news") for _ in range(10)]
    assert all(c.status == 200 for c in clients)
    assert clients[0].headers[b"content-type"] == [b"text/event-stream"]
    assert redis.numsub("news") == 1
    assert redis.publish("news", "hello\nworld") == 1
    for c in clients:
        events = await c.wait_events(1)
        assert events[0].data == "hello\nworld"
    for c in clients[:-1]:
        await c.disconnect()
    await until(lambda: hub.subscriber_count() == 1)
    assert redis.numsub("news") == 1
    await clients[-1].disconnect()
    await until(lambda: redis.numsub("news") == 0)
    assert hub.channel_count() == 0


@pytest_twisted.ensureDeferred
async def test_burst_delivered_whole_and_in_order(site: tuple[Hub, int], redis: RedisProcess) -> None:
    _, port = site
    clients = [await connect_sse(reactor, "127.0.0.1", port, b"/news") for _ in range(20)]
    redis_pipeline(redis.address, [("PUBLISH", "news", f"m{i}") for i in range(2000)])
    for c in clients:
        events = await c.wait_events(2000, timeout=20)
        assert [e.data for e in events] == [f"m{i}" for i in range(2000)]
    for c in clients:
        await c.disconnect()


@pytest_twisted.ensureDeferred
async def test_raw_mode_writes_message_bytes_untouched(site: tuple[Hub, int], redis: RedisProcess) -> None:
    _, port = site
    raw = await connect_sse(reactor, "127.0.0.1", port, b"/raw")
    message = b"event: x\r\ndata: \xff\x00y\r\n\r\n"
    redis.publish("news", message)
    assert await raw.wait_raw(len(message)) == message
    await raw.disconnect()
