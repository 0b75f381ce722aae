"""Request bodies (issue 14, defect 5): refused early when nothing reads them, streamed to the upstream
through a bounded in-memory buffer (never a temporary file), cut when too slow; and a cap on the
connections that are not streams."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.threads import deferToThread
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ssebridge.testing import RedisProcess, connect_sse, free_port
from tests.helpers import RunBridge, port_of, until, within

MiB = 1024 * 1024

#: A WSGI app that reads the whole body and answers its length and digest; it counts the calls that
#: have started, so a test can tell when a request reached the app before its body ended.
ECHO_APP = '''
import hashlib, json, threading
started = []
lock = threading.Lock()

def application(environ, start_response):
    with lock:
        started.append(environ["PATH_INFO"])
    if environ["PATH_INFO"].startswith("/ignore"):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
        return [b"ignored"]
    body = environ["wsgi.input"].read()
    reply = json.dumps({
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "content_length": environ.get("CONTENT_LENGTH"),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [reply]
'''


@pytest.fixture
def echo_app(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / f"echo_{os.getpid()}_{time.monotonic_ns()}.py"
    path.write_text(ECHO_APP)
    yield path


def _app_module(path: Path) -> object:
    import sys

    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == str(path.resolve()):
            return module
    raise LookupError(path)


def _deleted_files() -> tuple[int, int]:
    """Open files of this process (the in-process bridge's) that were deleted: count and bytes."""
    count = size = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.endswith("(deleted)") and not target.startswith(("/memfd:", "anon_inode:")):
                count += 1
                size += os.fstat(int(fd)).st_size
        except OSError:
            continue
    return count, size


def _head(path: str, length: int | None, extra: str = "", method: str = "POST") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"{method} {path} HTTP/1.1\r\nHost: t\r\n{framing}{extra}\r\n").encode()


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def _refused_before_body(port: int, path: str, length: int, method: str = "POST") -> bytes:
    """Send only the headers of a body of ``length`` bytes; return what comes back (or b"" on timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(_head(path, length, method=method))
        return _read_all(s)


# --- refused before it is read ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_body_with_no_reader_is_refused_before_it_is_read(
    run_bridge: RunBridge, tmp_path: Path, echo_app: Path
) -> None:
    (tmp_path / "page.html").write_text("<p>hi</p>")
    no_upstream = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\n"
        f"static-map = /page={tmp_path}/page.html\nroute = ^/events/(.+)$ sse:$1\n"
    )
    port = port_of(no_upstream)
    # GET to the stream and the file: a method they take, with a body nothing reads (a POST there
    # is refused for its method first: 405, tests/integration/test_stream_methods.py).
    for path, method in (("/events/x", "GET"), ("/page", "GET"), ("/anything", "POST")):
        reply = await within(deferToThread(_refused_before_body, port, path, MiB, method))
        assert reply.startswith(b"HTTP/1.1 413 "), (path, reply[:80])
        assert b"Connection: close" in reply

    upstream = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\n"
        f"wsgi-file = {echo_app}\nroute = ^/events/(.+)$ sse:$1\nroute-public = true\n"
        "metrics-path = /metrics\n"
    )
    port = port_of(upstream)
    for path, method in (("/events/x", "GET"), ("/metrics", "POST"), ("/readyz", "POST")):
        reply = await within(deferToThread(_refused_before_body, port, path, MiB, method))
        assert reply.startswith(b"HTTP/1.1 413 "), (path, reply[:80])
    # A body for the app is read as usual.
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        response = await treq.post(f"http://127.0.0.1:{port}/app", data=b"x" * 1000, pool=pool)
        assert response.code == 200
        assert json.loads(await response.content())["length"] == 1000
    finally:
        await pool.closeCachedConnections()


# --- no disk, bounded memory ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_partial_bodies_take_no_disk_and_reach_the_app_whole(
    run_bridge: RunBridge, echo_app: Path
) -> None:
    """20 clients send all but the last byte of a 1 MiB body: no temporary file is held, each
    request reaches the app while its body still comes, and each body arrives whole at the end."""
    clients = 20
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\n"
        f"wsgi-file = {echo_app}\nthreads = {clients}\nmax-body = {MiB}\n"
    )
    port = port_of(service)
    payloads = [os.urandom(MiB) for _ in range(clients)]
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(clients)]
    before = _deleted_files()
    try:

        def send_most() -> None:
            for i, s in enumerate(socks):
                s.sendall(_head(f"/up/{i}", MiB, "Connection: close\r\n") + payloads[i][:-1])

        sender = deferToThread(send_most)
        app = _app_module(echo_app)
        await until(lambda: len(app.started) == clients, what="every request reached the app")  # type: ignore[attr-defined]
        await within(sender)
        held = _deleted_files()
        assert held[1] - before[1] < 64 * 1024, f"deleted files held: {held} (before: {before})"

        def finish() -> list[bytes]:
            replies = []
            for i, s in enumerate(socks):
                s.sendall(payloads[i][-1:])
                replies.append(_read_all(s))
            return replies

        replies = await within(deferToThread(finish), 30)
    finally:
        for s in socks:
            s.close()
    for payload, reply in zip(payloads, replies, strict=True):
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:100]
        seen = _json_body(reply)
        assert seen["length"] == MiB and seen["sha256"] == hashlib.sha256(payload).hexdigest()
        assert seen["content_length"] == str(MiB)


def _exchange(port: int, requests: list[bytes], replies: int) -> bytes:
    """Send ``requests`` on one connection (pipelined) and read until ``replies`` answers are in."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for request in requests:
            s.sendall(request)
        data = b""
        while data.count(b"HTTP/1.1 ") < replies or not data.endswith((b"}", b"0\r\n\r\n", b"ignored")):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


@pytest_twisted.ensureDeferred
async def test_streamed_bodies_keep_the_connection_usable(run_bridge: RunBridge, echo_app: Path) -> None:
    """Two large bodies (past the in-memory buffer) and a small one, pipelined on one connection,
    each reach the app whole; a body the app does not read closes the connection after its answer."""
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\n" f"wsgi-file = {echo_app}\n"
    )
    port = port_of(service)
    bodies = [os.urandom(600_000), b"small", os.urandom(700_000)]
    requests = [_head(f"/k/{i}", len(body)) + body for i, body in enumerate(bodies)]
    data = await within(deferToThread(_exchange, port, requests, 3), 30)
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 3
    for answer, body in zip(answers, bodies, strict=True):
        assert answer.startswith(b"200 ")
        seen = _json_body(b"HTTP/1.1 " + answer)
        assert (seen["length"], seen["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())

    def ignored() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(_head("/ignore", 2 * MiB) + os.urandom(MiB))
            return _read_all(s)

    reply = await within(deferToThread(ignored), 20)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"ignored")
    assert b"Connection: close" in reply


# --- too slow --------------------------------------------------------------------------------------


def _trickle(port: int, path: str, stop: threading.Event) -> tuple[bytes, float, int]:
    """Send a 100-byte body a byte every 0.5 s; return the reply, the time to it, and bytes sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(_head(path, 100))
        started = time.monotonic()
        while sent < 100 and not stop.is_set():
            try:
                s.sendall(b"x")
                sent += 1
            except OSError:
                return _read_all(s), time.monotonic() - started, sent
            time.sleep(0.5)
            s.setblocking(False)
            try:
                reply = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                reply = b""
            finally:
                s.settimeout(5)
            return reply + _read_all(s), time.monotonic() - started, sent
        return b"", time.monotonic() - started, sent


@pytest_twisted.ensureDeferred
async def test_slow_body_is_cut(run_bridge: RunBridge, echo_app: Path) -> None:
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\n"
        f"wsgi-file = {echo_app}\nbody-timeout = 1\nbody-min-rate = 100\n"
    )
    stop = threading.Event()
    try:
        reply, elapsed, sent = await within(deferToThread(_trickle, port_of(service), "/slow", stop), 40)
    finally:
        stop.set()
    # Cut long before the 100 bytes could all come (50 s at this pace).
    assert sent < 100
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:80]
    print(f"slow body cut after {elapsed:.2f}s, {sent} bytes sent")


@pytest_twisted.ensureDeferred
async def test_body_that_stalls_after_reaching_the_app_is_cut(run_bridge: RunBridge, echo_app: Path) -> None:
    """Past the in-memory buffer the request is with the app already; a stall then drops the
    connection (and fails the app's read) instead of holding a thread for good."""
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\n"
        f"wsgi-file = {echo_app}\nbody-timeout = 1\nbody-min-rate = 0\n"
    )

    def stall() -> bytes:
        with socket.create_connection(("127.0.0.1", port_of(service)), timeout=15) as s:
            s.sendall(_head("/stall", 2 * MiB) + b"y" * MiB)
            return _read_all(s)

    assert await within(deferToThread(stall), 20) == b""
    app = _app_module(echo_app)
    assert "/stall" in app.started  # type: ignore[attr-defined]


# --- intact through both upstreams -------------------------------------------------------------------


class _Digest(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        chunked = request.requestHeaders.getRawHeaders(b"transfer-encoding") is not None
        return json.dumps(
            {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(), "chunked": chunked}
        ).encode()


def _post(port: int, payload: bytes, chunked: bool) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        if chunked:
            s.sendall(_head("/digest", None, "Connection: close\r\n"))
            for i in range(0, len(payload), 100_000):
                piece = payload[i : i + 100_000]
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            s.sendall(b"0\r\n\r\n")
        else:
            s.sendall(_head("/digest", len(payload), "Connection: close\r\n") + payload)
        return _read_all(s)


@pytest.mark.parametrize("chunked", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_few_mib_reach_both_upstreams_intact(
    run_bridge: RunBridge, echo_app: Path, chunked: bool
) -> None:
    payload = os.urandom(3 * MiB + 17)
    digest = hashlib.sha256(payload).hexdigest()
    upstream_port = reactor.listenTCP(0, Site(_Digest()), interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        proxied = await run_bridge(
            "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\n"
            f"proxy = http://127.0.0.1:{upstream_port.getHost().port}\n"
        )
        in_process = await run_bridge(
            "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\n" f"wsgi-file = {echo_app}\n"
        )
        for service in (proxied, in_process):
            reply = await within(deferToThread(_post, port_of(service), payload, chunked), 30)
            assert reply.startswith(b"HTTP/1.1 200 "), reply[:100]
            seen = _json_body(reply)
            assert (seen["length"], seen["sha256"]) == (len(payload), digest)
    finally:
        await upstream_port.stopListening()


def _json_body(reply: bytes) -> dict[str, object]:
    head, _, body = reply.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    result: dict[str, object] = json.loads(body)
    return result


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


class _EarlyAnswer(Protocol):
    """An upstream that answers 403 as soon as it has the request headers, reading none of the body."""

    def __init__(self) -> None:
        self.seen = b""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" not in self.seen:
            self.seen += data
            if b"\r\n\r\n" in self.seen:
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
                self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_proxied_app_may_answer_before_the_body_ends(run_bridge: RunBridge) -> None:
    factory = ServerFactory.forProtocol(_EarlyAnswer)
    upstream_port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        service = await run_bridge(
            "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\n"
            f"proxy = http://127.0.0.1:{upstream_port.getHost().port}\n"
        )

        def post() -> bytes:
            with socket.create_connection(("127.0.0.1", port_of(service)), timeout=10) as s:
                s.sendall(_head("/upload", 4 * MiB))
                try:
                    s.sendall(os.urandom(MiB))
                except OSError:
                    pass
                return _read_all(s)

        reply = await within(deferToThread(post), 20)
        assert reply.startswith(b"HTTP/1.1 403 "), reply[:100]
        assert reply.endswith(b"no") and b"Connection: close" in reply
    finally:
        await upstream_port.stopListening()


# --- the cap on connections that are not streams -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connection_cap_spares_streams_and_health_checks(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    metrics_port = free_port()
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\nroute = ^/events/(.+)$ sse:$1\n"
        f"max-connections = 5\nmetrics-listen = tcp:{metrics_port}:interface=127.0.0.1\n"
    )
    port = port_of(service)
    stream = await connect_sse(reactor, "127.0.0.1", port, b"/events/news")
    assert stream.status == 200
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
    try:
        await until(lambda: service.site.connections == 6, what="the idle connections are in")

        def over_the_cap() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /events/news HTTP/1.1\r\nHost: t\r\n\r\n")
                return _read_all(s)

        refused = await within(deferToThread(over_the_cap))
        assert refused.startswith(b"HTTP/1.1 503 "), refused[:80]
        # The open stream goes on, and the health checks answer on their own listener.
        redis.publish("news", "still here")
        assert (await stream.wait_events(1))[0].data == "still here"
        pool = HTTPConnectionPool(reactor, persistent=False)
        try:
            ready = await treq.get(f"http://127.0.0.1:{metrics_port}/readyz", pool=pool)
            assert ready.code == 200
            await ready.content()
        finally:
            await pool.closeCachedConnections()
    finally:
        for s in idle:
            s.close()
    # Once they are gone, new streams come in again.
    await until(lambda: service.site.connections == 1, what="the idle connections are gone")
    again = await connect_sse(reactor, "127.0.0.1", port, b"/events/news")
    assert again.status == 200
    await again.disconnect()
    await stream.disconnect()
