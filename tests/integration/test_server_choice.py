"""A server named by the request (a templated ``server=$1``) must be one the config declares: anything
else is a 400 with no connection attempt, so a client can neither make the bridge connect anywhere nor
leave reconnect loops behind; a transport left without channels is closed; readiness means the
configured servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from ssebridge.address import RedisServer
from ssebridge.config.model import load_config
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import RedisProcess, connect_sse, free_port
from tests.helpers import until


class Bridge:
    def __init__(self, service: BridgeService, port: int, ops: int, pool: HTTPConnectionPool) -> None:
        self.service = service
        self.port = port
        self.ops = ops
        self.pool = pool

    async def get(self, url: str) -> tuple[int, str]:
        response = await treq.get(url, pool=self.pool, timeout=5)
        return response.code, (await response.content()).decode()


@pytest_twisted.async_yield_fixture
async def bridge(tmp_path: Path, redis: RedisProcess) -> AsyncIterator[Bridge]:
    second = RedisProcess().start()
    port, ops = free_port(), free_port()
    config = tmp_path / "s.toml"
    config.write_text(
        f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "127.0.0.1:{redis.port}"\n'
        f'metrics_listen = "tcp:{ops}:interface=127.0.0.1"\n'
        '[[route]]\nmatch = "^/s/([^/]+)/(.+)$"\naction = "sse:server=$1,subscribe=$2"\n'
        f'[[route]]\nmatch = "^/second/(.+)$"\naction = "sse:server=127.0.0.1:{second.port},subscribe=$1"\n'
    )
    service = BridgeService(load_config(config))
    await service.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    b = Bridge(service, port, ops, pool)
    b.second = second  # type: ignore[attr-defined]
    yield b
    await pool.closeCachedConnections()
    await service.stopService()
    second.cleanup()


@pytest_twisted.ensureDeferred
async def test_a_server_the_config_does_not_declare_is_refused_without_connecting(
    bridge: Bridge, redis: RedisProcess
) -> None:
    hub = bridge.service.hub
    await until(lambda: hub.not_ready() is None, what="ready")
    base = f"http://127.0.0.1:{bridge.port}"
    # The reproduction: ports nothing listens on, each a reconnect loop before the fix.
    for i in range(100):
        code, text = await bridge.get(f"{base}/s/127.0.0.1:{31000 + i}/x")
        assert code == 400 and "not one the configuration declares" in text
    # Other names of a configured server are other servers to the bridge: refused too.
    for target in ("localhost:6379", f"localhost:{redis.port}", "[::1]:6379"):
        code, _ = await bridge.get(f"{base}/s/{target}/x")
        assert code == 400
    # Nothing connected: only the configured server's transport exists.
    assert list(hub.groups) == [bridge.service.config.redis]
    print(f"\nafter 100 requests naming undeclared servers: {len(hub.groups) - 1} extra transports")
    code, _ = await bridge.get(f"http://127.0.0.1:{bridge.ops}/readyz")
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_a_declared_server_named_by_the_request_streams(bridge: Bridge, redis: RedisProcess) -> None:
    hub = bridge.service.hub
    await until(lambda: hub.not_ready() is None, what="ready")
    client = await connect_sse(reactor, "127.0.0.1", bridge.port, f"/s/127.0.0.1:{redis.port}/news".encode())
    assert client.status == 200
    await until(lambda: redis.numsub("news") == 1, what="subscribed")
    redis.publish("news", "hello")
    assert (await client.wait_events(1))[0].data == "hello"
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_transport_left_without_channels_is_closed_and_does_not_decide_readiness(
    bridge: Bridge,
) -> None:
    hub = bridge.service.hub
    second: RedisProcess = bridge.second  # type: ignore[attr-defined]
    key = RedisServer(host="127.0.0.1", port=second.port)
    await until(lambda: hub.not_ready() is None, what="ready")
    client = await connect_sse(reactor, "127.0.0.1", bridge.port, b"/second/news")
    await until(lambda: second.numsub("news") == 1, what="subscribed on the second server")
    assert key in hub.groups
    # The second server going away is that route's problem, not the node's.
    second.kill()
    await until(lambda: not hub.groups[key].transport.connected, what="second server down noticed")
    code, _ = await bridge.get(f"http://127.0.0.1:{bridge.ops}/readyz")
    assert code == 200
    await client.disconnect()
    await until(lambda: key not in hub.groups, what="transport closed")
    assert list(hub.groups) == [bridge.service.config.redis]
