"""The whole bridge in-process, configured from the seed's ini syntax, against real Redis and HTTP."""

from __future__ import annotations

import dataclasses
import socket
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import HTTPConnectionPool

from ssebridge.config.model import MuleSpec, default_config
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import RedisProcess, connect_sse, free_port, redis_pipeline
from tests.helpers import RunBridge, port_of, raw_request, until


@pytest_twisted.ensureDeferred
async def test_route_with_named_group_and_one_subscription(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\n"
        "route = ^/events/(?P<channel>[a-z]+)$ sse:${{channel}}\n"
    )
    port = port_of(service)
    clients = [await connect_sse(reactor, "127.0.0.1", port, b"/events/news") for _ in range(8)]
    assert redis.numsub("news") == 1
    redis.publish("news", "line one\r\nline two\rthree")
    for c in clients:
        assert (await c.wait_events(1))[0].data == "line one\nline two\nthree"
    headers = clients[0].headers
    assert headers[b"content-type"] == [b"text/event-stream"]
    assert headers[b"cache-control"] == [b"no-cache"]
    assert headers[b"x-accel-buffering"] == [b"no"]
    assert b"content-encoding" not in headers
    for c in clients:
        await c.disconnect()
    await until(lambda: redis.numsub("news") == 0, what="subscription released")


@pytest_twisted.ensureDeferred
async def test_key_value_action_on_a_unix_socket_server_and_raw_mode(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\n"
        "route = ^/foobar sse:server={sock},subscribe=foobar,buffer_size=65536\n"
        "route = ^/raw sseraw:server={sock},subscribe=foobar\n"
    )
    port = port_of(service)
    cooked = await connect_sse(reactor, "127.0.0.1", port, b"/foobar")
    raw = await connect_sse(reactor, "127.0.0.1", port, b"/raw")
    # Both streams share the one subscription on the one connection to that server.
    assert redis.numsub("foobar") == 1
    redis.publish("foobar", "foobar\nfoobar2")
    assert (await cooked.wait_events(1))[0].data == "foobar\nfoobar2"
    assert await raw.wait_raw(len(b"foobar\nfoobar2")) == b"foobar\nfoobar2"
    # An empty message adds nothing to a raw stream, and must not end its chunked body.
    redis.publish("foobar", "")
    await until(lambda: service.hub.stats.messages_received >= 2, what="the empty message arrived")
    redis.publish("foobar", "!")
    assert await raw.wait_raw(len(b"foobar\nfoobar2!")) == b"foobar\nfoobar2!"
    assert not raw.body_ended
    await cooked.disconnect()
    await raw.disconnect()


@pytest_twisted.ensureDeferred
async def test_burst_of_2000_to_20_clients_through_the_router(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nroute = ^/b sse:burst\n"
    )
    clients = [await connect_sse(reactor, "127.0.0.1", port_of(service), b"/b") for _ in range(20)]
    redis_pipeline(redis.address, [("PUBLISH", "burst", f"{i}") for i in range(2000)])
    for c in clients:
        events = await c.wait_events(2000, timeout=30)
        assert [e.data for e in events] == [str(i) for i in range(2000)]
    for c in clients:
        await c.disconnect()


@pytest.mark.parametrize(
    "path",
    [b"/ch/%0d%0aSUBSCRIBE%20x", b"/ch/a%00b", b"/ch/", b"/ch/" + b"x" * 300],
)
@pytest_twisted.ensureDeferred
async def test_hostile_channel_names_are_refused_and_not_subscribed(
    run_bridge, redis: RedisProcess, path: bytes
) -> None:
    # [\s\S] so the capture takes CR and LF too: the refusal, not the regex, must stop them.
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nroute = ^/ch/([\\s\\S]*)$ sse:$1\n"
    )
    client = await connect_sse(reactor, "127.0.0.1", port_of(service), path)
    assert client.status == 400
    await client.disconnect()
    assert redis.command("PUBSUB", "CHANNELS") == []


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_path_and_malformed_request(run_bridge: RunBridge) -> None:
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nroute = ^/ch/(.*)$ sse:$1\n"
    )
    port = port_of(service)
    client = await connect_sse(reactor, "127.0.0.1", port, b"/ch/%ff%fe")
    assert client.status == 400
    assert b"Traceback" not in bytes(client.raw)
    await client.disconnect()

    def not_http() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
            return s.recv(1000)

    # A blocking socket in a thread: the reactor must keep running to answer it.
    assert (await deferToThread(not_http)).startswith(b"HTTP/1.1 400")

    # Targets that are not paths: forwarded to a proxy upstream they could name another host or port.
    for uri in (b":6379/x", b".evil.example/x", b"http://evil.example/ch/x"):
        request = b"GET " + uri + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert (await deferToThread(raw_request, port, request)).startswith(b"HTTP/1.1 400"), uri


@pytest_twisted.ensureDeferred
async def test_head_of_a_hostile_path_is_answered_and_logged_cleanly(run_bridge: RunBridge) -> None:
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nroute = ^/ch/(.*)$ sse:$1\n"
    )
    port = port_of(service)
    events: list[dict[str, object]] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)  # type: ignore[arg-type]

    try:
        reply = await deferToThread(raw_request, port, b"HEAD /\x86/.. HTTP/1.0\r\n\r\n")
    finally:
        globalLogPublisher.removeObserver(observer)  # type: ignore[arg-type]
    head_part, _, body = reply.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.0 400")
    assert b"Content-Length: " in head_part and body == b""
    # Every event must format: twisted.web's own repr of such a request raised inside the logger.
    texts = [formatEvent(event) for event in events]
    assert not [t for t in texts if "Unable to format" in t or "MESSAGE LOST" in t or "eat it" in t]


@pytest_twisted.ensureDeferred
async def test_stream_limit_answers_503_with_retry_after(run_bridge: RunBridge) -> None:
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nroute = ^/s sse:s\nmax-streams = 3\n"
    )
    port = port_of(service)
    held = [await connect_sse(reactor, "127.0.0.1", port, b"/s") for _ in range(3)]
    refused = await connect_sse(reactor, "127.0.0.1", port, b"/s")
    assert refused.status == 503
    assert refused.headers[b"retry-after"] == [b"5"]
    await refused.disconnect()
    await held[0].disconnect()
    await until(lambda: len(service.bridge.streams) == 2, what="a stream closed")
    again = await connect_sse(reactor, "127.0.0.1", port, b"/s")
    assert again.status == 200
    for c in [*held[1:], again]:
        await c.disconnect()


@pytest_twisted.ensureDeferred
async def test_oversize_messages_are_counted_not_delivered(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nroute = ^/s sse:s\n"
        "max-message-size = 1000\n"
    )
    client = await connect_sse(reactor, "127.0.0.1", port_of(service), b"/s")
    redis.publish("s", "x" * 1001)
    redis.publish("s", "small")
    assert (await client.wait_events(1))[0].data == "small"
    assert service.stats.messages_oversize == 1
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_shutdown_tells_streams_to_come_back(run_bridge: RunBridge) -> None:
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nroute = ^/s sse:s\n"
        "shutdown-window = 0.5\nretry-ms = 2000\n"
    )
    clients = [await connect_sse(reactor, "127.0.0.1", port_of(service), b"/s") for _ in range(10)]
    await service.stopService()
    for c in clients:
        await c.closed.addTimeout(5, reactor)
        assert c.parser.retry is not None and 2000 <= c.parser.retry <= 2500


@pytest_twisted.ensureDeferred
async def test_shutdown_while_waiting_for_redis_still_answers_as_a_stream(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nroute = ^/s sse:s\n"
        "shutdown-window = 0.2\nretry-ms = 2000\nconfirm-timeout = 30\n"
    )
    redis.kill()
    await until(lambda: not service.hub.connected(), what="disconnect noticed")
    client = await connect_sse(reactor, "127.0.0.1", port_of(service), b"/s", wait_headers=False)
    await until(lambda: len(service.bridge.streams) == 1, what="stream waiting")
    await service.stopService()
    await until(lambda: client.body_ended, timeout=5, what="the response ended")
    # An EventSource given anything but a 200 text/event-stream never comes back.
    assert client.status == 200
    assert client.headers[b"content-type"] == [b"text/event-stream"]
    assert client.parser.retry is not None and 2000 <= client.parser.retry <= 2500
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_shutdown_sends_what_a_slow_client_has_queued_before_the_retry_hint(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nroute = ^/s sse:s\n"
        "shutdown-window = 0\nretry-ms = 2000\nclient-buffer = 16777216\n"
    )
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", port_of(service)))
    slow.sendall(b"GET /s HTTP/1.0\r\n\r\n")
    await until(lambda: service.hub.subscriber_count() == 1, what="attached")
    count = 400  # 6.4 MB: more than the kernel and Twisted hold, so some waits in the stream's queue
    redis_pipeline(redis.address, [("PUBLISH", "s", f"{i} " + "x" * 16000) for i in range(count)])
    await until(lambda: service.hub.stats.messages_received == count, what="all published")
    stream = next(iter(service.bridge.streams))
    await until(lambda: stream.queued_bytes > 0, what="a backlog queued in the stream")

    def read_all() -> bytes:
        slow.settimeout(20)
        data = b""
        while chunk := slow.recv(1 << 20):
            data += chunk
        return data

    reading = deferToThread(read_all)
    await service.stopService()
    data = await reading
    slow.close()
    body = data.partition(b"\r\n\r\n")[2]
    seqs = [int(line[6:].split(b" ")[0]) for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert seqs == list(range(count))
    assert body.endswith(b"\n\n") and b"retry: " in body[-40:]


@pytest_twisted.ensureDeferred
async def test_default_config_serves_the_clock_demo(tmp_path: Path, redis: RedisProcess) -> None:
    config = default_config()
    mule = MuleSpec(
        (sys.executable, "-m", "ssebridge.clock", "--server", f"127.0.0.1:{redis.port}", "--interval", "0.2")
    )
    port = free_port()
    config = dataclasses.replace(
        config,
        listen=(f"tcp:{port}:interface=127.0.0.1",),
        redis=dataclasses.replace(config.redis, port=redis.port),
        mules=(mule,),
    )
    service = BridgeService(config)
    await service.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        response = await treq.get(f"http://127.0.0.1:{port}/clock", pool=pool)
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/html")
        assert b"EventSource('/whattimeisit')" in await response.content()
        clock = await connect_sse(reactor, "127.0.0.1", port, b"/whattimeisit")
        events = await clock.wait_events(2, timeout=10)
        assert all(e.data.isdigit() for e in events)
        other = await connect_sse(reactor, "127.0.0.1", port, b"/events/room.1")
        redis.publish("room.1", "hi")
        assert (await other.wait_events(1))[0].data == "hi"
        missing = await treq.get(f"http://127.0.0.1:{port}/nothing-here", pool=pool)
        assert missing.code == 404
        await missing.content()
        await clock.disconnect()
        await other.disconnect()
    finally:
        await pool.closeCachedConnections()
        await service.stopService()
