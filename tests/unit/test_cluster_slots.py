"""Redis Cluster's pure parts: key slots (CRC16 with hash tags), the reply loop on sharded pub/sub
(``smessage``, an unsolicited ``sunsubscribe``), redirections and ``CLUSTER SLOTS`` replies.

The RESP bytes below were recorded from a redis-server 7.0 cluster node; the slots expected are what
``redis-cli CLUSTER KEYSLOT`` answered for the same keys.
"""

from __future__ import annotations

from pathlib import Path

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from txredisapi import ResponseError

from ssebridge.config.model import load_config
from ssebridge.config.schema import ConfigError
from ssebridge.publish.envelope import envelope_channel, history_key
from ssebridge.redis.replies import ReplyLoop
from ssebridge.redis.slots import SLOTS, crc16, hash_part, key_slot
from ssebridge.redis.topology import Redirect, SlotMap, parse_redirect
from tests.unit.test_replies import Recorder

# redis-cli -p P CLUSTER KEYSLOT KEY, on redis-server 7.0.15.
KEYSLOT = {
    b"foo": 12182,
    b"bar": 5061,
    b"{user1000}.following": 3443,
    b"a{}b": 13694,
    b"{}": 15257,
    b"x{y}z{w}": 12222,
    b"123456789": 12739,
    b"ssebridge:{news}:e": 5161,
    b"news": 5161,
    b"": 0,
}


def test_slots_are_what_redis_says() -> None:
    assert crc16(b"123456789") == 0x31C3  # the XMODEM check value
    for key, slot in KEYSLOT.items():
        assert key_slot(key) == slot, key


@given(st.binary(max_size=40), st.binary(min_size=1, max_size=20).filter(lambda b: b"}" not in b))
def test_a_hash_tag_decides_the_slot(prefix: bytes, tag: bytes) -> None:
    # The first "{" opens the tag: a prefix holding one would open it earlier.
    prefix = prefix.replace(b"{", b"")
    key = prefix + b"{" + tag + b"}" + prefix
    assert hash_part(key) == tag
    assert key_slot(key) == key_slot(tag)
    assert 0 <= key_slot(prefix) < SLOTS


@given(st.binary(min_size=1, max_size=30).filter(lambda b: b"{" not in b and b"}" not in b))
def test_a_channels_history_and_envelope_share_its_slot(channel: bytes) -> None:
    assert key_slot(history_key(channel)) == key_slot(envelope_channel(channel)) == key_slot(channel)


def test_the_reply_loop_batches_smessage_and_reports_a_pushed_sunsubscribe() -> None:
    recorder = Recorder()
    pushed: list[bytes] = []
    loop = ReplyLoop(recorder, pushed.append)
    loop.command(b"SSUBSCRIBE", b"foo")
    loop.command(b"SSUBSCRIBE", b"bar")
    reader = hiredis.Reader(replyError=ResponseError)
    reader.feed(
        # Recorded: a MOVED for foo, bar confirmed, two messages, the node giving bar's slot away.
        b"-MOVED 12182 127.0.0.1:17102\r\n*3\r\n$10\r\nssubscribe\r\n$3\r\nbar\r\n:1\r\n"
        b"*3\r\n$8\r\nsmessage\r\n$3\r\nbar\r\n$1\r\n1\r\n*3\r\n$8\r\nsmessage\r\n$3\r\nbar\r\n$1\r\n2\r\n"
        b"*3\r\n$12\r\nsunsubscribe\r\n$3\r\nbar\r\n:0\r\n"
    )
    loop.command(b"PING")
    loop.process(reader)
    assert recorder.events == [
        ("refused", b"SSUBSCRIBE", b"foo", "MOVED 12182 127.0.0.1:17102"),
        ("replied", b"SSUBSCRIBE", b"bar", [b"ssubscribe", b"bar", 1]),
        ("deliver", {b"bar": [b"1", b"2"]}),
    ]
    assert pushed == [b"bar"]
    assert list(loop.sent) == [(b"PING", b"")], "the push answered no command"


def test_a_sunsubscribe_that_answers_our_own_command_is_no_push() -> None:
    recorder = Recorder()
    pushed: list[bytes] = []
    loop = ReplyLoop(recorder, pushed.append)
    loop.command(b"SUNSUBSCRIBE", b"bar")
    reader = hiredis.Reader(replyError=ResponseError)
    reader.feed(b"*3\r\n$12\r\nsunsubscribe\r\n$3\r\nbar\r\n:0\r\n" * 2)
    loop.process(reader)
    assert recorder.events == [("replied", b"SUNSUBSCRIBE", b"bar", [b"sunsubscribe", b"bar", 0])]
    assert pushed == [b"bar"], "a second one, with no command waiting, is the node's own"


def test_cluster_errors_on_a_subscriber_reach_the_command_that_asked() -> None:
    recorder = Recorder()
    loop = ReplyLoop(recorder, lambda _: None)
    for channel in (b"a", b"b", b"c"):
        loop.command(b"SSUBSCRIBE", channel)
    reader = hiredis.Reader(replyError=ResponseError)
    reader.feed(
        b"-CLUSTERDOWN The cluster is down\r\n"
        b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"
        b"-LOADING Redis is loading the dataset in memory\r\n"
    )
    loop.process(reader)
    assert [e[2:] for e in recorder.events] == [
        (b"a", "CLUSTERDOWN The cluster is down"),
        (b"b", "TRYAGAIN Multiple keys request during rehashing of slot"),
        (b"c", "LOADING Redis is loading the dataset in memory"),
    ]


def test_redirects() -> None:
    assert parse_redirect("MOVED 12182 127.0.0.1:17102") == Redirect("MOVED", 12182, ("127.0.0.1", 17102))
    assert parse_redirect("ASK 5 10.0.0.2:7000") == Redirect("ASK", 5, ("10.0.0.2", 7000))
    assert parse_redirect("MOVED 5 :7001", "10.1.1.1") == Redirect("MOVED", 5, ("10.1.1.1", 7001))
    assert parse_redirect("MOVED 5 [::1]:7001") == Redirect("MOVED", 5, ("::1", 7001))
    for other in ("CLUSTERDOWN The cluster is down", "MOVED x 1:2", "MOVED 16384 h:1", "MOVED 1 h:0", ""):
        assert parse_redirect(other) is None


def test_a_cluster_slots_reply_maps_every_slot() -> None:
    # Recorded CLUSTER SLOTS of a 3-master cluster (7.0 adds an empty metadata map per node).
    reply = [
        [0, 5460, [b"127.0.0.1", 17100, b"4bd9", []], [b"127.0.0.1", 17103, b"aa01", []]],
        [5461, 10922, [b"", 17101, b"cc75", []]],
        [10923, 16383, [b"127.0.0.1", 17102, b"6546", []]],
    ]
    slots = SlotMap.from_slots(reply, "10.0.0.9")
    assert slots.owner(0) == slots.owner(5460) == ("127.0.0.1", 17100)
    assert slots.owner(5461) == ("10.0.0.9", 17101), "an empty host is the node that answered"
    assert slots.owner(16383) == ("127.0.0.1", 17102)
    assert slots.covered == SLOTS and slots.replicas == (("127.0.0.1", 17103),)
    assert slots.summary() == "127.0.0.1:17100 0-5460, 10.0.0.9:17101 5461-10922, 127.0.0.1:17102 10923-16383"
    partial = SlotMap.from_slots([[0, 9, [b"h", 1, b"i"]]], "x")
    assert partial.covered == 10 and partial.owner(10) is None


def _load(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    load_config(path)


def test_patterns_on_a_cluster_are_a_config_error(tmp_path: Path) -> None:
    toml = (
        'redis = "cluster://127.0.0.1:7000,127.0.0.1:7001"\n'
        '[[route]]\nmatch = "^/r$"\naction = "sse:psubscribe=room.*"\n'
    )
    with pytest.raises(
        ConfigError,
        match=r":2: route: psubscribe= on cluster://127.0.0.1:7000,127.0.0.1:7001: a Redis Cluster has no "
        r"pattern subscriptions",
    ):
        _load(tmp_path, "p.toml", toml)
    ini = (
        "[uwsgi]\nredis = 127.0.0.1:6379\n"
        "route = ^/ok$ sse:server=cluster://h1:7000,h2:7001,subscribe=news\n"
        "route = ^/ok2$ sse:subscribe=news,psubscribe=x.*\n"
        "route = ^/bad$ sse:server=cluster://h1:7000,h2:7001,subscribe=news,psubscribe=room.*\n"
    )
    with pytest.raises(ConfigError, match=r"p.ini:5: route: psubscribe= on cluster://h1:7000,h2:7001"):
        _load(tmp_path, "p.ini", ini)
    # Channels alone on a cluster, patterns on a plain server: fine.
    _load(tmp_path, "fine.ini", ini.rsplit("route = ^/bad", 1)[0])
