"""Issue 13, item 3b: a stream route takes GET and HEAD; any other method gets 405 with
``Allow: GET, HEAD`` and opens nothing (a POST used to open a stream). With a body, the same 405 comes
before the body is read (``http.admission``), so a client sees one answer for one mistake.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from ssebridge.testing import RedisProcess
from tests.helpers import RunBridge, port_of, raw_request, until, within

NO_APP = """[uwsgi]
http-socket = 127.0.0.1:{port}
redis = {redis}
route = ^/events/(.+)$ sse:$1
"""

WITH_APP = NO_APP + "route-public = true\nwsgi-file = {apps}/governed.py\n"


def ask(port: int, method: str, path: str, body: bytes | None = None) -> bytes:
    """One request on its own connection (closed after); with ``body=None``, no body at all."""
    framing = f"Content-Length: {len(body)}\r\n" if body is not None else ""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{framing}\r\n".encode()
    return raw_request(port, head + (body or b""))


def headers_only(port: int, method: str, path: str, length: int) -> bytes:
    """Send the headers of a ``length``-byte body and none of it; what comes back before it is read."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        return reply


def field(reply: bytes, name: bytes) -> bytes | None:
    for line in reply.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@pytest.mark.parametrize("config", [NO_APP, WITH_APP], ids=["no-app", "with-app"])
@pytest_twisted.ensureDeferred
async def test_other_methods_get_405_with_allow(
    run_bridge: RunBridge, redis: RedisProcess, config: str
) -> None:
    port = port_of(await run_bridge(config))
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for body in (None, b"", b"order=1"):
            reply = await within(deferToThread(ask, port, method, "/events/orders", body))
            assert reply.startswith(b"HTTP/1.1 405 "), (method, body, reply[:120])
            assert field(reply, b"Allow") == b"GET, HEAD", reply
            assert b"event-stream" not in reply
    # Nothing was subscribed for any of them.
    assert redis.numsub("orders") == 0


@pytest_twisted.ensureDeferred
async def test_a_big_body_gets_the_405_before_it_is_read(run_bridge: RunBridge) -> None:
    port = port_of(await run_bridge(WITH_APP))
    # Under max_body (10 MiB): a body over it is refused for its size first (413), method or not.
    reply = await within(deferToThread(headers_only, port, "POST", "/events/orders", 5 * 1024 * 1024))
    assert reply.startswith(b"HTTP/1.1 405 "), reply[:120]
    assert field(reply, b"Allow") == b"GET, HEAD"
    assert field(reply, b"Connection") == b"close"


@pytest_twisted.ensureDeferred
async def test_a_static_file_answers_the_same_405_with_a_body_or_without(
    run_bridge: RunBridge, tmp_path: Path
) -> None:
    (tmp_path / "page.html").write_text("<p>hi</p>")
    port = port_of(await run_bridge(WITH_APP + f"static-map = /page={tmp_path}/page.html\n"))
    for body in (None, b"x" * 100):
        reply = await within(deferToThread(ask, port, "POST", "/page", body))
        assert reply.startswith(b"HTTP/1.1 405 "), (body, reply[:120])
        assert field(reply, b"Allow") == b"GET, HEAD"


@pytest_twisted.ensureDeferred
async def test_get_streams_and_head_answers_the_stream_headers(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    port = port_of(await run_bridge(NO_APP))
    reply = await within(deferToThread(ask, port, "HEAD", "/events/news"))
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    assert field(reply, b"Content-Type") == b"text/event-stream"
    assert reply.endswith(b"\r\n\r\n")  # headers only

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /events/news HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: redis.numsub("news") == 1, what="the GET subscribed")
        redis.publish("news", "hello")
        got = b""
        while b"data: hello" not in got:
            chunk = await within(deferToThread(s.recv, 65536))
            assert chunk, got
            got += chunk
    assert got.startswith(b"HTTP/1.1 200 ")


@pytest_twisted.ensureDeferred
async def test_other_paths_still_reach_the_app_with_any_method(run_bridge: RunBridge) -> None:
    """The 405 is the stream route's: a POST the rules do not take is the app's, as before."""
    port = port_of(await run_bridge(WITH_APP))
    reply = await within(deferToThread(ask, port, "POST", "/echo", b"x" * 10))
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:120]
    assert b"\r\nPOST\r\n" in reply and b"\r\nxxxxxxxxxx\r\n" in reply
