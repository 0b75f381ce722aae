"""``RedisHistory`` against real redis-server processes: replay, gaps, coalescing, failures."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_twisted
import redis as redis_py
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults

from ssebridge.address import RedisServer
from ssebridge.interfaces import History, HistoryUnavailable, Replay
from ssebridge.publish import Publisher
from ssebridge.publish.envelope import history_key, parse_id
from ssebridge.redis.history import RedisHistory
from ssebridge.testing import RedisProcess
from tests.helpers import sleep, until, within

MakeHistory = Callable[..., RedisHistory]


@pytest_twisted.async_yield_fixture
async def make_history(redis: RedisProcess) -> AsyncIterator[MakeHistory]:
    """``RedisHistory`` instances on this test's Redis (or the given server), stopped afterwards."""
    made: list[RedisHistory] = []

    def make(server: RedisServer | None = None, timeout: float = 5.0) -> RedisHistory:
        history = RedisHistory(server or RedisServer(port=redis.port), reactor, timeout=timeout)
        made.append(history)
        return history

    yield make
    for history in made:
        await within(history.stop())


@pytest.fixture
def client(redis: RedisProcess) -> Iterator[redis_py.Redis]:
    c = redis_py.Redis(port=redis.port, socket_timeout=5)
    yield c
    c.close()


def calls(redis: RedisProcess, command: str) -> int:
    """How many times Redis ran ``command`` (scripts' own calls included), from INFO commandstats."""
    info = redis.command("INFO", "commandstats").decode()
    for line in info.splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def ids(replay: Replay) -> list[str]:
    return [f"{e.id[0]}-{e.id[1]}" for e in replay.events]


def xadd(redis: RedisProcess, channel: bytes, *event_ids: str) -> None:
    for event_id in event_ids:
        redis.command("XADD", history_key(channel), event_id, "d", f"at {event_id}")


@pytest_twisted.ensureDeferred
async def test_replays_what_the_publisher_wrote_after_an_exclusive_start(
    make_history: MakeHistory, client: redis_py.Redis
) -> None:
    publisher = Publisher(client)
    first = publisher.publish("news", "one")
    second = publisher.publish("news", "two\r\nlines", event="tick", retry=1500)
    third = publisher.publish("news", b"\xff\x00raw")
    history = make_history()
    assert isinstance(history, History)
    replay = await within(history.read_after(b"news", parse_id(first), 100))
    assert ids(replay) == [second, third], "the position itself is not replayed"
    assert (replay.gap, replay.last_id, replay.more) == (None, parse_id(third), False)
    two, three = replay.events
    assert (two.data, two.event, two.retry) == (b"two\r\nlines", b"tick", b"1500")
    assert (three.data, three.event, three.retry) == (b"\xff\x00raw", b"", b"")
    assert ids(await within(history.read_after(b"news", (0, 0), 100))) == [first, second, third]
    assert (await within(history.read_after(b"news", parse_id(third), 100))) == Replay(
        (), None, parse_id(third)
    )
    assert await within(history.current_id(b"news")) == parse_id(third)
    assert await within(history.current_id(b"nothing-here")) is None


@pytest_twisted.ensureDeferred
async def test_ids_compare_as_numbers(make_history: MakeHistory, redis: RedisProcess) -> None:
    xadd(redis, b"n", "9-0", "999-0", "1000-0", "1000-7", "10000-0")
    history = make_history()
    replay = await within(history.read_after(b"n", (999, 0), 10))
    assert ids(replay) == ["1000-0", "1000-7", "10000-0"] and replay.gap is None
    assert ids(await within(history.read_after(b"n", (1000, 0), 10))) == ["1000-7", "10000-0"]
    # Neither "999-0" > "10000-0" (strings) nor a position between ids is the future.
    assert (await within(history.read_after(b"n", (1000, 3), 10))).gap is None
    future = await within(history.read_after(b"n", (10000, 1), 10))
    assert (future.events, future.gap, future.last_id) == ((), "future", (10000, 0))
    huge = await within(history.read_after(b"n", (10**19 * 9, 0), 10))
    assert huge.gap == "future"
    # Ids past 64 bits, as a client may send them: compared, not refused by Redis.
    past = parse_id(b"999-99999999999999999999")
    assert ids(await within(history.read_after(b"n", past, 10))) == ["1000-0", "1000-7", "10000-0"]


@pytest_twisted.ensureDeferred
async def test_evicted_by_count_age_and_deletion(make_history: MakeHistory, redis: RedisProcess) -> None:
    history = make_history()
    xadd(redis, b"trim", *(f"{i}-0" for i in range(1, 11)))
    redis.command("XTRIM", history_key(b"trim"), "MAXLEN", "3")
    evicted = await within(history.read_after(b"trim", (2, 0), 100))
    assert (evicted.gap, ids(evicted)) == ("evicted", ["8-0", "9-0", "10-0"])
    held = await within(history.read_after(b"trim", (8, 0), 100))
    assert (held.gap, ids(held)) == (None, ["9-0", "10-0"])

    xadd(redis, b"age", *(f"{i}-0" for i in range(1, 6)))
    redis.command("XTRIM", history_key(b"age"), "MINID", "4")
    assert (await within(history.read_after(b"age", (1, 0), 100))).gap == "evicted"
    assert (await within(history.read_after(b"age", (4, 0), 100))).gap is None

    xadd(redis, b"del", *(f"{i}-0" for i in range(1, 6)))
    redis.command("XDEL", history_key(b"del"), "3-0")
    deleted = await within(history.read_after(b"del", (2, 0), 100))
    assert (deleted.gap, ids(deleted)) == ("evicted", ["4-0", "5-0"])
    assert (await within(history.read_after(b"del", (3, 0), 100))).gap is None

    # Everything gone: the client that saw the last one misses nothing, any other does.
    redis.command("XTRIM", history_key(b"del"), "MAXLEN", "0")
    assert await within(history.read_after(b"del", (5, 0), 100)) == Replay((), None, (5, 0))
    assert (await within(history.read_after(b"del", (4, 0), 100))).gap == "evicted"


@pytest_twisted.ensureDeferred
async def test_publisher_maxlen_trim_past_the_position(
    make_history: MakeHistory, client: redis_py.Redis
) -> None:
    publisher = Publisher(client, history=5)  # MAXLEN ~ 5: Redis trims whole nodes of 100 entries
    seen = parse_id(publisher.publish("busy", "0"))
    for i in range(1, 400):
        publisher.publish("busy", str(i))
    replay = await within(make_history().read_after(b"busy", seen, 1000))
    assert replay.gap == "evicted"
    assert 5 <= len(replay.events) < 399 and replay.events[-1].data == b"399"


@pytest_twisted.ensureDeferred
async def test_unknown_after_flushall(
    make_history: MakeHistory, redis: RedisProcess, client: redis_py.Redis
) -> None:
    publisher = Publisher(client)
    seen = parse_id(publisher.publish("f", "before"))
    history = make_history()
    redis.command("FLUSHALL")
    assert await within(history.read_after(b"f", seen, 10)) == Replay((), "unknown", None)
    assert await within(history.read_after(b"f", (0, 0), 10)) == Replay(()), "0-0 is no gap"
    assert await within(history.read_after(b"f", None, 10)) == Replay(())
    # Re-created after the flush: it never held the position, and the events before the flush are lost.
    after = publisher.publish("f", "after")
    recreated = await within(history.read_after(b"f", seen, 10))
    assert (recreated.gap, ids(recreated)) == ("unknown", [after])


@pytest_twisted.ensureDeferred
async def test_truncated_and_paging_loses_nothing(make_history: MakeHistory, redis: RedisProcess) -> None:
    xadd(redis, b"t", *(f"{i}-0" for i in range(1, 11)))
    history = make_history()
    got: list[str] = []
    position = (0, 0)
    while True:
        replay = await within(history.read_after(b"t", position, 3))
        got += ids(replay)
        if not replay.more:
            assert replay.gap is None
            break
        assert replay.gap == "truncated" and len(replay.events) == 3
        position = replay.events[-1].id
    assert got == [f"{i}-0" for i in range(1, 11)]


@pytest_twisted.ensureDeferred
async def test_channel_names_with_separators_and_non_ascii(
    make_history: MakeHistory, client: redis_py.Redis
) -> None:
    publisher = Publisher(client)
    history = make_history()
    for name in [b"a,b", b"a:b", b"50%", b"{tag}", b"}{", "caf\u00e9 \u2603".encode(), b"\xff\xfe:{,%}"]:
        first = publisher.publish(name, b"x")
        second = publisher.publish(name, name)
        replay = await within(history.read_after(name, parse_id(first), 10))
        assert (ids(replay), replay.events[0].data, replay.gap) == ([second], name, None), name


@pytest_twisted.ensureDeferred
async def test_concurrent_identical_reads_share_one_redis_read(
    make_history: MakeHistory, redis: RedisProcess
) -> None:
    xadd(redis, b"storm", "1-0", "2-0", "3-0")
    history = make_history()
    await within(history.current_id(b"storm"))  # connected, script cached
    before = {c: calls(redis, c) for c in ("evalsha", "eval", "xrange", "xinfo|stream")}
    replays = await within(gatherResults([history.read_after(b"storm", (1, 0), 10) for _ in range(50)]))
    after = {c: calls(redis, c) for c in before}
    assert all(r is replays[0] for r in replays) and ids(replays[0]) == ["2-0", "3-0"]
    assert {c: after[c] - before[c] for c in before} == {
        "evalsha": 1,
        "eval": 0,
        "xrange": 1,
        "xinfo|stream": 1,
    }
    assert (history.requests - 1, history.reads - 1) == (50, 1)
    # Other positions and limits are other reads.
    await within(
        gatherResults([history.read_after(b"storm", (2, 0), 10), history.read_after(b"storm", (1, 0), 1)])
    )
    assert calls(redis, "evalsha") - after["evalsha"] == 2


@pytest_twisted.ensureDeferred
async def test_a_read_already_sent_is_not_shared_with_a_later_caller(
    make_history: MakeHistory, redis: RedisProcess, client: redis_py.Redis
) -> None:
    """A caller's replay holds what was published before its call, even with an identical read in flight."""
    publisher = Publisher(client)
    seen = parse_id(publisher.publish("race", "seen"))
    history = make_history()
    await within(history.current_id(b"race"))
    executed = calls(redis, "evalsha")
    redis.freeze()
    try:
        early = history.read_after(b"race", seen, 10)
        await until(lambda: history.reads == 2, what="the first read sent")
        await sleep(0.1)  # written to the socket; Redis, frozen, has not run it
    finally:
        redis.thaw()
    # Without turning the reactor (the early read's answer stays unread): Redis runs it, then a
    # publish, then a caller asks the same question.
    deadline = time.monotonic() + 10
    while calls(redis, "evalsha") == executed:
        assert time.monotonic() < deadline, "Redis never ran the first read"
    late_event = publisher.publish("race", "late")
    late = history.read_after(b"race", seen, 10)
    early_replay, late_replay = await within(gatherResults([early, late]))
    assert ids(early_replay) == [] and ids(late_replay) == [late_event]
    assert history.reads == 3


@pytest_twisted.ensureDeferred
async def test_callers_arriving_during_a_read_share_the_next_one(
    make_history: MakeHistory, redis: RedisProcess
) -> None:
    xadd(redis, b"wave", "1-0", "2-0")
    history = make_history()
    await within(history.current_id(b"wave"))
    redis.freeze()
    try:
        first = history.read_after(b"wave", (1, 0), 10)
        await until(lambda: history.reads == 2, what="the first read sent")
        rest = [history.read_after(b"wave", (1, 0), 10) for _ in range(49)]
    finally:
        redis.thaw()
    replays = await within(gatherResults([first, *rest]))
    assert all(ids(r) == ["2-0"] for r in replays)
    assert history.reads - 1 == 2, "50 callers over two reads: the one in flight and the one after it"


@pytest_twisted.ensureDeferred
async def test_cancelling_one_caller_cancels_no_other(make_history: MakeHistory, redis: RedisProcess) -> None:
    xadd(redis, b"c", "1-0", "2-0")
    history = make_history()
    a, b, c = (history.read_after(b"c", (1, 0), 10) for _ in range(3))
    b.cancel()
    with pytest.raises(CancelledError):
        await b
    assert ids(await within(a)) == ["2-0"] and ids(await within(c)) == ["2-0"]
    # A read every caller left is never sent.
    alone = history.read_after(b"c", (1, 0), 5)
    alone.cancel()
    with pytest.raises(CancelledError):
        await alone
    await sleep(0.05)
    assert history.reads == 1


@pytest_twisted.ensureDeferred
async def test_a_wrong_type_key_is_unavailable(make_history: MakeHistory, redis: RedisProcess) -> None:
    redis.command("SET", history_key(b"str"), "x")
    history = make_history()
    with pytest.raises(HistoryUnavailable, match="WRONGTYPE"):
        await within(history.read_after(b"str", (1, 0), 10))
    with pytest.raises(HistoryUnavailable, match="WRONGTYPE"):
        await within(history.current_id(b"str"))


@pytest_twisted.ensureDeferred
async def test_scripts_flushed_falls_back_to_eval(make_history: MakeHistory, redis: RedisProcess) -> None:
    xadd(redis, b"s", "1-0", "2-0")
    history = make_history()
    assert ids(await within(history.read_after(b"s", (1, 0), 10))) == ["2-0"]
    redis.command("SCRIPT", "FLUSH")
    evals = calls(redis, "eval")
    assert ids(await within(history.read_after(b"s", (1, 0), 9))) == ["2-0"]
    assert calls(redis, "eval") == evals + 1


@pytest_twisted.ensureDeferred
async def test_redis_killed_mid_read_then_back(make_history: MakeHistory, redis: RedisProcess) -> None:
    history = make_history(timeout=1.0)
    xadd(redis, b"k", "1-0", "2-0")
    await within(history.current_id(b"k"))
    redis.freeze()
    in_flight = history.read_after(b"k", (1, 0), 10)
    await until(lambda: history.reads == 2, what="the read sent")
    redis.kill()
    with pytest.raises(HistoryUnavailable):
        await within(in_flight)
    # Down: the next read waits for a connection no longer than its deadline.
    started = reactor.seconds()  # type: ignore[attr-defined]
    with pytest.raises(HistoryUnavailable, match="no answer within 1s"):
        await within(history.read_after(b"k", (1, 0), 10))
    print(f"failed after {reactor.seconds() - started:.2f}s with a 1s deadline")  # type: ignore[attr-defined]
    redis.start()
    xadd(redis, b"k", "5-0")

    async def answers() -> bool:
        try:
            return ids(await history.read_after(b"k", (1, 0), 10)) == ["5-0"]
        except HistoryUnavailable:
            return False

    for _ in range(50):
        if await answers():
            break
    else:
        raise AssertionError("no answer after Redis came back")


@pytest_twisted.ensureDeferred
async def test_frozen_redis_times_out_then_recovers(make_history: MakeHistory, redis: RedisProcess) -> None:
    history = make_history(timeout=0.5)
    xadd(redis, b"z", "1-0", "2-0")
    await within(history.current_id(b"z"))
    redis.freeze()
    try:
        with pytest.raises(HistoryUnavailable, match="no answer within 0.5s"):
            await within(history.read_after(b"z", (1, 0), 10))
    finally:
        redis.thaw()
    # The silent connection was dropped rather than left with a reply owed: fresh answers again.
    await until(lambda: history._protocol is not None, what="reconnected")
    assert ids(await within(history.read_after(b"z", (1, 0), 10))) == ["2-0"]


@pytest_twisted.ensureDeferred
async def test_auth_db_and_unix_socket(make_history: MakeHistory, redis: RedisProcess) -> None:
    redis.command("CONFIG", "SET", "requirepass", "s3cret")
    c = redis_py.Redis(unix_socket_path=redis.unix_socket, password="s3cret", db=3, socket_timeout=5)
    first = Publisher(c).publish("priv", "a")
    second = Publisher(c).publish("priv", "b")
    c.close()
    history = make_history(RedisServer("unix", path=redis.unix_socket, password="s3cret", db=3))
    assert ids(await within(history.read_after(b"priv", parse_id(first), 10))) == [second]
    other_db = make_history(RedisServer("unix", path=redis.unix_socket, password="s3cret", db=4))
    assert await within(other_db.current_id(b"priv")) is None
    bad = make_history(RedisServer(port=redis.port, password="wrong"), timeout=0.5)
    with pytest.raises(HistoryUnavailable, match="no answer within 0.5s .AUTH/SELECT: WRONGPASS"):
        await within(bad.read_after(b"priv", None, 0))


@pytest_twisted.ensureDeferred
async def test_stop_fails_what_waits_and_leaves_no_timers(
    make_history: MakeHistory, redis: RedisProcess
) -> None:
    history = make_history(timeout=30.0)
    await within(history.current_id(b"x"))
    redis.kill()
    waiting = history.read_after(b"x", (1, 0), 10)
    await until(lambda: history.reads == 2, what="the read sent")
    queued = history.read_after(b"x", (1, 0), 10)
    await within(history.stop())
    for d in (waiting, queued):
        with pytest.raises(HistoryUnavailable):
            await within(d)
    with pytest.raises(HistoryUnavailable, match="stopped"):
        await within(history.read_after(b"x", None, 0))
    # A reader never used has nothing to close; the leak check (conftest) covers the timers.
    unused = make_history()
    await within(unused.stop())
    again: Deferred[None] = history.stop()
    await within(again)
