"""Protocol details a hostile review found (issue 14, defect 10), against a whole in-process bridge.

The upstream here is a tiny raw-socket HTTP server written in the test: it records each request it
gets verbatim and answers with canned bytes, including ones no HTTP library would write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from tests.helpers import RunBridge, port_of, raw_request

#: What the raw upstream answers, by request path.
REPLIES: dict[bytes, bytes] = {
    b"/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Fine: yes\r\n\r\nok",
    b"/neg": b"HTTP/1.1 -1 Neg\r\nContent-Length: 2\r\n\r\nok",
    b"/999": b"HTTP/1.1 999 Big\r\nContent-Length: 2\r\n\r\nok",
    b"/nul-reason": b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok",
    b"/esc-reason": b"HTTP/1.1 200 O\x1b[2JK\r\nContent-Length: 2\r\n\r\nok",
    b"/nul-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    b"/esc-value": b"HTTP/1.1 200 OK\r\nX-A: a\x1b[2Jb\r\nContent-Length: 2\r\n\r\nok",
}


class _RawUpstream(Protocol):
    def __init__(self, seen: list[bytes]) -> None:
        self.seen = seen
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            head = self.buffer.split(b"\r\n\r\n", 1)[0]
            self.seen.append(head)
            path = head.split(b" ")[1]
            self.transport.write(REPLIES.get(path, REPLIES[b"/ok"]))
            self.transport.loseConnection()


class RawUpstream(Factory):
    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        return _RawUpstream(self.seen)

    def headers(self, index: int = -1) -> dict[bytes, list[bytes]]:
        """The fields of a request it got, by lower-cased name."""
        fields: dict[bytes, list[bytes]] = {}
        for line in self.seen[index].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            fields.setdefault(name.strip().lower(), []).append(value.strip())
        return fields


@pytest_twisted.async_yield_fixture
async def upstream() -> Any:
    factory = RawUpstream()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    factory.port = port.getHost().port  # type: ignore[attr-defined]
    yield factory
    await port.stopListening()


async def bridge_with(run_bridge: RunBridge, upstream: RawUpstream, extra: str = "") -> int:
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\n"
        f"proxy = http://127.0.0.1:{upstream.port}\n"  # type: ignore[attr-defined]
        "route = ^/events/(.+)$ sse:$1\nroute-public = true\n" + extra
    )
    return port_of(service)


async def exchange(port: int, request: bytes) -> bytes:
    return await deferToThread(raw_request, port, request)


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


@pytest_twisted.ensureDeferred
async def test_an_invalid_upstream_reply_is_a_502(run_bridge: RunBridge, upstream: RawUpstream) -> None:
    port = await bridge_with(run_bridge, upstream)
    ok = await exchange(port, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(ok) == 200 and ok.endswith(b"\r\n\r\nok") and b"X-Fine: yes" in ok
    for path in (b"/neg", b"/999", b"/nul-reason", b"/esc-reason", b"/nul-value", b"/esc-value"):
        reply = await exchange(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(reply) == 502, (path, reply)
        assert b"\x00" not in reply and b"\x1b" not in reply, path


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_with_an_oversized_body_gets_413_only(
    run_bridge: RunBridge, upstream: RawUpstream
) -> None:
    port = await bridge_with(run_bridge, upstream, "max-body = 1000\n")
    head = b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
    reply = await exchange(port, head % 5000)
    assert reply.startswith(b"HTTP/1.1 413"), reply
    assert b"100 Continue" not in reply
    # A body within the limit is still invited, then forwarded.
    reply = await exchange(port, (head % 3).replace(b"Host: x", b"Host: x\r\nConnection: close") + b"abc")
    assert reply.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), reply


@pytest_twisted.ensureDeferred
async def test_options_star_is_a_400(run_bridge: RunBridge, upstream: RawUpstream) -> None:
    port = await bridge_with(run_bridge, upstream)
    for method in (b"OPTIONS", b"GET", b"HEAD"):
        reply = await exchange(port, method + b" * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(reply) == 400, (method, reply)
    assert upstream.seen == []


@pytest_twisted.ensureDeferred
async def test_duplicate_host_is_a_400(run_bridge: RunBridge, upstream: RawUpstream) -> None:
    port = await bridge_with(run_bridge, upstream)
    for path in (b"/ok", b"/events/news"):
        request = (
            b"GET " + path + b" HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n"
        )
        assert status_of(await exchange(port, request)) == 400, path
    assert upstream.seen == []


@pytest_twisted.ensureDeferred
async def test_forwarded_false_strips_a_clients_forwarding_headers(
    run_bridge: RunBridge, upstream: RawUpstream
) -> None:
    port = await bridge_with(run_bridge, upstream, "forwarded = false\n")
    request = (
        b"GET /ok HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: admin.example\r\nForwarded: for=10.0.0.1\r\nX-Real-IP: 10.0.0.1\r\n"
        b"X-Other: kept\r\nConnection: close\r\n\r\n"
    )
    assert status_of(await exchange(port, request)) == 200
    fields = upstream.headers()
    assert [
        name for name in fields if name.startswith(b"x-forwarded") or name in (b"forwarded", b"x-real-ip")
    ] == []
    assert fields[b"x-other"] == [b"kept"] and fields[b"host"] == [b"app.example"]


@pytest_twisted.ensureDeferred
async def test_connection_cannot_remove_end_to_end_headers(
    run_bridge: RunBridge, upstream: RawUpstream
) -> None:
    port = await bridge_with(run_bridge, upstream, "forwarded = true\n")
    request = (
        b"GET /ok HTTP/1.1\r\nHost: app.example\r\nCookie: session=1\r\nAuthorization: Bearer t\r\n"
        b"X-Forwarded-For: 198.51.100.7\r\nX-Private: gone\r\n"
        b"Connection: close, X-Forwarded-For, Cookie, Authorization, Host, X-Private\r\n\r\n"
    )
    assert status_of(await exchange(port, request)) == 200
    fields = upstream.headers()
    assert fields[b"cookie"] == [b"session=1"]
    assert fields[b"authorization"] == [b"Bearer t"]
    assert fields[b"host"] == [b"app.example"]
    assert fields[b"x-forwarded-for"] == [b"198.51.100.7, 127.0.0.1"]
    assert fields[b"x-forwarded-host"] == [b"app.example"]
    assert b"x-private" not in fields  # a name Connection may scope to the hop is still removed


WSGI_ECHO = """
def application(environ, start_response):
    body = "\\n".join(sorted(k for k in environ if k.startswith("HTTP_"))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


@pytest_twisted.ensureDeferred
async def test_forwarded_false_strips_them_from_the_wsgi_environ(
    run_bridge: RunBridge, tmp_path: Path
) -> None:
    app = tmp_path / "echo_environ.py"
    app.write_text(WSGI_ECHO)
    service = await run_bridge(
        "[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nredis = {redis}\n"
        f"wsgi-file = {app}\nforwarded = false\n"
    )
    request = (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: admin.example\r\n"
        b"Forwarded: for=10.0.0.1\r\nX-Other: 1\r\nConnection: close\r\n\r\n"
    )
    reply = await exchange(port_of(service), request)
    keys = reply.split(b"\r\n\r\n", 1)[1].split(b"\n")
    assert b"HTTP_X_OTHER" in keys and b"HTTP_HOST" in keys
    assert [k for k in keys if b"FORWARDED" in k] == []


@pytest_twisted.ensureDeferred
async def test_control_characters_are_escaped_in_log_lines(
    run_bridge: RunBridge, upstream: RawUpstream
) -> None:
    port = await bridge_with(run_bridge, upstream)
    lines: list[str] = []

    def observe(event: Any) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        # Twisted refuses any raw byte outside printable ASCII in the request line (a path arrives
        # percent-encoded), but not ESC in a header value.
        await exchange(port, b"GET /caf%e9%1b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await exchange(port, b"GET /x HTTP/1.1\r\nHost: a\x1b[2J\r\nHost: b\r\nConnection: close\r\n\r\n")
        await exchange(port, b"GET /esc-reason HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        globalLogPublisher.removeObserver(observe)
    refused = [line for line in lines if "refused request" in line or "upstream answered" in line]
    assert len(refused) >= 3, lines
    for line in refused:
        assert "\x1b" not in line, line
    assert any("Host fields: a\\x1b[2J, b" in line for line in refused), refused
    assert any("path /caf%e9%1b is not valid UTF-8" in line for line in refused), refused
