"""``-LOADING``: a Redis restarted with a dataset to load answers most commands with it for a while.

Provoked for real: a dataset of 12,000 keys, saved, loaded again at 100 µs per key (``key-load-delay``,
with ``loading-process-events-interval-bytes`` small so that Redis answers clients while it loads):
about 2 s of ``-LOADING``, within the history reads' 5 s deadline. SUBSCRIBE, ROLE, AUTH and SELECT
are served while loading; PING and the history read (EVALSHA) are not.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor, threads

from ssebridge.config.model import load_config
from ssebridge.publish.connect import publisher_for
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import RedisProcess, connect_sse, free_port
from tests.helpers import until

SLOW_LOAD = ("--key-load-delay", "100", "--loading-process-events-interval-bytes", "1024")


@pytest_twisted.ensureDeferred
async def test_a_restarted_redis_loading_its_dataset_is_waited_for_not_an_error_per_channel(
    tmp_path: Path, logs: list[str]
) -> None:
    """Streams on ten channels; Redis restarts and loads for a few seconds. The bridge is not ready meanwhile
    (one log line says why), the channels' catch-up reads wait for the load instead of failing (no
    gap told to any client, no line per channel), and every stream receives again afterwards."""
    redis = RedisProcess(extra_args=("--enable-debug-command", "yes")).start()
    service: BridgeService | None = None
    try:
        redis.command("DEBUG", "POPULATE", 12_000, "filler")
        port = free_port()
        config = tmp_path / "loading.toml"
        config.write_text(
            f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "127.0.0.1:{redis.port}"\n'
            '[[route]]\nmatch = "^/events/(.+)$"\naction = "sse:$1"\n'
        )
        service = BridgeService(load_config(config))
        await service.startService()
        channels = [f"c{i}" for i in range(10)]
        clients = [await connect_sse(reactor, "127.0.0.1", port, f"/events/{c}".encode()) for c in channels]
        await until(lambda: all(redis.numsub(c) == 1 for c in channels), what="subscribed")
        publisher = publisher_for(f"redis://127.0.0.1:{redis.port}")
        before = [publisher.publish(c, "before") for c in channels]
        for client in clients:
            await client.wait_events(1)
        redis.command("SAVE")
        redis.stop()
        redis.extra_args = redis.extra_args + SLOW_LOAD
        restarted = time.monotonic()
        started = threads.deferToThread(redis.start, 30.0)  # returns once loaded (PING answers PONG)

        def loading_logged() -> bool:
            return any("loading its dataset" in line for line in logs)

        await until(loading_logged, timeout=10, what="loading logged")
        assert service.hub.not_ready() is not None
        await started
        loaded = time.monotonic() - restarted
        await until(lambda: service is not None and service.hub.not_ready() is None, what="ready again")
        after = await threads.deferToThread(lambda: [publisher.publish(c, "after") for c in channels])
        for client, first, second in zip(clients, before, after, strict=True):
            events = await client.wait_events(2)
            assert [(e.event, e.data, e.id) for e in events] == [
                ("message", "before", first),
                ("message", "after", second),
            ], "\n".join(line for line in logs if "redis" in line or "history" in line)
            assert not client.closed.called
            await client.disconnect()
        loading = [line for line in logs if "LOADING" in line]
        print(f"\nredis loading for {loaded:.1f}s after the restart; LOADING log lines: {len(loading)}")
        # The subscriber's line and the history's: not one per channel, not one per retry.
        assert 1 <= len(loading) <= 2, loading
        assert not any("catching" in line and "failed" in line for line in logs)
    finally:
        if service is not None:
            await service.stopService()
        redis.cleanup()
