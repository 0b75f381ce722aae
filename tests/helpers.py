"""What the tests share: paths, waiting helpers, the bridge as a subprocess, raw HTTP.

Import it as ``tests.helpers`` (``tests`` is a package, so every tier finds it the same way)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ssebridge.takeover import gone
from ssebridge.testing import RespError
from ssebridge.upstream.base import UpstreamError, UpstreamReply

#: ``await run_bridge(ini_text, directory=tmp_path)``: a started in-process bridge (a conftest fixture).
RunBridge = Callable[..., Awaitable[Any]]


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


async def until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` on the reactor until it is true; fail after ``timeout`` seconds."""
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await sleep(0.02)
        waited += 0.02


# --- the bridge as a subprocess -------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
#: Test apps (WSGI files) the tests load.
APPS = TESTS / "apps"
EXAMPLES = REPO / "examples"
#: ``twistd`` run by this interpreter (``python -m twisted`` is the other runner, ``twist``).
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd(*args: str, cwd: Path | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``twistd ARGS`` with this checkout importable (its plugin and package)."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([*TWISTD, *args], cwd=cwd, env=env, **popen)


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts on 127.0.0.1:``port``; fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the process exited ({proc.returncode}) before listening") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {port}") from None
            time.sleep(0.05)


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    """Block until ``predicate()`` is true; a Redis that refuses or is not there yet counts as not yet.
    For test processes' own setup (clusters, sentinels), outside the reactor."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (OSError, ConnectionError, RespError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def serve_flask_example(*waitress_args: str) -> Iterator[str]:
    """The flask_auth example as its own HTTP server (waitress, with ``waitress_args``) in a subprocess:
    yields its base URL, stops it after."""
    from ssebridge.testing import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "waitress", "--listen", f"127.0.0.1:{port}", *waitress_args, "app:app"],
        cwd=EXAMPLES / "flask_auth",
        env=dict(os.environ, FLASK_SECRET_KEY="test"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc=proc)
    except AssertionError:
        proc.kill()
        raise
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


def run_twistd(*args: str, cwd: Path, timeout: float = 30.0) -> tuple[int, bytes, bytes]:
    """Run ``twistd ARGS`` to its end: (status, stdout, stderr); killed if it outlives ``timeout``."""
    proc = twistd(*args, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def raw_request(port: int, data: bytes) -> bytes:
    """Send ``data`` to 127.0.0.1:``port`` on a plain socket; return all it answers until it closes.

    Blocking: from a reactor test, run it with ``deferToThread``.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        return reply


def port_of(service: Any) -> int:
    """The TCP port a started ``BridgeService`` listens on first."""
    return int(service.ports[0].getHost().port)


# --- a front for upstream tests: a plain twisted.web Site that forwards to an Upstream ---------------

WAIT = 10.0


class Front(Resource):
    """A stand-in router: forwards every request and writes the reply (or its offload) back."""

    isLeaf = True

    def __init__(self, upstream: Any) -> None:
        super().__init__()
        self.upstream = upstream
        self.replies: list[UpstreamReply] = []
        self.errors: list[UpstreamError] = []

    def render(self, request: Request) -> Any:
        d = self.upstream.forward(request, {})
        d.addCallbacks(self._reply, self._error, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    def _reply(self, reply: UpstreamReply, request: Request) -> None:
        self.replies.append(reply)
        if gone(request):
            reply.discard_body()
            return
        channel = reply.variables.get("X-SSE-OFFLOAD")
        for name, value in reply.headers:
            if name.lower() == b"x-sse-offload":
                channel = value.decode()
        if channel:
            reply.discard_body()
            request.setResponseCode(200)
            for name, value in reply.headers:
                if name.lower() not in (b"content-length", b"x-sse-offload"):
                    request.responseHeaders.addRawHeader(name, value)
            request.setHeader(b"X-Offloaded-To", channel.encode())
            request.finish()
            return
        request.setResponseCode(reply.status, reply.reason or None)
        for name, value in reply.headers:
            request.responseHeaders.addRawHeader(name, value)
        reply.send_body(request).addBoth(lambda _: _finish(request))

    def _error(self, failure: Failure, request: Request) -> None:
        failure.trap(UpstreamError)
        error = failure.value
        assert isinstance(error, UpstreamError)
        self.errors.append(error)
        if not gone(request):
            request.setResponseCode(error.code)
            request.setHeader(b"Content-Type", b"text/plain")
            request.write(error.text.encode())
            request.finish()


def _finish(request: Request) -> None:
    if not gone(request):
        request.finish()


class Served:
    """A Front on a loopback port, and a client with its own pool."""

    def __init__(self, upstream: Any) -> None:
        self.upstream = upstream
        self.front = Front(upstream)
        self.site = Site(self.front)
        self.port: Any = reactor.listenTCP(0, self.site, interface="127.0.0.1")  # type: ignore[arg-type]
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)

    async def request(
        self, method: str, path: str, headers: dict[str, list[str]] | None = None, body: bytes | None = None
    ) -> tuple[IResponse, bytes]:
        response = await self.start(method, path, headers, body)
        collector = Collector()
        response.deliverBody(collector)
        data = await within(collector.done)
        return response, data

    async def start(
        self, method: str, path: str, headers: dict[str, list[str]] | None = None, body: bytes | None = None
    ) -> IResponse:
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        raw = Headers({k: v for k, v in (headers or {}).items()})
        d = self.agent.request(method.encode(), (self.url + path).encode(), raw, producer)
        response: IResponse = await within(d)
        return response

    async def close(self) -> None:
        await within(Deferred.fromCoroutine(_maybe(self.port.stopListening())))
        await within(self.pool.closeCachedConnections())
        await within(self.upstream.stop())


async def _maybe(d: Any) -> None:
    if d is not None:
        await d


class Collector(Protocol):
    """A response body, chunk by chunk; ``done`` fires with all of it (or fails if it broke off)."""

    def __init__(self, on_data: Callable[[bytes], None] | None = None) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()
        self.on_data = on_data

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.on_data is not None:
            self.on_data(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)

    @property
    def received(self) -> int:
        return sum(len(c) for c in self.chunks)


async def within(d: Deferred[Any], seconds: float = WAIT) -> Any:
    return await d.addTimeout(seconds, reactor)


def header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name.encode())
    return values[0].decode() if values else None


async def publish_until_received(
    redis: Any, clients: list[Any], tag: str, timeout: float, channel: str = "news"
) -> float:
    """Publish ``tag`` repeatedly until every client has it; return seconds taken."""
    start = time.monotonic()
    while True:
        try:
            redis.publish(channel, tag)
        except OSError:
            pass
        await sleep(0.05)
        if all(any(e.data == tag for e in c.events) for c in clients):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{tag} not received by every client within {timeout}s")


class _RawExchange(Protocol):
    """Writes bytes as they are, collects everything the server sends until it closes."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.chunks: list[bytes] = []
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(b"".join(self.chunks))


async def raw_exchange(port: int, data: bytes, timeout: float = WAIT) -> bytes:
    """Send ``data`` verbatim to 127.0.0.1:``port`` from the reactor; all the answer until the server
    closes (``raw_request``'s counterpart for reactor tests: no thread)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    client = _RawExchange(data)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)
    await connectProtocol(endpoint, client).addTimeout(timeout, reactor)
    try:
        return await client.closed.addTimeout(timeout, reactor)
    except BaseException:
        client.transport.abortConnection()  # type: ignore[union-attr]
        raise
