"""Redis glob patterns on streams (``psubscribe=``): real redis-server, an in-process bridge, real HTTP.

A pattern is one PSUBSCRIBE per bridge (two names: the pattern and its envelope form, so events
published with ids reach it too), live only, resubscribed after a reconnect, refused like a channel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import redis as redis_py
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from ssebridge.config.model import load_config
from ssebridge.publish import Publisher
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import RedisProcess, SSEClient, connect_sse, free_port
from tests.helpers import RunBridge, port_of, publish_until_received, sleep, until

CONFIG = """[uwsgi]
http-socket = 127.0.0.1:{port}
redis = {redis}
route = ^/rooms$ sse:psubscribe=room.*
route = ^/named$ sse:psubscribe=room.*,name_events=1
route = ^/mixed/(.+)$ sse:subscribe=$1,psubscribe=room.*
route = ^/two/(.+)$ sse:subscribe=$1,subscribe=news,psubscribe=room.*,name_events=1
route = ^/raw$ sseraw:psubscribe=room.*
route = ^/secret$ sse:psubscribe=secret.*
route = ^/allowed$ sse:psubscribe=allowed.*
"""


REFUSED = "subscription refused by the message server, retrying"


@pytest.fixture
def publisher(redis: RedisProcess) -> Iterator[Publisher]:
    client = redis_py.Redis(port=redis.port, socket_timeout=5)
    yield Publisher(client, history=100)
    client.close()


async def open_stream(port: int, path: str) -> SSEClient:
    client = await connect_sse(reactor, "127.0.0.1", port, path.encode())
    assert client.status == 200
    return client


def numpat(redis: RedisProcess) -> int:
    return int(redis.command("PUBSUB", "NUMPAT"))


def group_of(service: BridgeService) -> Any:
    return next(iter(service.hub.groups.values()))


async def publish_until(redis: RedisProcess, client: SSEClient, channel: str, tag: str) -> None:
    """Publish ``tag`` until the client has it (the subscription may be on its way back)."""
    await publish_until_received(redis, [client], tag, timeout=10, channel=channel)


@pytest_twisted.ensureDeferred
async def test_a_pattern_stream_gets_matching_channels_only(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    service = await run_bridge(CONFIG)
    port = port_of(service)
    lines: list[str] = []
    observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        client = await open_stream(port, "/rooms")
    finally:
        globalLogPublisher.removeObserver(observer)
    # A stream of patterns alone has no channel; its log lines name its patterns.
    assert any(line.startswith("stream opened: channel= patterns=room.* client=") for line in lines)
    stream = next(iter(service.bridge.streams))
    assert (stream.channels, stream.patterns, stream.channel) == ((), (b"room.*",), b"")
    redis.publish("room.1", "x")
    redis.publish("other", "z")
    redis.publish("room.2", "y")
    events = await client.wait_events(2)
    assert [(e.data, e.event, e.id) for e in events] == [("x", "message", ""), ("y", "message", "")]
    # "other" was published between the two: had it been delivered, it would be second.
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_named_events_carry_the_actual_channel_made_safe(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    port = port_of(await run_bridge(CONFIG))
    client = await open_stream(port, "/named")
    redis.publish("room.1", "x")
    redis.publish("room.2", "y")
    # A channel name can hold any bytes; CR, LF and NUL would end the event: line and forge fields.
    redis.publish(b"room.\r\nid: 9\x00", "odd")
    events = await client.wait_events(3)
    assert [(e.event, e.data) for e in events] == [
        ("room.1", "x"),
        ("room.2", "y"),
        ("room.%0D%0Aid: 9%00", "odd"),
    ]
    assert events[2].id == ""  # the forged id: line did not take
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_one_psubscribe_for_many_streams_and_the_last_out_punsubscribes(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    service = await run_bridge(CONFIG)
    port = port_of(service)
    assert numpat(redis) == 0
    clients = [await open_stream(port, path) for path in ("/rooms", "/rooms", "/named", "/raw", "/mixed/a")]
    # One pattern per bridge, whatever the number of streams: room.* and its envelope form.
    assert numpat(redis) == 2
    assert list(group_of(service).patterns) == [b"room.*"]
    redis.publish("room.7", "all")
    for client in clients[:3]:
        assert [e.data for e in await client.wait_events(1)] == ["all"]
    assert await clients[3].wait_raw(3) == b"all"
    for client in clients:
        await client.disconnect()
    await until(lambda: numpat(redis) == 0, what="PUNSUBSCRIBE by the last stream out")
    assert not group_of(service).patterns


@pytest_twisted.ensureDeferred
async def test_a_pattern_is_resubscribed_after_the_connection_is_killed(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    service = await run_bridge(CONFIG)
    client = await open_stream(port_of(service), "/rooms")
    await publish_until(redis, client, "room.1", "before")
    redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    await until(lambda: service.stats.redis_disconnects >= 1, what="the kill noticed")
    await publish_until(redis, client, "room.2", "after")
    assert numpat(redis) == 2
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_events_with_ids_reach_patterns_with_their_id_on_a_pattern_only_stream(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher
) -> None:
    port = port_of(await run_bridge(CONFIG))
    rooms, named = await open_stream(port, "/rooms"), await open_stream(port, "/named")
    first = publisher.publish("room.1", "with id", event="enter")
    publisher.publish("other", "not matched")
    second = publisher.publish("room.2", "unnamed")
    events = await rooms.wait_events(2)
    assert [(e.data, e.event, e.id) for e in events] == [
        ("with id", "enter", first),
        ("unnamed", "message", second),
    ]
    named_events = await named.wait_events(2)
    assert [(e.event, e.id) for e in named_events] == [("enter", first), ("room.2", second)]
    # A pattern does not resume: a Last-Event-ID gets no replay and no gap, only what comes next.
    back = await connect_sse(
        reactor, "127.0.0.1", port, b"/rooms", headers={b"Last-Event-ID": first.encode()}
    )
    assert back.status == 200
    later = publisher.publish("room.3", "live")
    assert [(e.data, e.id) for e in await back.wait_events(1)] == [("live", later)]
    for client in (rooms, named, back):
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_pattern_matching_envelope_channels_never_shows_envelopes(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher
) -> None:
    """``*`` matches ``ssebridge:{news}:e`` too: an envelope is delivered decoded, once, never as bytes."""
    port = port_of(await run_bridge(CONFIG.replace("psubscribe=room.*\n", "psubscribe=*\n", 1)))
    client = await open_stream(port, "/rooms")
    published = publisher.publish("news", "decoded")
    redis.publish("plain", "plain")
    events = await client.wait_events(2)
    # Read together, a pattern's plain messages and its events are two batches (as a channel's are).
    by_data = {e.data: e for e in events}
    assert sorted(by_data) == ["decoded", "plain"] and by_data["decoded"].id == published
    await sleep(0.2)
    assert len(client.events) == 2
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_channels_and_patterns_on_one_stream(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher
) -> None:
    """The channels keep the stream's id (what resumes them); the pattern's events leave it alone."""
    service = await run_bridge(CONFIG)
    port = port_of(service)
    mixed, two = await open_stream(port, "/mixed/lobby"), await open_stream(port, "/two/u1")
    own = publisher.publish("lobby", "channel event")
    publisher.publish("room.3", "pattern event")
    redis.publish("room.4", "pattern plain")
    redis.publish("lobby", "channel plain")
    events = await mixed.wait_events(4)
    assert [(e.data, e.id) for e in events] == [
        ("channel event", own),
        ("pattern event", own),
        ("pattern plain", own),
        ("channel plain", own),
    ]
    news = publisher.publish("news", "n")
    redis.publish("room.5", "r")
    got = await two.wait_events(4)
    assert [(e.event, e.data, e.id) for e in got] == [
        ("room.3", "pattern event", ""),
        ("room.4", "pattern plain", ""),
        ("news", "n", f"news:{news}"),
        ("room.5", "r", f"news:{news}"),
    ]
    mine = publisher.publish("u1", "mine")
    publisher.publish("room.6", "last")
    got = (await two.wait_events(6))[4:]
    position = f"u1:{mine},news:{news}"
    assert [(e.data, e.id) for e in got] == [("mine", position), ("last", position)]
    # The stream resumes its channels only: the pattern is live, its position in no id.
    await two.disconnect()
    missed = publisher.publish("u1", "while away")
    back = await connect_sse(
        reactor, "127.0.0.1", port, b"/two/u1", headers={b"Last-Event-ID": got[-1].id.encode()}
    )
    replayed = await back.wait_events(1)
    assert [(e.event, e.data) for e in replayed] == [("u1", "while away")]
    assert replayed[0].id == f"u1:{missed},news:{news}"
    assert len(back.events) == 1
    for client in (mixed, back):
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_pattern_refused_by_an_acl_is_reported_like_a_refused_channel(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    service = await run_bridge(CONFIG + "confirm-timeout = 0.5\n")
    port = port_of(service)
    hub = service.hub
    secret, allowed = await open_stream(port, "/secret"), await open_stream(port, "/allowed")
    await publish_until(redis, secret, "secret.1", "before")
    # A PSUBSCRIBE is granted when the ACL names the pattern itself (and its envelope form). Redis
    # closes the subscriber that holds what is no longer granted; the bridge comes back, refused.
    redis.command("ACL", "SETUSER", "default", "resetchannels", "&allowed.*", "&ssebridge:{allowed.*}:e")
    await until(lambda: hub.refused_count() == 1, what="refusal noticed")
    assert "Redis refuses 1 subscription" in (hub.not_ready() or "")
    await until(lambda: REFUSED in secret.parser.comments, what="the stream told")
    assert service.stats.subscribe_refusals >= 1
    await publish_until(redis, allowed, "allowed.1", "granted")
    transport: Any = group_of(service).transport
    await until(lambda: transport.patterns.retries.refusals.get(b"secret.*", 0) >= 2, what="retried")
    # A stream that arrives meanwhile starts when its wait times out, and is told of the next refusal.
    late = await connect_sse(reactor, "127.0.0.1", port, b"/secret")
    assert late.status == 200
    await until(lambda: "waiting for the message server" in late.parser.comments, what="started")
    await until(lambda: REFUSED in late.parser.comments, timeout=15, what="the late stream told")
    redis.command("ACL", "SETUSER", "default", "allchannels")
    await until(lambda: hub.not_ready() is None, what="ready again")
    await publish_until(redis, secret, "secret.2", "after")
    await publish_until(redis, late, "secret.3", "late after")
    for client in (secret, allowed, late):
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_pattern_stream_starts_unconfirmed_and_receives_once_resubscribed(
    run_bridge: RunBridge, redis: RedisProcess
) -> None:
    """The unconfirmed timeout starts a stream of patterns too, and activates its patterns."""
    service = await run_bridge(CONFIG + "confirm-timeout = 0.5\n")
    await until(lambda: service.hub.not_ready() is None, what="ready")
    redis.freeze()
    try:
        client = await connect_sse(reactor, "127.0.0.1", port_of(service), b"/mixed/lobby")
        assert client.status == 200
        await until(lambda: "waiting for the message server" in client.parser.comments, what="started")
    finally:
        redis.thaw()
    await publish_until(redis, client, "room.1", "pattern after")
    await publish_until(redis, client, "lobby", "channel after")
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_toml_route_with_patterns_only(tmp_path: Any, redis: RedisProcess) -> None:
    """``patterns = [...]`` in TOML, a substituted value matched literally (glob-escaped)."""
    port = free_port()
    config = tmp_path / "p.toml"
    config.write_text(
        f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "127.0.0.1:{redis.port}"\n'
        "[[route]]\nmatch = '^/floor/(.+)$'\npatterns = ['floor.${1}.*']\nname_events = true\n"
    )
    service = BridgeService(load_config(config))
    await service.startService()
    try:
        wide = await open_stream(port, "/floor/*")  # escaped: the literal floor "*" only
        one = await open_stream(port, "/floor/1")
        redis.publish("floor.1.a", "one")
        redis.publish("floor.*.b", "star")
        assert [(e.event, e.data) for e in await one.wait_events(1)] == [("floor.1.a", "one")]
        assert [(e.event, e.data) for e in await wide.wait_events(1)] == [("floor.*.b", "star")]
        await sleep(0.1)
        assert len(one.events) == 1 and len(wide.events) == 1
        for client in (wide, one):
            await client.disconnect()
    finally:
        await service.stopService()
