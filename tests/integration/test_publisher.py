"""ssebridge.publish.Publisher against a real redis-server, from plain (non-Twisted) Python."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import redis

from ssebridge.publish import Publisher
from ssebridge.publish.envelope import decode_envelope, envelope_channel, history_key, parse_id
from ssebridge.testing import RedisProcess
from tests.helpers import REPO


@pytest.fixture(autouse=True)
def no_leaked_delayed_calls() -> Iterator[None]:
    """No reactor here."""
    yield


@pytest.fixture
def client(shared_redis: RedisProcess) -> Iterator[redis.Redis]:
    c = redis.Redis(port=shared_redis.port, socket_timeout=5)
    yield c
    c.close()


def test_publish_appends_to_history_and_announces(client: redis.Redis) -> None:
    pubsub = client.pubsub()
    pubsub.subscribe(envelope_channel(b"pub-a"))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    publisher = Publisher(client)
    first = publisher.publish("pub-a", "one\r\ntwo\rthree")
    second = publisher.publish("pub-a", b"\xff raw", event="tick", retry=2500)
    assert parse_id(first) < parse_id(second)  # type: ignore[operator]
    history = client.xrange(history_key(b"pub-a"))
    assert [(i.decode(), f) for i, f in history] == [
        (first, {b"d": b"one\r\ntwo\rthree"}),
        (second, {b"d": b"\xff raw", b"e": b"tick", b"r": b"2500"}),
    ]
    announced = [decode_envelope(pubsub.get_message(timeout=5)["data"]) for _ in range(2)]  # type: ignore[index]
    assert [a.id for a in announced] == [parse_id(first), parse_id(second)]
    assert announced[1].previous == parse_id(first) and announced[0].previous is None
    assert (announced[1].event, announced[1].retry, announced[1].data) == (b"tick", b"2500", b"\xff raw")
    pubsub.close()


def test_bad_values_are_value_errors_and_write_nothing(client: redis.Redis) -> None:
    publisher = Publisher(client, max_message_size=100)
    for kwargs in ({"event": "a\nb"}, {"event": "x\x00"}, {"retry": -5}, {"retry": "10"}):
        with pytest.raises(ValueError):
            publisher.publish("pub-bad", "x", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        publisher.publish("pub-bad", "x" * 101)
    with pytest.raises(ValueError):
        publisher.publish("bad\nchannel", "x")
    assert client.exists(history_key(b"pub-bad")) == 0


def test_history_is_bounded_by_count_age_and_ttl(client: redis.Redis) -> None:
    counted = Publisher(client, history=10)
    for i in range(1000):
        counted.publish("pub-count", str(i))
    # MAXLEN ~ trims whole macro nodes (100 entries by default): about 10, never the 1000.
    assert 10 <= client.xlen(history_key(b"pub-count")) <= 110
    timed = Publisher(client, ttl=30)
    timed.publish("pub-ttl", "x")
    assert 0 < client.pttl(history_key(b"pub-ttl")) <= 30_000
    aged = Publisher(client, history=0, max_age=0.001)
    client.xadd(history_key(b"pub-age"), {b"d": b"old"}, id=b"1-0")
    aged.publish("pub-age", "new")
    assert [f[b"d"] for _, f in client.xrange(history_key(b"pub-age"))] == [b"new"]


def test_current_id(client: redis.Redis) -> None:
    publisher = Publisher(client)
    assert publisher.current_id("pub-cur") == "0-0"
    last = publisher.publish("pub-cur", "x")
    assert publisher.current_id("pub-cur") == last
    assert publisher.current_id(["pub-cur", "pub-none"]) == f"pub-cur:{last},pub-none:0-0"


def test_from_a_plain_python_process(shared_redis: RedisProcess) -> None:
    """A management command or Celery task: no reactor, and Twisted is never imported."""
    script = textwrap.dedent(
        f"""
        import sys, redis
        from ssebridge.publish import Publisher
        p = Publisher(redis.Redis(port={shared_redis.port}))
        print(p.publish("pub-plain", "from a script", event="note"))
        assert not [m for m in sys.modules if m.split(".")[0] in ("twisted", "txredisapi", "klein")]
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    event_id = done.stdout.strip()
    entries = shared_redis.command("XRANGE", history_key(b"pub-plain"), "-", "+")
    assert entries == [[event_id.encode(), [b"d", b"from a script", b"e", b"note"]]]
