"""A Redis that refuses subscriptions (NOPERM from an ACL, NOAUTH from a password the bridge lacks):
each refusal is logs with its channel, counted, told to the channel's streams, retried with backoff,
and keeps the node unready while it lasts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from ssebridge.config.model import load_config
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import RedisProcess, SSEClient, connect_sse, free_port, redis_pipeline
from tests.helpers import publish_until_received, until

REFUSED = "subscription refused by the message server, retrying"


class Bridge:
    def __init__(self, service: BridgeService, port: int, ops: int, pool: HTTPConnectionPool) -> None:
        self.service = service
        self.port = port
        self.ops = ops
        self.pool = pool

    async def get(self, path: str) -> tuple[int, str]:
        response = await treq.get(f"http://127.0.0.1:{self.ops}{path}", pool=self.pool)
        return response.code, (await response.content()).decode()

    async def metric(self, name: str) -> float:
        _, text = await self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in metrics")

    async def stream(self, channel: str) -> SSEClient:
        return await connect_sse(reactor, "127.0.0.1", self.port, f"/s/{channel}".encode())


@pytest_twisted.async_yield_fixture
async def bridge(tmp_path: Path, redis: RedisProcess) -> AsyncIterator[Bridge]:
    port, ops = free_port(), free_port()
    config = tmp_path / "b.toml"
    config.write_text(
        f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "127.0.0.1:{redis.port}"\n'
        f'metrics_listen = "tcp:{ops}:interface=127.0.0.1"\n'
        '[[route]]\nmatch = "^/s/(.+)$"\naction = "sse:$1"\n'
    )
    service = BridgeService(load_config(config))
    await service.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    yield Bridge(service, port, ops, pool)
    await pool.closeCachedConnections()
    await service.stopService()


async def publish_until(redis: RedisProcess, client: SSEClient, channel: str, tag: str) -> None:
    """Publish ``tag`` until the client has it (the subscription may be on its way back)."""
    await publish_until_received(redis, [client], tag, timeout=10, channel=channel)


@pytest_twisted.ensureDeferred
async def test_an_acl_refusing_a_channel_is_logged_counted_told_and_retried(
    bridge: Bridge, redis: RedisProcess, logs: list[str]
) -> None:
    hub = bridge.service.hub
    await until(lambda: hub.not_ready() is None, what="ready")
    news, allowed = await bridge.stream("news"), await bridge.stream("allowed-1")
    await publish_until(redis, news, "news", "before")
    assert (await bridge.get("/readyz"))[0] == 200

    # Redis closes the subscriber whose channels the ACL no longer grants; the bridge reconnects and
    # its SUBSCRIBE news is answered with NOPERM.
    start = time.monotonic()
    # A channel is subscribed under two names, its own and its events' (``ssebridge:{allowed-1}:e``):
    # an ACL grants a channel by granting both.
    redis.command("ACL", "SETUSER", "default", "resetchannels", "&allowed*", "&ssebridge:{allowed*")
    await until(lambda: hub.refused_count() == 1, what="refusal noticed")
    refused_after = time.monotonic() - start
    code, text = await bridge.get("/readyz")
    assert code == 503 and "refuses 1 subscription" in text
    await until(lambda: REFUSED in news.parser.comments, what="the stream told")
    assert await bridge.metric("ssebridge_subscribe_refusals_total") >= 1
    assert await bridge.metric("ssebridge_subscriptions_refused") == 1
    assert await bridge.metric("ssebridge_redis_connected") == 1
    assert any("SUBSCRIBE b'news' refused (NOPERM" in line for line in logs)
    # The granted channel on the same connection is served meanwhile.
    await publish_until(redis, allowed, "allowed-1", "granted")
    # Retried with backoff, not given up, and nothing piles up in txredisapi's reply queue.
    transport: Any = hub.groups[bridge.service.config.redis].transport
    await until(lambda: transport.retries.refusals.get(b"news", 0) >= 2, what="retried")
    assert not transport.protocol.replyQueue.pending

    start = time.monotonic()
    redis.command("ACL", "SETUSER", "default", "allchannels")
    await until(lambda: hub.not_ready() is None, what="ready again")
    ready_after = time.monotonic() - start
    assert (await bridge.get("/readyz"))[0] == 200
    await publish_until(redis, news, "news", "after")
    assert any("SUBSCRIBE b'news' accepted after" in line for line in logs)
    print(f"\nNOPERM: unready {refused_after:.2f}s after the ACL change, ready {ready_after:.2f}s after")
    for c in (news, allowed):
        await c.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_password_the_bridge_lacks_makes_it_unready_until_it_is_lifted(
    bridge: Bridge, redis: RedisProcess, logs: list[str]
) -> None:
    hub = bridge.service.hub
    await until(lambda: hub.not_ready() is None, what="ready")
    news = await bridge.stream("news")
    await publish_until(redis, news, "news", "before")

    # As after a restart with --requirepass: a password is set and the subscriber's connection is new.
    start = time.monotonic()
    redis_pipeline(
        redis.address,
        [("CONFIG", "SET", "requirepass", "secret"), ("CLIENT", "KILL", "TYPE", "pubsub")],
    )
    await until(lambda: hub.refused_count() == 1, what="refusal noticed")
    refused_after = time.monotonic() - start
    code, text = await bridge.get("/readyz")
    assert code == 503
    # PING is refused too: the connection is not up, and the gauge agrees with readiness.
    assert await bridge.metric("ssebridge_redis_connected") == 0
    await until(lambda: REFUSED in news.parser.comments, what="the stream told")
    assert any("SUBSCRIBE b'news' refused (NOAUTH" in line for line in logs)
    assert await bridge.metric("ssebridge_subscribe_refusals_total") >= 1

    start = time.monotonic()
    redis_pipeline(redis.address, [("AUTH", "secret"), ("CONFIG", "SET", "requirepass", "")])
    await until(lambda: hub.not_ready() is None, what="ready again")
    ready_after = time.monotonic() - start
    assert (await bridge.get("/readyz"))[0] == 200
    await publish_until(redis, news, "news", "after")
    print(f"\nNOAUTH: unready {refused_after:.2f}s after the kill, ready {ready_after:.2f}s after the fix")
    await news.disconnect()
