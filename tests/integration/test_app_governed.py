"""The app decides: in-process WSGI and a proxied Flask app hand connections to the bridge."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from ssebridge.config.model import load_config
from ssebridge.testing import RedisProcess, connect_sse, free_port
from tests.helpers import EXAMPLES, RunBridge, port_of, serve_flask_example

StartBridge = RunBridge


@pytest.fixture
def bridge(run_bridge: RunBridge) -> RunBridge:
    return run_bridge


GOVERNED = """[uwsgi]
http-socket = 127.0.0.1:{port}
redis = {redis}
wsgi-file = {apps}/governed.py
collect-header = Content-Type RESPONSE_TYPE
pull-header = X-SSE-Channel X_SSE_CHANNEL
final-route-if-not = empty:${{X-SSE-OFFLOAD}} sse:${{X-SSE-OFFLOAD}}
final-route-if = equal:${{RESPONSE_TYPE}};event/stream sse:${{X_SSE_CHANNEL}}
upstream-timeout = 1
max-body = 1000
"""


@pytest_twisted.ensureDeferred
async def test_seed_add_var_clock_and_smart_headers(bridge: StartBridge, redis: RedisProcess) -> None:
    service = await bridge(GOVERNED)
    port = port_of(service)
    plain = await connect_sse(reactor, "127.0.0.1", port, b"/whattimeisit")
    smart = await connect_sse(reactor, "127.0.0.1", port, b"/headers")
    assert plain.status == 200 and smart.status == 200
    for client in (plain, smart):
        assert client.headers[b"content-type"] == [b"text/event-stream"]
    # The app's own headers stay; its event/stream becomes text/event-stream, which browsers accept.
    assert smart.headers[b"foo"] == [b"Bar"]
    assert smart.headers[b"cache-control"] == [b"no-cache"]
    assert redis.numsub("clock") == 1
    redis.publish("clock", "1700000000")
    assert (await plain.wait_events(1))[0].data == "1700000000"
    assert (await smart.wait_events(1))[0].data == "1700000000"
    await plain.disconnect()
    await smart.disconnect()


@pytest_twisted.ensureDeferred
async def test_collect_and_pull_header(bridge: StartBridge, redis: RedisProcess) -> None:
    service = await bridge(GOVERNED)
    client = await connect_sse(reactor, "127.0.0.1", port_of(service), b"/collected")
    assert client.status == 200
    assert b"x-sse-channel" not in client.headers  # pulled: never sent
    redis.publish("foobar", "pulled")
    assert (await client.wait_events(1))[0].data == "pulled"
    assert b"dropped" not in bytes(client.raw)
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_native_header_needs_no_rule_and_refusals_pass_through(
    bridge: StartBridge, redis: RedisProcess
) -> None:
    service = await bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nwsgi-file = {apps}/governed.py\n"
        "upstream-timeout = 1\nmax-body = 1000\n"
    )
    port = port_of(service)
    native = await connect_sse(reactor, "127.0.0.1", port, b"/native")
    assert native.status == 200 and native.headers[b"set-cookie"] == [b"seen=1"]
    assert b"x-sse-offload" not in native.headers
    # The seed's variable works without the seed's rule too.
    clock = await connect_sse(reactor, "127.0.0.1", port, b"/whattimeisit")
    empty = await connect_sse(reactor, "127.0.0.1", port, b"/nocontent")
    assert empty.status == 200
    redis.publish("native", "n")
    redis.publish("clock", "c")
    assert (await native.wait_events(1))[0].data == "n"
    assert (await clock.wait_events(1))[0].data == "c"
    assert (await empty.wait_events(1))[0].data == "n"
    await native.disconnect()
    await clock.disconnect()
    await empty.disconnect()

    pool = HTTPConnectionPool(reactor, persistent=False)
    base = f"http://127.0.0.1:{port}"
    try:
        forbidden = await treq.get(base + "/nope", pool=pool)
        assert (forbidden.code, await forbidden.content()) == (403, b"no")
        hostile = await treq.get(base + "/hostile", pool=pool)
        assert hostile.code == 400
        await hostile.content()
        boom = await treq.get(base + "/boom", pool=pool)
        body = await boom.content()
        assert boom.code == 500 and b"Traceback" not in body and b"broke" not in body
        slow = await treq.get(base + "/slow", pool=pool)
        assert slow.code == 504
        await slow.content()
        echo = await treq.post(base + "/echo", data=b"x" * 500, pool=pool)
        assert (echo.code, await echo.content()) == (200, b"POST " + b"x" * 500)
        big = await treq.post(base + "/echo", data=b"x" * 5000, pool=pool)
        assert big.code == 413
        await big.content()
    finally:
        await pool.closeCachedConnections()
    assert redis.command("PUBSUB", "CHANNELS") == []


@pytest.fixture
def flask_app() -> Iterator[str]:
    """The Flask example as its own HTTP server (waitress), in a subprocess."""
    yield from serve_flask_example()


@pytest_twisted.ensureDeferred
async def test_flask_behind_proxy_hands_over_authenticated_clients(
    bridge: StartBridge, redis: RedisProcess, flask_app: str
) -> None:
    service = await bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nproxy = " + flask_app + "\n"
    )
    port = port_of(service)
    stranger = await connect_sse(reactor, "127.0.0.1", port, b"/events")
    assert stranger.status == 401
    await stranger.disconnect()
    alice = await connect_sse(
        reactor, "127.0.0.1", port, b"/events", headers={b"Authorization": b"Bearer alice-token"}
    )
    assert alice.status == 200 and alice.headers[b"content-type"] == [b"text/event-stream"]
    # A session cookie works as well: log in through the bridge, then stream with the cookie.
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        login = await treq.post(
            f"http://127.0.0.1:{port}/login", data={"user": "bob", "password": "builder"}, pool=pool
        )
        assert login.code == 200
        await login.content()
        cookie = login.headers.getRawHeaders(b"set-cookie")[0].split(b";")[0]
    finally:
        await pool.closeCachedConnections()
    bob = await connect_sse(reactor, "127.0.0.1", port, b"/events", headers={b"Cookie": cookie})
    assert bob.status == 200
    redis.publish("user-alice", "for alice")
    redis.publish("user-bob", "for bob")
    assert [e.data for e in await alice.wait_events(1)] == ["for alice"]
    assert [e.data for e in await bob.wait_events(1)] == ["for bob"]
    await alice.disconnect()
    await bob.disconnect()


@pytest_twisted.ensureDeferred
async def test_upstream_down_is_a_502(bridge: StartBridge) -> None:
    service = await bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nproxy = http://127.0.0.1:"
        + str(free_port())
        + "\n"
    )
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        response = await treq.get(f"http://127.0.0.1:{port_of(service)}/events", pool=pool)
        assert response.code == 502
        await response.content()
    finally:
        await pool.closeCachedConnections()


def test_seed_clock_app_example_config_loads_unchanged() -> None:
    config = load_config(EXAMPLES / "clock" / "clock-app.ini")
    assert config.wsgi_file == EXAMPLES / "clock" / "clock.py"
    assert config.warnings == ()
    assert [r.kind for r in config.rules] == ["final-route-if-not"]
