"""Issue 13, item 2 through a real SIGTERM: ``twistd ssebridge`` with an in-process WSGI app, alone and
as a pool of workers (the parent passes SIGTERM on, as a reload does to a replaced worker).

A slow POST is inside the app when SIGTERM arrives: its answer still reaches the client; a request on a
keep-alive connection made before gets 503 with ``Retry-After``; the app runs each request once.
The app and the helpers are those of tests/integration/test_drain.py.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssebridge.testing import RedisProcess, free_port
from tests.helpers import stop_process, twistd, wait_port
from tests.integration.test_drain import App, header, post, read_response, status

WAIT = 30.0


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.cleanup()


def wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {WAIT}s")
        time.sleep(0.02)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_the_running_post_answer(
    tmp_path: Path, redis: RedisProcess, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each worker's log lines reach the file as they are written (the test waits for one).
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    app = App(tmp_path)
    port = free_port()
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "127.0.0.1:{redis.port}"\n'
        f'wsgi_file = "{tmp_path / "drainapp.py"}"\nthreads = 2\nworkers = {workers}\n'
        "shutdown_window = 0.1\ndrain_timeout = 20\n"
    )
    log = tmp_path / "bridge.log"
    with log.open("wb") as out:
        proc = twistd("-n", "--pidfile=", "ssebridge", "--config", str(config), cwd=tmp_path, stdout=out)
    try:
        wait_port(port, proc=proc)
        # Keep-alive connections made before SIGTERM: how a request still arrives after it. With
        # workers, each lands on either one (SO_REUSEPORT); 16 leave ~1 in 30,000 that none is on
        # the worker that runs the slow POST (the other, with nothing to drain, exits at once).
        early = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(16)]
        for sock in early:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status(read_response(sock)) == 200
        slow = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        slow.sendall(post("/slow-order"))
        wait_for(lambda: "POST /slow-order" in app.ran(), "the slow POST inside the app")

        proc.send_signal(signal.SIGTERM)
        # Every process has begun draining (each logs it): from then on nothing new reaches the app.
        wait_for(lambda: log.read_text().count("draining the WSGI app") == workers, "the drain")

        refused = 0
        for sock in early:
            try:
                sock.sendall(post("/late-order"))
                late = read_response(sock)
            except OSError:  # reset: its worker had exited
                continue
            if late:  # else closed unanswered by a worker exiting: never run either
                assert status(late) == 503, late
                assert header(late, "Retry-After") is not None
                refused += 1
        assert refused, "no request arrived after SIGTERM"

        app.open_gate()
        answer = read_response(slow)
        assert status(answer) == 200, answer
        assert answer.endswith(b"done /slow-order pizza")
        proc.wait(WAIT)
    finally:
        stop_process(proc)
    # Each request the app started ran once; no late one reached it.
    assert app.ran() == ["GET /ping"] * 16 + ["POST /slow-order"]
    assert "still running after drain_timeout" not in log.read_text()
