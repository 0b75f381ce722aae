"""The access log: one line per request (none twice for a stream), query values never logged, a
setting to turn it off; and no "Starting factory" chatter from the upstream or Redis connections."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from zope.interface import implementer

from ssebridge.testing import RedisProcess, connect_sse
from tests.helpers import RunBridge, port_of, raw_request, sleep, until


@implementer(ILogObserver)
class _Events:
    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def access(self) -> list[LogEvent]:
        return [e for e in self.events if e.get("log_namespace") == "ssebridge.access"]

    def closes(self) -> list[LogEvent]:
        return [e for e in self.events if str(e.get("log_format", "")).startswith("stream closed")]

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


@pytest.fixture
def events() -> Iterator[_Events]:
    observer = _Events()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)


CONFIG = """[uwsgi]
http-socket = 127.0.0.1:{port}
redis = {redis}
wsgi-file = {apps}/governed.py
route = ^/events/(.+)$ sse:$1
route-public = true
"""


def _get(port: int, target: bytes, method: bytes = b"GET") -> bytes:
    return raw_request(port, method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_every_request_gets_one_line_without_query_values(
    run_bridge: RunBridge, redis: RedisProcess, events: _Events
) -> None:
    port = port_of(await run_bridge(CONFIG))
    reply = await deferToThread(_get, port, b"/private?token=s3cr3t&since=42")
    assert reply.startswith(b"HTTP/1.1 403")
    await deferToThread(_get, port, b"/echo", b"POST")
    await until(lambda: len(events.access()) == 2, what="two access lines")
    first, second = events.access()
    assert (first["method"], first["path"], first["status"], first["stream"]) == (
        "GET",
        "/private?token&since",
        403,
        False,
    )
    assert first["bytes"] == 2 and first["client"] == "127.0.0.1" and first["duration"] >= 0
    assert (second["method"], second["path"], second["status"]) == ("POST", "/echo", 200)
    text = formatEvent(first)
    assert text.startswith('127.0.0.1 "GET /private?token&since" 403 2 ')
    # The secret appears nowhere in the log, neither in the text nor in a field.
    assert not [t for t in events.texts() if "s3cr3t" in t]
    assert not [e for e in events.access() if "s3cr3t" in repr(e)]


@pytest_twisted.ensureDeferred
async def test_a_stream_is_logged_once_by_its_close_line(
    run_bridge: RunBridge, redis: RedisProcess, events: _Events
) -> None:
    port = port_of(await run_bridge(CONFIG))
    # A rule's stream and a stream the app hands over (the request went through the WSGI app first).
    ruled = await connect_sse(reactor, "127.0.0.1", port, b"/events/news?token=s3cr3t")
    handed = await connect_sse(reactor, "127.0.0.1", port, b"/native")
    assert ruled.status == 200 and handed.status == 200
    await ruled.disconnect()
    await handed.disconnect()
    await until(lambda: len(events.closes()) == 2, what="two close lines")
    assert [e["stream"] for e in events.closes()] == [True, True]
    # The open lines carry what an access line would, the query's values left out.
    opens = [e for e in events.events if str(e.get("log_format", "")).startswith("stream opened")]
    assert [(e["method"], e["path"], e["status"], e["stream"]) for e in opens] == [
        ("GET", "/events/news?token", 200, True),
        ("GET", "/native", 200, True),
    ]
    # HEAD on a stream route ends at once, through twisted.web's finish: still no second line.
    await deferToThread(_get, port, b"/events/news", b"HEAD")
    await until(lambda: len(events.closes()) == 3, what="the HEAD stream's close line")
    await deferToThread(_get, port, b"/other")
    await until(lambda: len(events.access()) == 1, what="the next request's line")
    assert events.access()[0]["path"] == "/other"


@pytest_twisted.ensureDeferred
async def test_a_client_gone_before_the_answer_is_logged(
    run_bridge: RunBridge, redis: RedisProcess, events: _Events
) -> None:
    import socket

    port = port_of(await run_bridge(CONFIG))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    # The app sleeps 3 s on /slow; the client leaves well before, once its request is surely in.
    await sleep(1.0)
    s.close()
    await until(lambda: len(events.access()) == 1, timeout=10, what="the gone client's line")
    line = events.access()[0]
    assert line["path"] == "/slow" and line["gone"] is True
    assert formatEvent(line).endswith("(client gone)")


@pytest_twisted.ensureDeferred
async def test_access_log_off(run_bridge: RunBridge, redis: RedisProcess, events: _Events) -> None:
    port = port_of(await run_bridge(CONFIG + "access-log = false\n"))
    await deferToThread(_get, port, b"/private")
    stream = await connect_sse(reactor, "127.0.0.1", port, b"/events/news")
    await stream.disconnect()
    await until(lambda: len(events.closes()) == 1, what="the close line")
    assert events.access() == []


@pytest_twisted.ensureDeferred
async def test_no_factory_chatter(run_bridge: RunBridge, redis: RedisProcess, events: _Events) -> None:
    """A proxied request and the Redis subscriber connect without "Starting factory" lines."""
    root = Resource()
    root.putChild(b"hello", Data(b"hi", "text/plain"))
    app_site: Any = Site(root)
    app_site.noisy = False
    app = reactor.listenTCP(0, app_site, interface="127.0.0.1")
    try:
        config = (
            "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nroute = ^/events/(.+)$ sse:$1\n"
            f"route-public = true\nproxy = http://127.0.0.1:{app.getHost().port}\n"
        )
        port = port_of(await run_bridge(config))
        stream = await connect_sse(reactor, "127.0.0.1", port, b"/events/news")
        assert redis.numsub("news") == 1
        await stream.disconnect()
        for _ in range(2):
            reply = await deferToThread(_get, port, b"/hello")
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"hi")
        await until(lambda: len(events.access()) == 2, what="the proxied requests' lines")
    finally:
        await app.stopListening()
    # The listening sites' own start and stop (once per listener) may stay, and the test's own SSE
    # client (connectProtocol's OneShotFactory) is not the bridge's; no other connection's.
    chatter = [
        t
        for t in events.texts()
        if ("Starting factory" in t or "Stopping factory" in t)
        and "Site object" not in t
        and "OneShotFactory" not in t
    ]
    assert chatter == []


@pytest_twisted.ensureDeferred
async def test_a_body_refused_before_it_is_read_is_logged(
    run_bridge: RunBridge, redis: RedisProcess, events: _Events
) -> None:
    port = port_of(await run_bridge(CONFIG + "max-body = 10\n"))
    reply = await deferToThread(
        raw_request,
        port,
        b"POST /echo?sig=s3cr3t HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 413")
    await until(lambda: len(events.access()) == 1, what="the refused request's line")
    line = events.access()[0]
    assert (line["method"], line["path"], line["status"], line["stream"]) == ("POST", "/echo?sig", 413, False)
    assert line["bytes"] > 0 and "s3cr3t" not in repr(line)
