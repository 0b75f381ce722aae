"""Hypothesis throws arbitrary request lines, paths and headers at a running bridge.

Whatever arrives, the answer is a clean HTTP status below 500 (or the connection closes), never a
traceback, and the bridge keeps serving.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssebridge.testing import RedisProcess, free_port
from tests.helpers import twistd, wait_port


@pytest.fixture(scope="module")
def bridge_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    redis = RedisProcess().start()
    directory = tmp_path_factory.mktemp("fuzz")
    (directory / "static").mkdir()
    (directory / "static" / "a.txt").write_text("a")
    port = free_port()
    config = directory / "fuzz.ini"
    config.write_text(
        f"[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = 127.0.0.1:{redis.port}\n"
        "route = ^/events/(.*)$ sse:$1\nroute = ^/q sse:${qs[c]}\nroute = ^/h sse:${HTTP_X_CHANNEL}\n"
        "static-map = /static=static\nheader-timeout = 2\nconfirm-timeout = 0.5\n"
    )
    proc = twistd("-n", "--pidfile=", "ssebridge", "--config", str(config), stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc=proc)
    except AssertionError:
        proc.kill()
        raise
    yield port
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    redis.cleanup()
    # Errors a request provoked would be logged as "Unhandled Error" with a traceback.
    where = out.find(b"Traceback")
    assert where < 0, out[max(0, where - 1500) : where + 3000].decode(errors="replace")


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(3)
        reply = b""
        try:
            while len(reply) < 200:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return reply


path_bytes = st.binary(max_size=60).map(
    lambda b: b.replace(b" ", b"%20").replace(b"\r", b"").replace(b"\n", b"")
)
encoded = st.lists(
    st.sampled_from(
        [b"/", b"..", b"%2e", b"%2f", b"%00", b"%0d%0a", b"%ff", b"events", b"static", b"q?c=", b"%", b"a"]
    ),
    max_size=12,
).map(b"".join)
methods = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"BREW", b"G\x00T", b""])
header_value = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    method=methods,
    path=st.one_of(path_bytes, encoded),
    channel=header_value,
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"", b"JUNK"]),
)
def test_any_request_gets_a_clean_answer(
    bridge_port: int, method: bytes, path: bytes, channel: bytes, version: bytes
) -> None:
    target = b"/" + path.lstrip(b"/")
    request = method + b" " + target + b" " + version + b"\r\nHost: x\r\nX-Channel: " + channel + b"\r\n\r\n"
    reply = exchange(bridge_port, request)
    if reply:
        assert reply.startswith(b"HTTP/1."), reply[:80]
        status = int(reply.split(b" ")[1])
        assert status < 500, reply[:200]
        assert b"Traceback" not in reply


def test_still_serving_after_the_fuzz(bridge_port: int) -> None:
    reply = exchange(bridge_port, b"GET /static/a.txt HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 200")
