"""systemd integration: socket activation, readiness notices, the unit files themselves."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ssebridge.runtime.sdnotify import notify
from ssebridge.testing import RedisProcess, free_port
from tests.helpers import REPO, TWISTD


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def get(port: int, path: str) -> bytes:
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                s.settimeout(5)
                return s.recv(4096)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def free_ports_in_a_row(count: int, avoid: int) -> int:
    """The first of ``count`` consecutive free ports (worker i serves metrics on the port plus i)."""
    while True:
        first = free_port()
        ports = range(first, first + count)
        if avoid in ports:
            continue
        try:
            for p in ports[1:]:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return first


def test_notify_sends_to_the_socket_and_does_nothing_without_one(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert notify("READY=1", {"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1"
    assert not notify("READY=1", {})


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd not installed")
@pytest.mark.parametrize("workers", [1, 2])
def test_socket_activation_and_ready_stopping_notices(
    tmp_path: Path, redis: RedisProcess, workers: int
) -> None:
    port = free_port()
    metrics_port = free_ports_in_a_row(2, avoid=port)
    config = tmp_path / "sd.toml"
    config.write_text(
        f'listen = "systemd:domain=INET:index=0"\nredis = "127.0.0.1:{redis.port}"\nshutdown_window = 0.2\n'
        f'workers = {workers}\nmetrics_listen = "tcp:{metrics_port}:interface=127.0.0.1"\n'
        '[[route]]\nmatch = "^/s$"\naction = "sse:s"\n'
    )
    notify_path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(20)
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            f"127.0.0.1:{port}",
            "--fdname=web",
            "-E",
            "PYTHONPATH",
            "-E",
            f"NOTIFY_SOCKET={notify_path}",
            *TWISTD,
            "--nodaemon",
            "--pidfile=",
            "--logger=ssebridge.logs.json_stdout",
            "ssebridge",
            "--config",
            str(config),
        ],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # The socket is systemd's: it accepts before the bridge even started; the bridge answers.
        reply = get(port, "/s")
        assert reply.startswith(b"HTTP/1.0 200") and b"text/event-stream" in reply
        assert b"READY=1" in listener.recv(1000)
        # systemd hands over a blocking socket: workers that share it must still all answer.
        for _ in range(12):
            assert get(port, "/s").startswith(b"HTTP/1.0 200")
        # Each worker is its own metrics target: the configured port plus its index.
        for index in range(workers):
            assert b"ssebridge_streams_open" in get(metrics_port + index, "/metrics")
        proc.send_signal(signal.SIGTERM)
        assert b"STOPPING=1" in listener.recv(1000)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        listener.close()
    # --logger gave one JSON object a line, with structured fields.
    # Workers log as their parent does: every line is JSON.
    events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert any(
        e.get("message", "").startswith("stream closed") and e.get("channel") == "s" for e in events
    )
    # Flat lines: no Twisted internals; with a pool, a worker's lines name it.
    assert not any(key.startswith("log_") for e in events for key in e)
    closes = [e for e in events if e["message"].startswith("stream closed")]
    if workers > 1:
        assert closes and all(e.get("worker") in range(workers) for e in closes)
    else:
        assert all("worker" not in e for e in events)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd not installed")
def test_unit_files_verify() -> None:
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(REPO / "etc/ssebridge.service"),
            str(REPO / "etc/ssebridge.socket"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        # Outside a booted systemd (a container, CI) verify also reports on the host's own units.
        if "ssebridge" in line
    ]
    assert result.returncode == 0 or not problems, problems
    assert not problems, problems
