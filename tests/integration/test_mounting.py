"""The public API mounted in someone else's twisted.web site and Klein app (the examples, run)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.server import Site

import ssebridge
from ssebridge.testing import RedisProcess, connect_sse
from tests.helpers import EXAMPLES, until

MOUNTING = EXAMPLES / "mounting"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, MOUNTING / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_public_api_is_listed_and_importable() -> None:
    for name in ssebridge.__all__:
        assert getattr(ssebridge, name) is not None


@pytest_twisted.async_yield_fixture
async def served(request: Any, redis: RedisProcess) -> AsyncIterator[tuple[int, Any]]:
    kind = request.param
    if kind == "twisted_web":
        site, hub = load("twisted_web_site").build_site(f"127.0.0.1:{redis.port}")
    else:
        app, hub = load("klein_app").build_app(f"127.0.0.1:{redis.port}")
        site = Site(app.resource())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    yield port.getHost().port, hub
    await port.stopListening()
    await hub.stop()


@pytest.mark.parametrize("served", ["twisted_web"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_twisted_web_site_mounts_a_channel_and_the_router(
    served: tuple[int, Any], redis: RedisProcess
) -> None:
    port, hub = served
    news = await connect_sse(reactor, "127.0.0.1", port, b"/news")
    room = await connect_sse(reactor, "127.0.0.1", port, b"/bridge/rooms/blue")
    assert news.status == 200 and room.status == 200
    redis.publish("news", "n1")
    redis.publish("room-blue", "r1")
    assert (await news.wait_events(1))[0].data == "n1"
    assert (await room.wait_events(1))[0].data == "r1"
    # One hub: both channels ride one Redis connection.
    assert len(hub.groups) == 1
    await news.disconnect()
    await room.disconnect()
    await until(lambda: hub.channel_count() == 0)


@pytest.mark.parametrize("served", ["klein"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_klein_routes_return_streams(served: tuple[int, Any], redis: RedisProcess) -> None:
    port, hub = served
    live = await connect_sse(reactor, "127.0.0.1", port, b"/live/sports")
    assert live.status == 200
    hostile = await connect_sse(reactor, "127.0.0.1", port, b"/live/" + b"x" * 300)
    assert hostile.status == 400
    await hostile.disconnect()
    denied = await connect_sse(reactor, "127.0.0.1", port, b"/users/ann/events")
    assert denied.status == 401
    await denied.disconnect()
    ann = await connect_sse(
        reactor, "127.0.0.1", port, b"/users/ann/events", headers={b"Authorization": b"Bearer ann"}
    )
    clock = await connect_sse(reactor, "127.0.0.1", port, b"/sse/clock")
    assert ann.status == 200 and clock.status == 200
    redis.publish("sports", "goal")
    redis.publish("user-ann", "hello ann")
    redis.publish("clock", "12:00")
    assert (await live.wait_events(1))[0].data == "goal"
    assert (await ann.wait_events(1))[0].data == "hello ann"
    assert (await clock.wait_events(1))[0].data == "12:00"
    for c in (live, ann, clock):
        await c.disconnect()
