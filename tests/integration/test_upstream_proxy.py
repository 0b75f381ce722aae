"""HTTPUpstream against real parts: a Flask app on a waitress server (in a thread), a Site on loopback.

The harness (``Front``, ``Served``, ``Collector``...) is the one of ``test_upstream_wsgi``: a stand-in
router that writes what the upstream answered.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
import waitress
from flask import Flask, Response, request
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.client import ResponseFailed
from twisted.web.iweb import UNKNOWN_LENGTH
from waitress import wasyncore

from ssebridge.testing import free_port
from ssebridge.upstream.base import HeaderRules, strip_hop_by_hop
from ssebridge.upstream.proxy import HTTPUpstream
from ssebridge.upstream.wsgi import load_wsgi_file
from tests.helpers import EXAMPLES, Collector, Front, Served, header, raw_request, until, within

MiB = 1024 * 1024


# --- the upstream app, served by waitress in a thread --------------------------------------------------


class AppState:
    """What the upstream app saw and did, shared with the tests (reset for each test)."""

    def __init__(self) -> None:
        self.produced = 0
        self.release = threading.Event()
        self.closed = threading.Event()
        self.chunk_received = [threading.Event() for _ in range(3)]


state = AppState()
upstream_app = Flask("upstream_under_test")


@upstream_app.route("/echo", methods=["GET", "POST", "PUT", "DELETE"])
def echo() -> Response:
    body = request.get_data()
    seen = {
        "method": request.method,
        "path": request.path,
        "full_path": request.environ.get("RAW_URI") or request.full_path,
        "query": request.query_string.decode(),
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }
    response = Response(json.dumps(seen), content_type="application/json")
    response.headers["X-Reply"] = "yes"
    response.headers.add("X-Multi", "one")
    response.headers.add("X-Multi", "two")
    return response


@upstream_app.get("/app/echo")
def prefixed() -> Response:
    return Response(request.full_path, content_type="text/plain")


@upstream_app.get("/denied")
def denied() -> tuple[Response, int, dict[str, str]]:
    response = Response(json.dumps({"error": "unauthorized"}), content_type="application/json")
    return response, 401, {"WWW-Authenticate": "Bearer"}


@upstream_app.get("/big")
def big() -> Response:
    size = int(request.args.get("mb", "1"))
    chunk = b"y" * MiB

    def body() -> Iterator[bytes]:
        try:
            for _ in range(size):
                state.produced += 1
                yield chunk
        finally:
            state.closed.set()

    headers = {"Content-Length": str(size * MiB)} if request.args.get("length") else {}
    return Response(body(), content_type="application/octet-stream", headers=headers)


@upstream_app.get("/chunks")
def chunks() -> Response:
    def body() -> Iterator[bytes]:
        for i in range(3):
            yield b"chunk-%d;" % i
            # The next chunk only once the client has this one.
            if not state.chunk_received[i].wait(10):
                return

    return Response(body(), content_type="text/plain")


@upstream_app.get("/endless")
def endless() -> Response:
    def body() -> Iterator[bytes]:
        try:
            while not state.release.is_set():
                yield b"e" * 65536
        finally:
            state.closed.set()

    response = Response(body(), content_type="event/stream")
    response.headers["X-SSE-Channel"] = "forever"
    return response


@upstream_app.get("/sse")
def sse() -> Response:
    response = Response(b"dropped", content_type="event/stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-SSE-Channel"] = "foobar"
    return response


@upstream_app.get("/sleep")
def sleep() -> Response:
    state.release.wait(10)
    return Response(b"late", content_type="text/plain")


class Waitress:
    """A waitress server in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.server: Any = waitress.create_server(
            app,
            host="127.0.0.1",
            port=0,
            threads=8,
            # A small buffer, so backpressure shows quickly.
            outbuf_high_watermark=MiB,
            # The test reads X-Forwarded-* as the proxy sent them.
            clear_untrusted_proxy_headers=False,
        )
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, name="test-waitress", daemon=True)
        self.thread.start()

    def close(self) -> None:
        # Close every socket from the loop's own thread (closing them from here races its poll),
        # which empties the map and ends run(); then stop the worker threads.
        server = self.server
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        self.thread.join(10)
        server.task_dispatcher.shutdown()
        assert not self.thread.is_alive(), "waitress did not stop"


@pytest.fixture(scope="module")
def flask_server() -> Iterator[Waitress]:
    server = Waitress(upstream_app)
    yield server
    state.release.set()
    server.close()


@pytest.fixture
def proxy(flask_server: Waitress) -> Iterator[Callable[..., Served]]:
    """Build an HTTPUpstream to the Flask server (or ``url``) behind a Front; torn down after."""
    global state
    state = AppState()
    served: list[Served] = []

    def make(url: str | None = None, **kw: Any) -> Served:
        upstream = HTTPUpstream(url or flask_server.url, reactor, **kw)
        s = Served(upstream)
        served.append(s)
        return s

    yield make
    state.release.set()
    for s in served:
        pytest_twisted.blockon(Deferred.fromCoroutine(s.close()))


# --- pass-through ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_status_headers_and_body_pass_through(proxy: Callable[..., Served]) -> None:
    s = proxy()
    response, body = await s.request("GET", "/echo?x=1&y=%C3%A9")
    assert response.code == 200
    assert header(response, "Content-Type") == "application/json"
    assert header(response, "X-Reply") == "yes"
    assert response.headers.getRawHeaders(b"X-Multi") == [b"one", b"two"]
    seen = json.loads(body)
    assert seen["method"] == "GET"
    assert seen["query"] == "x=1&y=%C3%A9"
    reply = s.front.replies[0]
    assert (reply.status, reply.reason) == (200, b"OK")
    names = {name.lower() for name, _ in reply.headers}
    assert not names & {b"connection", b"keep-alive", b"transfer-encoding"}
    # twisted.web sets its own Date and Server: the upstream's are not passed on (no duplicates).
    assert not names & {b"date", b"server"}
    assert len(response.headers.getRawHeaders(b"Date") or []) == 1
    assert reply.variables == {}


@pytest_twisted.ensureDeferred
async def test_401_passes_through(proxy: Callable[..., Served]) -> None:
    s = proxy()
    response, body = await s.request("GET", "/denied")
    assert response.code == 401
    assert json.loads(body) == {"error": "unauthorized"}
    assert header(response, "WWW-Authenticate") == "Bearer"


@pytest_twisted.ensureDeferred
async def test_base_url_prefix(proxy: Callable[..., Served], flask_server: Waitress) -> None:
    s = proxy(flask_server.url + "/app/")
    response, body = await s.request("GET", "/echo?q=1")
    assert body == b"/app/echo?q=1"


@pytest_twisted.ensureDeferred
async def test_body_is_streamed_chunk_by_chunk(proxy: Callable[..., Served]) -> None:
    s = proxy()
    response = await s.start("GET", "/chunks")
    seen = bytearray()

    def on_data(data: bytes) -> None:
        seen.extend(data)
        for i, event in enumerate(state.chunk_received):
            if b"chunk-%d;" % i in seen:
                event.set()

    collector = Collector(on_data)
    response.deliverBody(collector)
    assert await within(collector.done) == b"chunk-0;chunk-1;chunk-2;"


@pytest.mark.parametrize("length", [False, True])
@pytest_twisted.ensureDeferred
async def test_large_body_streams_with_backpressure(proxy: Callable[..., Served], length: bool) -> None:
    """A client that stops reading stops the upstream app (after the buffers on the way fill)."""
    total = 48
    s = proxy()
    response = await s.start("GET", f"/big?mb={total}" + ("&length=1" if length else ""))
    # The client's Agent keeps Content-Length out of the headers: it shows as the length.
    assert response.length == (total * MiB if length else UNKNOWN_LENGTH)
    collector = Collector()
    response.deliverBody(collector)
    collector.transport.pauseProducing()  # type: ignore[union-attr]
    await until(lambda: state.produced >= 2, what="upstream started")
    await deferLater(reactor, 1.0, lambda: None)
    # Two loopback connections and waitress's buffer hold several MiB; without backpressure the
    # proxy would have read all of it.
    stalled_at = state.produced
    assert stalled_at < 32, f"upstream produced {stalled_at} MiB while the client read nothing"
    collector.transport.resumeProducing()  # type: ignore[union-attr]
    data = await within(collector.done, 30)
    assert len(data) == total * MiB


@pytest.mark.parametrize("size", [0, 11, 300_000])
@pytest_twisted.ensureDeferred
async def test_request_body_is_forwarded(proxy: Callable[..., Served], size: int) -> None:
    s = proxy()
    payload = (b"hello world" * (size // 11 + 1))[:size]
    response, body = await s.request(
        "POST",
        "/echo?kind=post",
        {"Content-Type": ["application/octet-stream"], "Authorization": ["Bearer t0k"]},
        payload,
    )
    seen = json.loads(body)
    assert seen["method"] == "POST"
    assert seen["body_length"] == size
    assert seen["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert seen["headers"]["content-length"] == str(size)
    assert seen["headers"]["authorization"] == "Bearer t0k"
    assert seen["headers"]["content-type"] == "application/octet-stream"


@pytest_twisted.ensureDeferred
async def test_forwarded_headers_and_hop_by_hop(proxy: Callable[..., Served]) -> None:
    s = proxy()
    response, body = await s.request(
        "GET",
        "/echo",
        {
            "Host": ["public.example:8080"],
            "X-Forwarded-For": ["198.51.100.7"],
            "Cookie": ["a=1; b=2"],
            "Connection": ["keep-alive, X-Drop-Me"],
            "X-Drop-Me": ["1"],
            "Keep-Alive": ["timeout=5"],
            "Proxy-Authorization": ["Basic Zm9vOmJhcg=="],
        },
    )
    headers = json.loads(body)["headers"]
    assert headers["host"] == "public.example:8080"
    assert headers["x-forwarded-for"] == "198.51.100.7, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "public.example:8080"
    assert headers["cookie"] == "a=1; b=2"
    for dropped in ("x-drop-me", "keep-alive", "proxy-authorization"):
        assert dropped not in headers


@pytest_twisted.ensureDeferred
async def test_no_forwarded_headers_when_off(proxy: Callable[..., Served]) -> None:
    s = proxy(forwarded=False)
    response, body = await s.request(
        "GET", "/echo", {"X-Forwarded-For": ["198.51.100.7"], "X-Forwarded-Host": ["admin.example"]}
    )
    headers = json.loads(body)["headers"]
    # A client's own are dropped too (issue 14, defect 10): nothing in front vouches for them.
    assert "x-forwarded-for" not in headers and "x-forwarded-host" not in headers
    assert "x-forwarded-proto" not in headers


# --- collect / pull, and discarding -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_collect_pull_and_offload_keeps_the_connection(proxy: Callable[..., Served]) -> None:
    s = proxy(
        collect_headers=[("content-type", "RESPONSE_TYPE")],
        pull_headers=[("X-SSE-CHANNEL", "X_SSE_CHANNEL")],
    )

    class ChannelFront(Front):
        """Offloads on the pulled variable, as ``final-route-if = equal:...;event/stream`` would."""

        def _reply(self, reply: Any, request: Any) -> None:
            if reply.variables.get("RESPONSE_TYPE") == "event/stream":
                reply.variables["X-SSE-OFFLOAD"] = reply.variables["X_SSE_CHANNEL"]
            super()._reply(reply, request)

    s.site.resource = ChannelFront(s.upstream)
    response, body = await s.request("GET", "/sse")
    reply = s.site.resource.replies[0]
    assert reply.variables["RESPONSE_TYPE"] == "event/stream"
    assert reply.variables["X_SSE_CHANNEL"] == "foobar"
    names = [name.lower() for name, _ in reply.headers]
    assert b"content-type" in names and b"x-sse-channel" not in names
    assert header(response, "X-Offloaded-To") == "foobar"
    assert header(response, "X-SSE-Channel") is None
    assert header(response, "Cache-Control") == "no-cache"
    assert body == b""
    # The dropped body was drained, so the connection went back to the pool.
    await until(lambda: any(s.upstream.pool._connections.values()), what="connection back in the pool")


@pytest_twisted.ensureDeferred
async def test_discarding_an_endless_body_cuts_the_connection(proxy: Callable[..., Served]) -> None:
    s = proxy(pull_headers=[("X-SSE-Channel", "X-SSE-OFFLOAD")])
    started = time.monotonic()
    response, body = await s.request("GET", "/endless")
    assert header(response, "X-Offloaded-To") == "forever"
    await until(lambda: not s.upstream._bodies, what="body dropped")
    assert time.monotonic() - started < 5
    # Waitress notices the cut on its next write and closes the generator.
    await until(state.closed.is_set, what="upstream generator closed")


@pytest_twisted.ensureDeferred
async def test_client_leaving_mid_body_cuts_the_upstream(proxy: Callable[..., Served]) -> None:
    s = proxy()
    response = await s.start("GET", "/endless")
    collector = Collector()
    response.deliverBody(collector)
    await until(lambda: collector.received > 0, what="first bytes")
    collector.transport.stopProducing()  # type: ignore[union-attr]
    with pytest.raises(ResponseFailed):
        await within(collector.done)
    await until(lambda: not s.upstream._bodies, what="body released")
    await until(state.closed.is_set, what="upstream generator closed")


# --- failures ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_502_when_nothing_listens(proxy: Callable[..., Served]) -> None:
    s = proxy(f"http://127.0.0.1:{free_port()}")
    response, body = await s.request("GET", "/anything")
    assert response.code == 502
    assert body == b"Bad Gateway"


@pytest_twisted.ensureDeferred
async def test_502_when_the_upstream_hangs_up(proxy: Callable[..., Served]) -> None:
    """A server that accepts and closes without a response."""
    from twisted.internet.protocol import Factory, Protocol

    class HangUp(Protocol):
        def dataReceived(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.loseConnection()

    port: Any = reactor.listenTCP(0, Factory.forProtocol(HangUp), interface="127.0.0.1")  # type: ignore[arg-type]
    try:
        s = proxy(f"http://127.0.0.1:{port.getHost().port}")
        response, body = await s.request("GET", "/anything")
        assert response.code == 502
    finally:
        await within(Deferred.fromCoroutine(_stop(port)))


async def _stop(port: Any) -> None:
    d = port.stopListening()
    if d is not None:
        await d


@pytest_twisted.ensureDeferred
async def test_504_when_the_upstream_is_too_slow(proxy: Callable[..., Served]) -> None:
    s = proxy(timeout=0.3)
    started = time.monotonic()
    response, body = await s.request("GET", "/sleep")
    assert response.code == 504
    assert body == b"Gateway Timeout"
    assert time.monotonic() - started < 3


@pytest_twisted.ensureDeferred
async def test_stop_fails_a_waiting_request(proxy: Callable[..., Served]) -> None:
    s = proxy()
    pending = Deferred.fromCoroutine(s.request("GET", "/sleep"))
    await until(lambda: s.upstream._waiting, what="request sent")
    await deferLater(reactor, 0.1, lambda: None)
    await within(s.upstream.stop())
    response, body = await within(pending)
    assert response.code == 503


# --- the Flask example over HTTP -------------------------------------------------------------------


@pytest.fixture
def flask_auth_server() -> Iterator[Waitress]:
    server = Waitress(load_wsgi_file(EXAMPLES / "flask_auth" / "app.py"))
    yield server
    server.close()


@pytest_twisted.ensureDeferred
async def test_flask_auth_example_over_http(
    proxy: Callable[..., Served], flask_auth_server: Waitress
) -> None:
    s = proxy(flask_auth_server.url)
    response, body = await s.request("GET", "/events")
    assert response.code == 401
    assert json.loads(body)["error"] == "unauthorized"
    response, body = await s.request("GET", "/events", {"Authorization": ["Bearer bob-token"]})
    assert header(response, "X-Offloaded-To") == "user-bob"


# --- shared pieces, without a network --------------------------------------------------------------


def test_strip_hop_by_hop_drops_what_connection_names() -> None:
    headers = [
        (b"Connection", b"close, X-Private"),
        (b"X-Private", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X"),
        (b"Content-Type", b"text/plain"),
    ]
    assert strip_hop_by_hop(headers) == [(b"Content-Type", b"text/plain")]


def test_header_rules() -> None:
    rules = HeaderRules(collect=[("Content-Type", "TYPE")], pull=[("x-channel", "CHAN")])
    headers, variables = rules.apply(
        [(b"content-type", b"a"), (b"X-Channel", b"caf\xc3\xa9"), (b"X-Channel", b"second"), (b"Foo", b"x")]
    )
    assert variables == {"TYPE": "a", "CHAN": "café"}
    assert headers == [(b"content-type", b"a"), (b"Foo", b"x")]
    # Not UTF-8: kept distinct (never "ÿ", which b"\xc3\xbf" also means), and refused as a channel.
    assert rules.apply([(b"X-Channel", b"\xff")])[1] == {"CHAN": "\udcff"}
    assert not HeaderRules()
    with pytest.raises(ValueError):
        HeaderRules(collect=[("Content-Type", "")])


def test_bad_base_urls() -> None:
    for url in ("ftp://x", "http://", "http://h/?q=1", "127.0.0.1:5000"):
        with pytest.raises(ValueError):
            HTTPUpstream(url, reactor)


@pytest_twisted.ensureDeferred
async def test_head_request_passes_through(proxy: Callable[..., Served]) -> None:
    s = proxy()
    response, body = await s.request("HEAD", "/sse")
    assert response.code == 200
    assert body == b""
    # A second request on the pooled connection still works: HEAD did not confuse the framing.
    response, body = await s.request("GET", "/echo")
    assert response.code == 200 and json.loads(body)["method"] == "GET"


@pytest_twisted.ensureDeferred
async def test_a_uri_the_client_agent_refuses_is_a_400(proxy: Callable[..., Served]) -> None:
    s = proxy()
    # twisted.web's server takes a DEL in the path; Agent refuses it in a URL.
    request = b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = await deferToThread(raw_request, s.port.getHost().port, request)
    assert reply.startswith(b"HTTP/1.1 400")
    assert not s.front.replies


def test_connection_never_removes_end_to_end_fields() -> None:
    """``Connection: close, X-Forwarded-For, Cookie`` must not strip what the app needs (defect 10)."""
    headers = [
        (b"Connection", b"close, X-Forwarded-For, Cookie, Authorization, Host, Content-Type, X-Private"),
        (b"Connection", b"X-Forwarded-Proto,Forwarded"),
        (b"Host", b"app.example"),
        (b"Cookie", b"a=1"),
        (b"Authorization", b"Bearer t"),
        (b"Content-Type", b"text/plain"),
        (b"X-Forwarded-For", b"198.51.100.7"),
        (b"X-Forwarded-Proto", b"https"),
        (b"Forwarded", b"for=198.51.100.7"),
        (b"X-Private", b"1"),
    ]
    kept = [name for name, _ in strip_hop_by_hop(headers)]
    assert kept == [
        b"Host",
        b"Cookie",
        b"Authorization",
        b"Content-Type",
        b"X-Forwarded-For",
        b"X-Forwarded-Proto",
        b"Forwarded",
    ]
