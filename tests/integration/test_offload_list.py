"""An app hands a connection over to several channels: ``X-SSE-Offload: user-42, news`` (or the seed's
``uwsgi.add_var("X-SSE-OFFLOAD", "user-42, news")``), with no rule configured.

The app is tests/apps/channels.py, in-process, behind a real bridge and a real redis-server; requests
are raw HTTP. What the router resolves is read at ``Bridge.start_stream`` (the stream itself is the
hub's and the streams' business, tested with them), so these tests pin the header parsing and the cap.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.server import Request

from ssebridge.routing.rules import Resolved
from ssebridge.testing import RedisProcess, connect_sse
from tests.helpers import RunBridge, port_of, raw_request

APP = """[uwsgi]
http-socket = 127.0.0.1:{port}
redis = {redis}
wsgi-file = {apps}/channels.py
max-channels = 3
"""


def answer(port: int, target: bytes) -> tuple[int, dict[bytes, bytes]]:
    """The status and headers the bridge answers ``GET target`` with (connection closed after)."""
    reply = raw_request(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(head[0].split(b" ", 2)[1]), headers


def record_streams(service: Any) -> list[Resolved]:
    """Answer every stream the bridge would start with its channels in a header, and keep them."""
    seen: list[Resolved] = []

    def start_stream(request: Request, resolved: Resolved, status: int = 200) -> None:
        seen.append(resolved)
        request.setResponseCode(status)
        request.setHeader(b"X-Channels", b"|".join(resolved.channels))
        request.finish()

    service.bridge.start_stream = start_stream
    return seen


@pytest_twisted.ensureDeferred
async def test_header_and_variable_lists_become_several_channels(run_bridge: RunBridge) -> None:
    service = await run_bridge(APP)
    seen = record_streams(service)
    port = port_of(service)
    cases = [
        (b"/helper?name=user-42,%20news", b"user-42|news"),  # the header, as offload_header writes it
        (b"/naive?name=%20,user-42,,news%20,", b"user-42|news"),  # empty items ignored, each trimmed
        (b"/add_var?name=user-42,%20news", b"user-42|news"),  # the seed's variable
        (b"/helper?name=caf%C3%A9,%25x,a:b", "café|%x|a:b".encode()),
        (b"/helper?name=clock", b"clock"),  # one channel: as it always was
    ]
    for target, channels in cases:
        status, headers = await deferToThread(answer, port, target)
        assert (status, headers.get(b"x-channels")) == (200, channels), target
    assert all(r.mode == "sse" and r.patterns == () and not r.name_events for r in seen)
    assert [r.channel for r in seen] == [b"user-42", b"user-42", b"user-42", "café".encode(), b"clock"]


@pytest_twisted.ensureDeferred
async def test_lists_past_the_cap_or_with_a_bad_name_are_refused(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    service = await run_bridge(APP)
    seen = record_streams(service)
    port = port_of(service)
    for target in (
        b"/helper?name=a,b,c,d",  # max-channels = 3
        b"/add_var?name=a,b,c,d",
        b"/helper?name=%20,%20",  # no channel at all: "empty channel", as an empty header always was
        b"/helper?name=a," + b"x" * 300,  # one name too long: the whole list is refused
    ):
        status, _ = await deferToThread(answer, port, target)
        assert status == 400, target
    assert seen == []
    assert redis.command("PUBSUB", "CHANNELS", "*") == []
    status, headers = await deferToThread(answer, port, b"/helper?name=a,b,c")
    assert (status, headers[b"x-channels"]) == (200, b"a|b|c")


@pytest_twisted.ensureDeferred
async def test_a_listed_hand_over_streams(run_bridge: RunBridge, redis: RedisProcess) -> None:
    """End to end: the first channel of a list streams today; each of the others once the stream
    carries several (the hub's part)."""
    port = port_of(await run_bridge(APP))
    client = await connect_sse(reactor, "127.0.0.1", port, b"/helper?name=offl-a,%20offl-b")
    try:
        assert client.status == 200
        assert redis.publish("offl-a", "to a") == 1
        assert (await client.wait_events(1))[0].data == "to a"
    finally:
        await client.disconnect()
