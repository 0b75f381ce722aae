"""Prometheus metrics and health checks, on a separate listener and on the main one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from ssebridge.config.model import load_config
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import RedisProcess, connect_sse, free_port
from tests.helpers import until


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


@pytest_twisted.async_yield_fixture
async def bridge(tmp_path: Path, redis: RedisProcess) -> AsyncIterator[tuple[BridgeService, int, int]]:
    port, ops = free_port(), free_port()
    config = tmp_path / "m.toml"
    config.write_text(
        f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "127.0.0.1:{redis.port}"\n'
        f'metrics_listen = "tcp:{ops}:interface=127.0.0.1"\nmax_message_size = 100\n'
        '[[route]]\nmatch = "^/s/(.+)$"\naction = "sse:$1"\n'
    )
    service = BridgeService(load_config(config))
    await service.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    service.test_pool = pool  # type: ignore[attr-defined]
    yield service, port, ops
    await pool.closeCachedConnections()
    await service.stopService()


async def get(service: BridgeService, url: str) -> tuple[int, str]:
    response = await treq.get(url, pool=service.test_pool)  # type: ignore[attr-defined]
    return response.code, (await response.content()).decode()


@pytest_twisted.ensureDeferred
async def test_metrics_count_what_happens(
    bridge: tuple[BridgeService, int, int], redis: RedisProcess
) -> None:
    service, port, ops = bridge
    base = f"http://127.0.0.1:{ops}"
    await until(lambda: service.hub.connected(), what="redis connected")
    assert await get(service, base + "/livez") == (200, "ok\n")
    assert (await get(service, base + "/readyz"))[0] == 200
    clients = [await connect_sse(reactor, "127.0.0.1", port, b"/s/a") for _ in range(3)]
    clients.append(await connect_sse(reactor, "127.0.0.1", port, b"/s/b"))
    redis.publish("a", "hello")
    redis.publish("a", "x" * 101)
    for c in clients[:3]:
        await c.wait_events(1)
    code, text = await get(service, base + "/metrics")
    assert code == 200
    assert metric(text, "ssebridge_streams_open") == 4
    assert metric(text, "ssebridge_channels_subscribed") == 2
    assert metric(text, "ssebridge_frames_delivered_total") == 3
    assert metric(text, "ssebridge_messages_oversize_total") == 1
    assert metric(text, "ssebridge_messages_received_total") == 2
    assert metric(text, "ssebridge_redis_connected") == 1
    # The main listener does not expose them.
    assert (await get(service, f"http://127.0.0.1:{port}/metrics"))[0] == 404
    for c in clients:
        await c.disconnect()
    await until(lambda: service.hub.channel_count() == 0)
    code, text = await get(service, base + "/metrics")
    assert metric(text, "ssebridge_streams_closed_total") == 4


@pytest_twisted.ensureDeferred
async def test_readyz_follows_redis(bridge: tuple[BridgeService, int, int], redis: RedisProcess) -> None:
    service, _, ops = bridge
    await until(lambda: service.hub.connected(), what="redis connected")
    redis.kill()
    await until(lambda: not service.hub.connected(), what="disconnect noticed")
    code, text = await get(service, f"http://127.0.0.1:{ops}/readyz")
    assert code == 503 and "Redis" in text
    assert (await get(service, f"http://127.0.0.1:{ops}/livez"))[0] == 200
    _, metrics = await get(service, f"http://127.0.0.1:{ops}/metrics")
    assert metric(metrics, "ssebridge_redis_connected") == 0
    redis.start()
    await until(lambda: service.hub.connected(), timeout=10, what="reconnected")
    assert (await get(service, f"http://127.0.0.1:{ops}/readyz"))[0] == 200


@pytest_twisted.ensureDeferred
async def test_metrics_path_on_the_main_listener(tmp_path: Path, redis: RedisProcess) -> None:
    port = free_port()
    config = tmp_path / "p.ini"
    config.write_text(
        f"[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = 127.0.0.1:{redis.port}\n"
        "metrics-path = /ops/metrics\n"
    )
    service = BridgeService(load_config(config))
    await service.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        response = await treq.get(f"http://127.0.0.1:{port}/ops/metrics", pool=pool)
        assert response.code == 200 and b"ssebridge_streams_open" in await response.content()
        live = await treq.get(f"http://127.0.0.1:{port}/ops/livez", pool=pool)
        assert live.code == 200
        await live.content()
    finally:
        await pool.closeCachedConnections()
        await service.stopService()
