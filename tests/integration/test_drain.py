"""Issue 13, item 2: on SIGTERM (``BridgeService.stopService``), requests the app already runs finish
and their answers reach their clients; requests it has not started get 503 with ``Retry-After``; the
app runs each request exactly once.

Both upstreams, each against a real app: in-process WSGI (a file loaded by the bridge), and a proxy to
the same app served by waitress in a subprocess. The app records every run in a file and holds a slow
POST until the test opens a gate (a file), so "in the app while SIGTERM arrives" is a fact, not a
timing. Clients are plain sockets: one sends the slow POST, another holds a keep-alive connection
made before SIGTERM (the listener closes at once, so that is how a request still arrives after it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from ssebridge.config.model import load_config
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import RedisProcess, free_port
from tests.helpers import port_of, until, within

pytest.importorskip("waitress")

#: The app: every run is a line in RUNS; POST /slow... waits for GATE, then answers.
APP = '''
import os, time

RUNS = {runs!r}
GATE = {gate!r}


def application(environ, start_response):
    path = environ["PATH_INFO"]
    body = environ["wsgi.input"].read()
    with open(RUNS, "a") as f:
        f.write(environ["REQUEST_METHOD"] + " " + path + "\\n")
    if path.startswith("/slow"):
        waited = 0.0
        while not os.path.exists(GATE) and waited < 30:
            time.sleep(0.01)
            waited += 0.01
    answer = b"done " + path.encode() + b" " + body
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))])
    return [answer]
'''


class App:
    """The app's files: where it records its runs, and the gate that lets a slow POST answer."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.runs = directory / "runs.log"
        self.gate = directory / "gate"
        (directory / "drainapp.py").write_text(APP.format(runs=str(self.runs), gate=str(self.gate)))

    def ran(self) -> list[str]:
        return self.runs.read_text().splitlines() if self.runs.exists() else []

    def open_gate(self) -> None:
        self.gate.touch()


def read_response(sock: socket.socket) -> bytes:
    """One response: its headers and a ``Content-Length`` body, or everything until the server closes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        while chunk := sock.recv(65536):
            rest += chunk
        return head + b"\r\n\r\n" + rest
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def post(path: str, body: bytes = b"pizza") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), len(body), body)
    )


class Client:
    """A blocking keep-alive connection, used from threads (``deferToThread``)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    def ask(self, request: bytes) -> Deferred[bytes]:
        def exchange() -> bytes:
            self.sock.sendall(request)
            return read_response(self.sock)

        return deferToThread(exchange)

    def close(self) -> None:
        self.sock.close()


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def header(response: bytes, name: str) -> str | None:
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode()
    return None


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App(tmp_path)


@pytest.fixture
def waitress(app: App) -> Iterator[int]:
    """The app served by waitress in a subprocess; its port."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(app.directory)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "--threads=4"]
        + ["drainapp:application"],
        cwd=app.directory,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("waitress did not start") from None
                subprocess.run(["sleep", "0.02"], check=True)
        else:
            raise RuntimeError("waitress did not listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)



@pytest_twisted.async_yield_fixture
async def start_bridge(tmp_path: Path, redis: RedisProcess) -> AsyncIterator[Callable[..., Any]]:
    """Start a bridge from TOML text (``{port}`` and ``{redis}`` filled in); stopped after the test if
    the test did not stop it."""
    services: list[BridgeService] = []

    async def start(text: str) -> BridgeService:
        path = tmp_path / "bridge.toml"
        path.write_text(text.format(port=free_port(), redis=f"127.0.0.1:{redis.port}"))
        service = BridgeService(load_config(path))
        await service.startService()
        services.append(service)
        return service

    yield start
    for service in services:
        if service.running:
            await service.stopService()


COMMON = """
listen = "tcp:{port}:interface=127.0.0.1"
redis = "{redis}"
shutdown_window = 0.1
drain_timeout = 20
"""


async def _slow_post_survives_sigterm(service: BridgeService, app: App, queued: bool) -> None:
    port = port_of(service)
    early = Client(port)  # a keep-alive connection made before SIGTERM
    slow = Client(port)
    waiting = Client(port)
    try:
        first = await within(early.ask(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n"))
        assert status(first) == 200
        answer = slow.ask(post("/slow-order"))
        await until(lambda: "POST /slow-order" in app.ran(), what="the slow POST inside the app")
        queued_answer = waiting.ask(post("/queued-order")) if queued else None
        if queued_answer is not None:
            # With one thread busy, it waits in the pool's queue: accepted, not started.
            await until(lambda: service.upstream is not None and service.upstream.active == 2, what="queued")

        stopping = service.stopService()  # what twistd does on SIGTERM

        late = await within(early.ask(post("/late-order")))
        assert status(late) == 503, late
        assert header(late, "Retry-After") is not None
        assert header(late, "Connection") == "close"
        if queued_answer is not None:
            refused = await within(queued_answer)
            assert status(refused) == 503, refused
            assert header(refused, "Retry-After") is not None
        assert not answer.called, "the slow POST was answered before the app finished it"

        app.open_gate()
        response = await within(answer, 30)
        assert status(response) == 200, response
        assert response.endswith(b"done /slow-order pizza")
        await within(stopping, 30)
    finally:
        for client in (early, slow, waiting):
            client.close()
    # Each request the app started ran once; the refused ones never reached it.
    assert app.ran() == ["GET /ping", "POST /slow-order"]


@pytest_twisted.ensureDeferred
async def test_wsgi_slow_post_is_answered_after_sigterm(app: App, start_bridge: Any) -> None:
    service = await start_bridge(COMMON + f'wsgi_file = "{app.directory / "drainapp.py"}"\nthreads = 1\n')
    await _slow_post_survives_sigterm(service, app, queued=True)


@pytest_twisted.ensureDeferred
async def test_proxy_slow_post_is_answered_after_sigterm(app: App, waitress: int, start_bridge: Any) -> None:
    service = await start_bridge(COMMON + f'proxy = "http://127.0.0.1:{waitress}"\n')
    await _slow_post_survives_sigterm(service, app, queued=False)


@pytest_twisted.ensureDeferred
async def test_the_drain_is_bounded(app: App, start_bridge: Any) -> None:
    """An app that does not finish within drain_timeout does not hold the stop: its client gets a
    503 (the bridge cannot vouch for what the app did), and the service stops."""
    text = COMMON.replace("drain_timeout = 20", "drain_timeout = 0.3")
    service = await start_bridge(text + f'wsgi_file = "{app.directory / "drainapp.py"}"\n')
    slow = Client(port_of(service))
    try:
        answer = slow.ask(post("/slow-forever"))
        await until(lambda: "POST /slow-forever" in app.ran(), what="the slow POST inside the app")
        stopping = service.stopService()
        response = await within(answer, 30)
        assert status(response) == 503
        app.open_gate()  # lets the pool thread end, so the stop need not wait out its grace
        await within(stopping, 30)
    finally:
        slow.close()
    assert app.ran() == ["POST /slow-forever"]
