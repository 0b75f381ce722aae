"""Channel names are bytes end to end: distinct bytes never merge into one channel.

Every way a name reaches the bridge (URL path, query, request header, the app's offload header, a
collected header, ``uwsgi.add_var``) decodes one way (``ssebridge.routing.wire``): valid UTF-8 is the
channel of those bytes, anything else is refused with 400, never replaced by U+FFFD (which merged
``user-Zo\\xe9`` and ``user-Zo\\xeb`` into one channel: a cross-user leak).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from ssebridge.testing import RedisProcess, connect_sse
from tests.helpers import RunBridge, port_of, raw_request

APP = """[uwsgi]
http-socket = 127.0.0.1:{port}
redis = {redis}
wsgi-file = {apps}/channels.py
collect-header = X-Chan CHAN
final-route-if-not = empty:${{CHAN}} sse:${{CHAN}}
route = ^/q$ sse:u-${{qs[ch]}}
route-public = true
route = ^/h$ sse:u-${{HTTP_X_USER}}
route-public = true
route = ^/p/(.+)$ sse:u-$1
route-public = true
"""

ZOE_UTF8 = "user-Zoé".encode()  # b"user-Zo\xc3\xa9"


def status_of(port: int, target: bytes, headers: bytes = b"") -> int:
    head = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    answer = raw_request(port, head + headers + b"\r\n")
    return int(answer.split(b" ", 2)[1])


async def receives(port: int, target: bytes, redis: RedisProcess, channel: bytes) -> None:
    """A stream opened on ``target`` gets what is published on exactly ``channel``."""
    client = await connect_sse(reactor, "127.0.0.1", port, target)
    try:
        assert client.status == 200
        assert redis.publish(channel, b"for " + channel) == 1
        assert (await client.wait_events(1))[0].data.encode() == b"for " + channel
    finally:
        await client.disconnect()


@pytest.mark.parametrize(
    "target, headers",
    [
        # Two users whose names differ only in a byte that is not UTF-8.
        (b"/q?ch=Zo%E9", b""),
        (b"/q?ch=Zo%EB", b""),
        (b"/h", b"X-User: Zo\xe9\r\n"),
        (b"/h", b"X-User: Zo\xeb\r\n"),
        # The app's header carrying latin-1 bytes (a str header with an accent, as PEP 3333 encodes it).
        (b"/naive?name=user-Zo%C3%A9", b""),
        (b"/raw?c=user-Zo%E9", b""),
        (b"/raw?c=user-Zo%EB", b""),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bytes_that_are_not_utf8_are_refused_not_merged(
    run_bridge: RunBridge, redis: RedisProcess, target: bytes, headers: bytes
) -> None:
    port = port_of(await run_bridge(APP))
    assert await deferToThread(status_of, port, target, headers) == 400
    # Nothing was subscribed under a replacement name.
    assert redis.command("PUBSUB", "CHANNELS", "*") == []


@pytest_twisted.ensureDeferred
async def test_utf8_names_reach_their_own_channel_every_way(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    port = port_of(await run_bridge(APP))
    await receives(port, b"/helper?name=user-Zo%C3%A9", redis, ZOE_UTF8)
    await receives(port, b"/add_var?name=user-Zo%C3%A9", redis, ZOE_UTF8)
    await receives(port, b"/raw?c=user-Zo%C3%A9", redis, ZOE_UTF8)
    await receives(port, b"/q?ch=Zo%C3%A9", redis, b"u-Zo\xc3\xa9")
    await receives(port, b"/p/Zo%C3%A9", redis, b"u-Zo\xc3\xa9")


@pytest_twisted.ensureDeferred
async def test_header_route_uses_utf8_not_latin1(run_bridge: RunBridge, redis: RedisProcess) -> None:
    """A request header's UTF-8 bytes are the channel's bytes (latin-1 decoding double-encoded them)."""
    port = port_of(await run_bridge(APP))
    client = await connect_sse(reactor, "127.0.0.1", port, b"/h", headers={b"X-User": b"Zo\xc3\xa9"})
    try:
        assert client.status == 200
        assert redis.publish(b"u-Zo\xc3\xa9", b"hi") == 1
        assert (await client.wait_events(1))[0].data == "hi"
    finally:
        await client.disconnect()
