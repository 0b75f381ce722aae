"""Fixtures: private redis-server processes, an in-process bridge, and a check that no test leaks timers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from ssebridge.testing import RedisProcess


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
