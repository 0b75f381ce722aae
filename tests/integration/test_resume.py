"""Events with ids, and streams that resume: real redis-server, an in-process bridge, real HTTP clients.

Publishing goes through ``ssebridge.publish.Publisher`` (redis-py, no reactor), the way a Django view
would; the clients are ``ssebridge.testing``'s WHATWG parser over a plain TCP connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
import redis as redis_py
from twisted.internet import reactor

from ssebridge.http import resource
from ssebridge.publish import Publisher
from ssebridge.publish.envelope import encode_envelope, envelope_channel
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import RedisProcess, SSEClient, connect_sse
from tests.helpers import RunBridge, port_of, until

CONFIG = """[uwsgi]
http-socket = 127.0.0.1:{port}
redis = {redis}
route = ^/events/(.+)$ sse:$1
route = ^/raw/(.+)$ sseraw:$1
"""

GAP = "ssebridge.gap"


@pytest.fixture
def publisher(redis: RedisProcess) -> Iterator[Publisher]:
    client = _client(redis.port)
    yield Publisher(client, history=1000)
    client.close()


def _client(port: int) -> Any:
    return redis_py.Redis(port=port, socket_timeout=5)


async def open_stream(
    port: int, channel: str, last_event_id: str | None = None, query: str = ""
) -> SSEClient:
    headers = {b"Last-Event-ID": last_event_id.encode()} if last_event_id is not None else None
    path = f"/events/{quote(channel, safe='')}{query}".encode()
    client = await connect_sse(reactor, "127.0.0.1", port, path, headers=headers)
    assert client.status == 200
    return client


async def live(service: BridgeService, channel: bytes, n: int = 1) -> None:
    """Wait until ``n`` streams of ``channel`` are live (replay done) and its last id is known."""

    def ready() -> bool:
        group = next(iter(service.hub.groups.values()))
        ch = group.channels.get(channel)
        return ch is not None and len(ch._sse) + len(ch._mux) >= n

    await until(ready, what="streams live")


@pytest_twisted.ensureDeferred
async def test_events_carry_their_id_name_and_retry_and_plain_publish_is_unchanged(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher
) -> None:
    port = port_of(await run_bridge(CONFIG))
    client = await open_stream(port, "ev")
    first = publisher.publish("ev", "one\ntwo")
    second = publisher.publish("ev", b"tick", event="clock", retry=2500)
    # A plain PUBLISH, even of bytes that look like an envelope, is a plain message: no id.
    lookalike = encode_envelope((1, 0), None, b"forged", b"x")
    redis.publish("ev", lookalike)
    events = await client.wait_events(3)
    assert [(e.data, e.event, e.id) for e in events[:2]] == [
        ("one\ntwo", "message", first),
        ("tick", "clock", second),
    ]
    assert client.parser.retry == 2500
    assert events[2].data == lookalike.decode() and events[2].id == second  # the last id stays
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_resume_from_the_header_and_from_the_query(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher
) -> None:
    port = port_of(await run_bridge(CONFIG))
    ids = [publisher.publish("r", f"m{i}") for i in range(5)]
    by_header = await open_stream(port, "r", last_event_id=ids[1])
    by_query = await open_stream(port, "r", query=f"?last_event_id={ids[2]}")
    camel = await open_stream(port, "r", query=f"?lastEventId={ids[3]}")
    assert [e.data for e in await by_header.wait_events(3)] == ["m2", "m3", "m4"]
    assert [e.data for e in await by_query.wait_events(2)] == ["m3", "m4"]
    assert [e.data for e in await camel.wait_events(1)] == ["m4"]
    later = publisher.publish("r", "live")
    for client, n in ((by_header, 4), (by_query, 3), (camel, 2)):
        events = await client.wait_events(n)
        assert events[-1].data == "live" and events[-1].id == later
        assert len(events) == n and GAP not in [e.event for e in events]
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_ids_compare_as_numbers(run_bridge: RunBridge, redis: RedisProcess) -> None:
    """999-0 < 1000-0: a stream of explicit ids replays after its position by number, not text."""
    port = port_of(await run_bridge(CONFIG))
    key = b"ssebridge:{num}:h"
    for ms in (999, 1000, 10000):
        redis.command("XADD", key, f"{ms}-0", "d", f"at {ms}")
    client = await open_stream(port, "num", last_event_id="999-0")
    assert [e.data for e in await client.wait_events(2)] == ["at 1000", "at 10000"]
    await client.disconnect()


@pytest.mark.parametrize("case", ["evicted", "unknown", "future", "unparseable"])
@pytest_twisted.ensureDeferred
async def test_a_position_history_cannot_fill_is_a_gap_then_what_history_holds(
    run_bridge: RunBridge, redis: RedisProcess, case: str
) -> None:
    port = port_of(await run_bridge(CONFIG))
    client_redis = _client(redis.port)
    small = Publisher(client_redis, history=1)
    first = small.publish("g", "old")
    for i in range(200):  # MAXLEN ~ trims whole nodes: publish enough to trim the first
        small.publish("g", f"n{i}")
    position = {
        "evicted": first,
        "unknown": "1-1",
        "future": "99999999999999-0",
        "unparseable": "not an id",
    }[case]
    if case == "unknown":
        redis.command("FLUSHALL")
        small.publish("g", "after flush")
    client = await open_stream(port, "g", last_event_id=position)
    events = await client.wait_events(1)
    assert events[0].event == GAP and events[0].id == ""
    notice = json.loads(events[0].data)
    assert notice["channels"] == ["g"]
    assert notice["reason"] == {"unparseable": "unknown"}.get(case, case)
    live_id = small.publish("g", "live")
    await until(lambda: any(e.data == "live" for e in client.events), what="live after the gap")
    assert client.events[-1].id == live_id
    await client.disconnect()
    client_redis.close()


@pytest_twisted.ensureDeferred
async def test_an_event_published_while_the_replay_is_read_arrives_once(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race made deterministic: events are published after the stream's live subscription is
    confirmed, one just before the history read is sent (so it is in the read and arrives live too)
    and one while the read is in flight; each reaches the client exactly once, in order."""
    service = await run_bridge(CONFIG)
    port = port_of(service)
    start = publisher.publish("race", "before")
    group = next(iter(service.hub.groups.values()))
    history: Any = group.history
    real = history.read_after
    published: list[str] = []

    def read_after(channel: bytes, position: Any, limit: int) -> Any:
        if channel == b"race" and not published:
            published.append(publisher.publish("race", "between"))  # before the read is sent
            d = real(channel, position, limit)
            published.append(publisher.publish("race", "during"))  # the read is on its way
            return d
        return real(channel, position, limit)

    monkeypatch.setattr(history, "read_after", read_after)
    client = await open_stream(port, "race", last_event_id=start)
    await live(service, b"race")
    after = publisher.publish("race", "after")
    events = await client.wait_events(3)
    await until(lambda: any(e.data == "after" for e in client.events), what="the live event")
    assert [(e.data, e.id) for e in client.events] == list(
        zip(["between", "during", "after"], [*published, after], strict=True)
    )
    assert len(events) >= 3
    await client.disconnect()


@pytest.mark.parametrize("name", ["a,b", "x:y", "100%", "café ☕", "{tag}"])
@pytest_twisted.ensureDeferred
async def test_odd_channel_names_resume(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher, name: str
) -> None:
    port = port_of(await run_bridge(CONFIG))
    ids = [publisher.publish(name, f"{name} {i}") for i in range(3)]
    client = await open_stream(port, name, last_event_id=ids[0])
    assert [e.id for e in await client.wait_events(2)] == ids[1:]
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_nothing_is_lost_when_the_subscriber_connection_is_killed(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher
) -> None:
    """Clients that never disconnect get every event published while the bridge was not listening."""
    service = await run_bridge(CONFIG)
    port = port_of(service)
    clients = [await open_stream(port, "k") for _ in range(3)]
    await live(service, b"k", 3)
    sent = [publisher.publish("k", "first")]
    await clients[0].wait_events(1)
    for round_ in range(3):
        redis.command("CLIENT", "KILL", "TYPE", "pubsub")
        # Published while the bridge reconnects: only history has these.
        sent.extend(publisher.publish("k", f"r{round_} {i}") for i in range(5))
    await until(lambda: service.stats.redis_disconnects >= 1, what="the kill noticed")
    sent.append(publisher.publish("k", "last"))
    for client in clients:
        await until(lambda c=client: len(c.events) >= len(sent), timeout=15, what="every event")
        assert [e.id for e in client.events] == sent
        assert GAP not in [e.event for e in client.events]
        await client.disconnect()
    assert service.stats.catch_ups >= 1


@pytest_twisted.ensureDeferred
async def test_a_client_moves_to_another_bridge_and_resumes(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher
) -> None:
    """Ids come from Redis: a second bridge on the same Redis resumes where the first left off."""
    one, two = port_of(await run_bridge(CONFIG)), port_of(await run_bridge(CONFIG))
    client = await open_stream(one, "move")
    seen = [publisher.publish("move", f"a{i}") for i in range(3)]
    events = await client.wait_events(3)
    await client.disconnect()
    missed = [publisher.publish("move", f"b{i}") for i in range(3)]
    moved = await open_stream(two, "move", last_event_id=events[-1].id)
    assert [e.id for e in await moved.wait_events(3)] == missed
    assert events[-1].id == seen[-1]
    await moved.disconnect()


@pytest_twisted.ensureDeferred
async def test_raw_streams_get_event_data_untouched_and_no_replay(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher
) -> None:
    port = port_of(await run_bridge(CONFIG))
    publisher.publish("rw", "OLD")  # in history, after 1-0: an sse stream would replay it
    client = await connect_sse(reactor, "127.0.0.1", port, b"/raw/rw", headers={b"Last-Event-ID": b"1-0"})
    publisher.publish("rw", "data: raw frame\n\n")
    raw = await client.wait_raw(len(b"data: raw frame\n\n"))
    assert raw.endswith(b"data: raw frame\n\n")
    assert b"OLD" not in bytes(client.raw)
    await client.disconnect()


def test_resume_parameters_are_what_the_docs_say() -> None:
    assert resource.RESUME_HEADER == b"last-event-id"
    assert resource.RESUME_PARAMETERS == (b"last_event_id", b"lastEventId")
    assert envelope_channel(b"c") == b"ssebridge:{c}:e"


MULTI = """[uwsgi]
http-socket = 127.0.0.1:{port}
redis = {redis}
route = ^/both/(.+)$ sse:subscribe=user-$1,subscribe=news
route = ^/named/(.+)$ sse:subscribe=user-$1,subscribe=news,name_events=1
"""


@pytest_twisted.ensureDeferred
async def test_several_channels_on_one_stream_with_a_composite_id_that_resumes(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher
) -> None:
    service = await run_bridge(MULTI)
    port = port_of(service)
    client = await connect_sse(reactor, "127.0.0.1", port, b"/both/42")
    assert client.status == 200
    a = publisher.publish("user-42", "for you")
    n = publisher.publish("news", "for all", event="headline")
    redis.publish("news", "plain news")
    events = await client.wait_events(3)
    assert [(e.data, e.event) for e in events] == [
        ("for you", "message"),
        ("for all", "headline"),
        ("plain news", "message"),
    ]
    assert events[0].id == f"user-42:{a}"
    assert events[1].id == f"user-42:{a},news:{n}"
    # Redis holds one subscription per channel, whatever the number of streams naming it.
    other = await connect_sse(reactor, "127.0.0.1", port, b"/both/7")
    assert redis.numsub("news") == 1
    await client.disconnect()
    missed_user = publisher.publish("user-42", "while away")
    missed_news = publisher.publish("news", "also while away")
    back = await connect_sse(
        reactor, "127.0.0.1", port, b"/both/42", headers={b"Last-Event-ID": events[1].id.encode()}
    )
    replayed = await back.wait_events(2)
    assert sorted(e.data for e in replayed) == ["also while away", "while away"]
    # Whichever channel's replay ends last, the stream's id then holds both new positions.
    assert replayed[-1].id == f"user-42:{missed_user},news:{missed_news}"
    await back.disconnect()
    await other.disconnect()


@pytest_twisted.ensureDeferred
async def test_events_can_be_named_after_their_channel(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher
) -> None:
    port = port_of(await run_bridge(MULTI))
    client = await connect_sse(reactor, "127.0.0.1", port, b"/named/9")
    publisher.publish("user-9", "mine")
    publisher.publish("news", "named by its publisher", event="headline")
    redis.publish("news", "plain")
    events = await client.wait_events(3)
    assert [(e.event, e.data) for e in events] == [
        ("user-9", "mine"),
        ("headline", "named by its publisher"),
        ("news", "plain"),
    ]
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_hole_in_the_ids_is_filled_from_history_before_anything_newer(
    run_bridge: RunBridge, redis: RedisProcess, publisher: Publisher
) -> None:
    """An event whose predecessor was never announced live (Redis dropped it, or it was written to
    history alone) makes the channel read what it missed, and deliver it first."""
    service = await run_bridge(CONFIG)
    client = await open_stream(port_of(service), "hole")
    first = publisher.publish("hole", "one")
    await client.wait_events(1)
    await until(lambda: service.hub.groups[service.config.redis].channels[b"hole"].last_id is not None)
    # In history, never announced: only a catch-up can deliver it.
    silent = redis.command("XADD", "ssebridge:{hole}:h", "*", "d", "two").decode()
    third = publisher.publish("hole", "three")
    events = await client.wait_events(3)
    assert [(e.data, e.id) for e in events] == [("one", first), ("two", silent), ("three", third)]
    assert service.stats.catch_ups == 1
    await client.disconnect()
