"""Fixtures: private redis-server processes, an in-process bridge, the log lines of a test, and a check
that no test leaks timers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from ssebridge.config.model import load_config
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import RedisProcess, free_port
from tests.helpers import APPS, RunBridge


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    """A redis-server of this test's own (TCP on a free port, and a unix socket)."""
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisProcess]:
    """A redis-server shared by tests that only publish and subscribe (faster than one per test)."""
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest_twisted.async_yield_fixture
async def run_bridge(tmp_path: Path, redis: RedisProcess) -> AsyncIterator[RunBridge]:
    """Start in-process bridges from ini text; stop them (and remove their configs) afterwards.

    The text is a ``str.format`` template: ``{port}`` (a free port), ``{redis}`` (this test's Redis),
    ``{sock}`` (its unix socket) and ``{apps}`` (``tests/apps``).
    """
    services: list[BridgeService] = []

    async def start(text: str, directory: Path = tmp_path) -> BridgeService:
        path = directory / f"bridge-{len(services)}.ini"
        path.write_text(
            text.format(
                port=free_port(),
                redis=f"127.0.0.1:{redis.port}",
                sock=redis.unix_socket,
                apps=APPS,
            )
        )
        service = BridgeService(load_config(path))
        await service.startService()
        services.append(service)
        return service

    yield start
    for service in services:
        await service.stopService()
    for path in tmp_path.glob("bridge-*.ini"):
        path.unlink()


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every log line while the test runs, formatted as a human reads it."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


@pytest.fixture(autouse=True)
def no_leaked_delayed_calls() -> Iterator[None]:
    """Fail a test that leaves timers behind in the reactor (pytest-twisted does not check, trial did)."""
    before = set(reactor.getDelayedCalls())  # type: ignore[attr-defined]
    yield
    # Let callLater(0, ...) clean-ups from connection teardown run.
    pytest_twisted.blockon(_settle())
    leaked = [c for c in reactor.getDelayedCalls() if c not in before and c.active()]  # type: ignore[attr-defined]
    for call in leaked:
        call.cancel()
    assert not leaked, f"test left delayed calls behind: {leaked}"


def _settle() -> Any:
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]
