"""The subscriber's reply loop fed raw RESP bytes: messages batch per channel in order, and every
other reply, errors included, reaches the command that asked for it."""

from __future__ import annotations

from typing import Any

import hiredis
from twisted.logger import capturedLogs, formatEvent
from txredisapi import ResponseError

from ssebridge.redis.closes import CloseDiagnosis, pubsub_limit, run_id_of
from ssebridge.redis.replies import ReplyLoop
from ssebridge.redis.resp import encode_command
from ssebridge.redis.retries import SUBSCRIBE_RETRY_INITIAL, SUBSCRIBE_RETRY_MAX, retry_delay


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def deliver(self, batch: dict[bytes, list[bytes]]) -> None:
        self.events.append(("deliver", batch))

    def deliver_patterns(self, batch: dict[bytes, list[tuple[bytes, bytes]]]) -> None:
        self.events.append(("patterns", batch))

    def replied(self, command: bytes, argument: bytes, reply: Any) -> None:
        self.events.append(("replied", command, argument, reply))

    def refused(self, command: bytes, argument: bytes, error: str) -> None:
        self.events.append(("refused", command, argument, error))

    def unexpected(self, reply: Any) -> None:
        self.events.append(("unexpected", reply))


def feed(loop: ReplyLoop, data: bytes) -> None:
    reader = hiredis.Reader(replyError=ResponseError)
    reader.feed(data)
    loop.process(reader)


def message(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(data), data)


def pmessage(pattern: bytes, channel: bytes, data: bytes) -> bytes:
    return b"*4\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in (b"pmessage", pattern, channel, data))


def test_pattern_messages_batch_per_pattern_with_their_channel_in_order() -> None:
    recorder = Recorder()
    loop = ReplyLoop(recorder)
    loop.command(b"PSUBSCRIBE", b"room.*")
    feed(
        loop,
        b"*3\r\n$10\r\npsubscribe\r\n$6\r\nroom.*\r\n:1\r\n"
        + pmessage(b"room.*", b"room.1", b"x")
        + pmessage(b"a?", b"ab", b"1")
        + pmessage(b"room.*", b"room.2", b"y")
        # A channel holding CR/LF/NUL and a payload of any bytes are carried as they are.
        + pmessage(b"room.*", b"room.\r\n\x00", b"\xff\r\n"),
    )
    assert recorder.events == [
        ("replied", b"PSUBSCRIBE", b"room.*", [b"psubscribe", b"room.*", 1]),
        (
            "patterns",
            {
                b"room.*": [(b"room.1", b"x"), (b"room.2", b"y"), (b"room.\r\n\x00", b"\xff\r\n")],
                b"a?": [(b"ab", b"1")],
            },
        ),
    ]
    assert not loop.sent


def test_messages_and_pattern_messages_keep_the_order_they_were_read_in() -> None:
    """A run of one kind is delivered before a message of the other kind that follows it: a stream on
    a channel and a pattern gets them in the server's order."""
    recorder = Recorder()
    loop = ReplyLoop(recorder)
    loop.command(b"PING")
    feed(
        loop,
        message(b"a", b"1")
        + message(b"a", b"2")
        + pmessage(b"r*", b"r1", b"3")
        + pmessage(b"r*", b"r2", b"4")
        + message(b"a", b"5")
        + b"+PONG\r\n"
        + pmessage(b"r*", b"r1", b"6"),
    )
    assert recorder.events == [
        ("deliver", {b"a": [b"1", b"2"]}),
        ("patterns", {b"r*": [(b"r1", b"3"), (b"r2", b"4")]}),
        ("deliver", {b"a": [b"5"]}),
        ("replied", b"PING", b"", b"PONG"),
        ("patterns", {b"r*": [(b"r1", b"6")]}),
    ]


def test_a_refused_psubscribe_reaches_its_command() -> None:
    recorder = Recorder()
    loop = ReplyLoop(recorder)
    loop.command(b"PSUBSCRIBE", b"secret.*")
    loop.command(b"PUNSUBSCRIBE", b"x*")
    feed(
        loop,
        b"-NOPERM this user has no permissions to access one of the channels used as arguments\r\n"
        b"*3\r\n$12\r\npunsubscribe\r\n$2\r\nx*\r\n:0\r\n",
    )
    assert recorder.events[0][:3] == ("refused", b"PSUBSCRIBE", b"secret.*")
    assert recorder.events[1] == ("replied", b"PUNSUBSCRIBE", b"x*", [b"punsubscribe", b"x*", 0])


def test_commands_are_encoded_and_remembered_in_order() -> None:
    loop = ReplyLoop(Recorder())
    assert loop.command(b"SUBSCRIBE", b"a b") == encode_command(b"SUBSCRIBE", b"a b")
    loop.command(b"PING")
    assert list(loop.sent) == [(b"SUBSCRIBE", b"a b"), (b"PING", b"")]


def test_errors_reach_the_command_they_answer_and_nothing_is_left_queued() -> None:
    recorder = Recorder()
    loop = ReplyLoop(recorder)
    for args in ((b"PING",), (b"SUBSCRIBE", b"ok"), (b"SUBSCRIBE", b"secret"), (b"UNSUBSCRIBE", b"ok")):
        loop.command(*args)
    feed(
        loop,
        b"+PONG\r\n"
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nok\r\n:1\r\n"
        + message(b"ok", b"1")
        + b"-NOPERM this user has no permissions to access one of the channels used as arguments\r\n"
        + message(b"ok", b"2")
        + b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nok\r\n:0\r\n",
    )
    assert recorder.events == [
        ("replied", b"PING", b"", b"PONG"),
        ("replied", b"SUBSCRIBE", b"ok", [b"subscribe", b"ok", 1]),
        ("deliver", {b"ok": [b"1"]}),
        (
            "refused",
            b"SUBSCRIBE",
            b"secret",
            "NOPERM this user has no permissions to access one of the channels used as arguments",
        ),
        ("deliver", {b"ok": [b"2"]}),
        ("replied", b"UNSUBSCRIBE", b"ok", [b"unsubscribe", b"ok", 0]),
    ]
    assert not loop.sent


def test_messages_read_together_are_one_batch_per_channel_in_order() -> None:
    recorder = Recorder()
    loop = ReplyLoop(recorder)
    feed(loop, message(b"a", b"1") + message(b"b", b"x") + message(b"a", b"2") + message(b"a", b"3"))
    assert recorder.events == [("deliver", {b"a": [b"1", b"2", b"3"], b"b": [b"x"]})]


def test_a_reply_nothing_asked_for_is_reported_not_queued() -> None:
    recorder = Recorder()
    loop = ReplyLoop(recorder)
    feed(loop, b"-NOAUTH Authentication required.\r\n")
    assert recorder.events[0][0] == "unexpected"
    assert not loop.sent


def test_a_reply_split_across_reads_waits_for_its_end() -> None:
    recorder = Recorder()
    loop = ReplyLoop(recorder)
    reader = hiredis.Reader(replyError=ResponseError)
    data = message(b"a", b"hello")
    reader.feed(data[:10])
    loop.process(reader)
    assert recorder.events == []
    reader.feed(data[10:])
    loop.process(reader)
    assert recorder.events == [("deliver", {b"a": [b"hello"]})]


def test_what_the_next_connection_reads_of_a_close() -> None:
    limits = b"normal 0 0 0 slave 268435456 67108864 60 pubsub 1048576 1048576 0"
    reply = [b"client-output-buffer-limit", limits]
    assert pubsub_limit(reply) == "pubsub hard 1048576 bytes, soft 1048576 bytes for 0 s; 0 is no limit"
    assert pubsub_limit([b"x", b"normal 0 0 0"]) is None
    assert pubsub_limit(ResponseError("NOPERM")) is None
    assert run_id_of(b"# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\n") == b"abc123"
    assert run_id_of(None) is None


def test_refused_subscriptions_retry_with_a_bounded_jittered_backoff() -> None:
    first = [retry_delay(1) for _ in range(200)]
    assert all(SUBSCRIBE_RETRY_INITIAL / 2 <= d <= SUBSCRIBE_RETRY_INITIAL for d in first)
    assert len(set(first)) > 1
    assert all(d <= SUBSCRIBE_RETRY_MAX for n in range(1, 100) for d in [retry_delay(n)])
    assert max(retry_delay(1000) for _ in range(200)) > SUBSCRIBE_RETRY_MAX / 2


def explanations(restart: bool, clean: bool, limit: str | None = "pubsub hard 1 bytes") -> list[str]:
    diagnosis = CloseDiagnosis("r:1")
    diagnosis.info(b"run_id:a\r\n")
    diagnosis.closed_by_server, diagnosis.clean = True, clean
    diagnosis.info(b"run_id:b\r\n" if restart else b"run_id:a\r\n")
    with capturedLogs() as events:
        diagnosis.explain(limit)
        diagnosis.explain(limit)  # once per close
    return [formatEvent(e) for e in events]


def test_a_clean_close_by_a_server_that_did_not_restart_is_blamed_on_its_output_buffer_limit() -> None:
    (line,) = explanations(restart=False, clean=True)
    assert "without restarting" in line and "client-output-buffer-limit" in line and "hard 1 bytes" in line
    assert explanations(restart=True, clean=True) == ["redis r:1: the server had restarted (new run_id)"]
    assert explanations(restart=False, clean=False) == []
    (unreadable,) = explanations(restart=False, clean=True, limit=None)
    assert "CONFIG GET refused" in unreadable


def test_a_new_connection_to_another_server_is_a_failover_not_a_restart_nor_a_buffer_limit() -> None:
    diagnosis = CloseDiagnosis("r:1")
    diagnosis.info(b"run_id:a\r\n", "127.0.0.1:7001")
    diagnosis.closed_by_server, diagnosis.clean = True, True
    diagnosis.info(b"run_id:b\r\n", "127.0.0.1:7002")
    with capturedLogs() as events:
        diagnosis.explain("pubsub hard 1 bytes")
    (line,) = [formatEvent(e) for e in events]
    assert "another server (127.0.0.1:7002" in line and "127.0.0.1:7001" in line and "failover" in line
    assert "restarted" not in line and "client-output-buffer-limit" not in line
    # Back on the same address: a run_id change there is a restart again.
    diagnosis.info(b"run_id:b\r\n", "127.0.0.1:7002")
    diagnosis.closed_by_server, diagnosis.clean = True, True
    diagnosis.info(b"run_id:c\r\n", "127.0.0.1:7002")
    with capturedLogs() as events:
        diagnosis.explain(None)
    assert [formatEvent(e) for e in events] == ["redis r:1: the server had restarted (new run_id)"]
