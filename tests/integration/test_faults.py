"""Redis going away and coming back, and clients that do not read: the bridge keeps its promises."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.resource import Resource

from ssebridge.address import RedisServer
from ssebridge.http.resource import ChannelResource
from ssebridge.http.site import BridgeSite
from ssebridge.hub.channels import Hub
from ssebridge.redis.connect import redis_transport_factory
from ssebridge.testing import RedisProcess, connect_sse
from tests.helpers import publish_until_received, sleep, until


class Fixture:
    def __init__(self, hub: Hub, port: int, redis: RedisProcess) -> None:
        self.hub = hub
        self.port = port
        self.redis = redis

    def transport(self) -> Any:
        return next(iter(self.hub.groups.values())).transport


@pytest_twisted.async_yield_fixture
async def bridge(redis: RedisProcess) -> AsyncIterator[Fixture]:
    hub = Hub(redis_transport_factory(reactor))
    server = RedisServer(host="127.0.0.1", port=redis.port)
    root = Resource()
    news = ChannelResource(hub, server, b"news", client_buffer=256 * 1024, confirm_timeout=1.0)
    root.putChild(b"news", news)
    site = BridgeSite(root, header_timeout=1.0)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    hub.connect(server)
    yield Fixture(hub, port.getHost().port, redis)
    await port.stopListening()
    await hub.stop()


@pytest_twisted.ensureDeferred
async def test_redis_killed_and_restarted_streams_stay_and_receive_again(bridge: Fixture) -> None:
    clients = [await connect_sse(reactor, "127.0.0.1", bridge.port, b"/news") for _ in range(5)]
    bridge.redis.publish("news", "before")
    for c in clients:
        await c.wait_events(1)
    bridge.redis.kill()
    await until(lambda: not bridge.transport().connected, what="disconnect noticed")
    bridge.redis.start()
    await until(lambda: bridge.redis.numsub("news") == 1, timeout=5, what="resubscribed")
    took = await publish_until_received(bridge.redis, clients, "after", timeout=2.0)
    assert took < 2.0
    assert all(not c.closed.called for c in clients)
    for c in clients:
        await c.disconnect()


@pytest_twisted.ensureDeferred
async def test_frozen_redis_is_detected_and_the_bridge_recovers(bridge: Fixture) -> None:
    client = await connect_sse(reactor, "127.0.0.1", bridge.port, b"/news")
    first = bridge.transport().protocol
    bridge.redis.freeze()
    try:
        # The socket stays open; only the health check can tell.
        await until(
            lambda: bridge.transport().protocol is not first, timeout=8, what="dead connection dropped"
        )
        # The frozen server's kernel still accepts new connections; until Redis answers on one, the
        # bridge must not call itself connected (readiness, metrics).
        seen_up = False
        for _ in range(30):
            seen_up = seen_up or bridge.transport().connected or bridge.hub.connected()
            await sleep(0.05)
        assert not seen_up
    finally:
        bridge.redis.thaw()
    await until(lambda: bridge.redis.numsub("news") == 1, timeout=5, what="resubscribed")
    await publish_until_received(bridge.redis, [client], "thawed", timeout=2.0)
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_client_arriving_while_redis_is_down_receives_once_it_is_back(bridge: Fixture) -> None:
    bridge.redis.kill()
    await until(lambda: not bridge.transport().connected, what="disconnect noticed")
    client = await connect_sse(reactor, "127.0.0.1", bridge.port, b"/news", timeout=5)
    assert client.status == 200  # an EventSource given anything else would never retry
    bridge.redis.start()
    await publish_until_received(bridge.redis, [client], "late", timeout=5.0)
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_is_cut_off_and_delays_no_one(bridge: Fixture) -> None:
    # A raw socket with a tiny receive buffer that never reads.
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", bridge.port))
    stalled.sendall(b"GET /news HTTP/1.1\r\nHost: x\r\n\r\n")
    reader = await connect_sse(reactor, "127.0.0.1", bridge.port, b"/news")
    await until(lambda: bridge.hub.subscriber_count() == 2, what="both attached")
    payload = "x" * 16 * 1024
    for i in range(300):  # ~4.8 MB to each client
        bridge.redis.publish("news", f"{i} {payload}")
        if i % 20 == 0:
            await sleep(0)
    events = await reader.wait_events(300, timeout=20)
    assert [e.data.split(" ")[0] for e in events] == [str(i) for i in range(300)]
    await until(lambda: bridge.hub.stats.slow_clients_disconnected == 1, what="slow client cut")
    assert bridge.hub.subscriber_count() == 1
    stalled.close()
    await reader.disconnect()


@pytest_twisted.ensureDeferred
async def test_headers_sent_a_byte_at_a_time_are_cut_off(bridge: Fixture) -> None:
    s = socket.socket()
    s.connect(("127.0.0.1", bridge.port))
    s.setblocking(False)
    request = b"GET /news HTTP/1.1\r\nHost: x\r\n\r\n"
    closed = False
    for byte in request[:-1]:
        try:
            s.send(bytes([byte]))
            if s.recv(1) == b"":
                closed = True
                break
        except BlockingIOError:
            pass
        except OSError:
            closed = True
            break
        await sleep(0.1)
    s.close()
    assert closed, "a slow-header client kept its connection past the header timeout"


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest_twisted.ensureDeferred
async def test_health_pings_leave_nothing_queued(bridge: Fixture) -> None:
    # Outside subscribe mode Redis answers PING with a plain +PONG, which nothing waits for.
    await until(lambda: bridge.transport().connected, what="connected")
    await sleep(2.6)
    assert not bridge.transport().protocol.replyQueue.pending


@pytest_twisted.ensureDeferred
async def test_a_reconnect_stuck_in_select_keeps_retrying(redis: RedisProcess) -> None:
    """txredisapi gives up for good when SELECT fails, a lost connection included; the bridge must not."""
    hub = Hub(redis_transport_factory(reactor))
    server = RedisServer(host="127.0.0.1", port=redis.port, db=1)
    root = Resource()
    root.putChild(b"news", ChannelResource(hub, server, b"news", confirm_timeout=1.0))
    port = reactor.listenTCP(0, BridgeSite(root), interface="127.0.0.1")  # type: ignore[attr-defined]
    hub.connect(server)
    try:
        client = await connect_sse(reactor, "127.0.0.1", port.getHost().port, b"/news")
        transport = next(iter(hub.groups.values())).transport
        first = transport.protocol
        redis.freeze()
        try:
            await until(lambda: transport.protocol is not first, timeout=8, what="dead connection dropped")
            await sleep(0.5)  # a reconnect reaches the frozen server's kernel and waits on SELECT
        finally:
            redis.kill()
        redis.start()
        await until(lambda: redis.numsub("news") == 1, timeout=8, what="resubscribed")
        await publish_until_received(redis, [client], "back", timeout=3.0)
        await client.disconnect()
    finally:
        await port.stopListening()
        await hub.stop()


@pytest_twisted.ensureDeferred
async def test_a_message_over_the_output_buffer_limit_is_explained_and_bystanders_recover() -> None:
    """Redis closes a subscriber whose output buffer passes ``client-output-buffer-limit pubsub``: one
    big message costs every channel of the connection. The bridge says why, and resubscribes."""
    redis = RedisProcess(extra_args=("--client-output-buffer-limit", "pubsub 1mb 1mb 0")).start()
    lines: list[str] = []

    def observe(event: Any) -> None:
        lines.append(formatEvent(event))

    hub = Hub(redis_transport_factory(reactor), max_message_size=4 * 1024 * 1024)
    server = RedisServer(host="127.0.0.1", port=redis.port)
    root = Resource()
    for name in (b"big", b"bystander"):
        root.putChild(name, ChannelResource(hub, server, name, confirm_timeout=1.0))
    port = reactor.listenTCP(0, BridgeSite(root), interface="127.0.0.1")  # type: ignore[attr-defined]
    hub.connect(server)
    globalLogPublisher.addObserver(observe)
    try:
        big = await connect_sse(reactor, "127.0.0.1", port.getHost().port, b"/big")
        bystander = await connect_sse(reactor, "127.0.0.1", port.getHost().port, b"/bystander")
        await publish_until_received(redis, [bystander], "before", timeout=5.0, channel="bystander")
        redis.publish("big", "x" * (2 * 1024 * 1024))
        await until(lambda: hub.stats.redis_disconnects == 1, what="the subscriber closed by Redis")
        await until(
            lambda: any("client-output-buffer-limit" in line for line in lines), what="the cause logged"
        )
        explained = next(line for line in lines if "client-output-buffer-limit" in line)
        assert "without restarting" in explained and "hard 1048576 bytes" in explained
        print(f"\n{explained}")
        await until(lambda: redis.numsub("bystander") == 1, what="resubscribed")
        await publish_until_received(redis, [bystander], "after", timeout=5.0, channel="bystander")
        assert not bystander.closed.called and not big.closed.called
        for c in (big, bystander):
            await c.disconnect()
    finally:
        globalLogPublisher.removeObserver(observe)
        await port.stopListening()
        await hub.stop()
        redis.cleanup()
