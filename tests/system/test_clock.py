"""The clock publisher against a private redis-server: timestamps arrive, Redis restarts are survived,
signals end it cleanly.

``python -m ssebridge.clock`` runs as a real subprocess; a raw-socket SUBSCRIBE reads what it
publishes. Redis comes from the ``redis`` fixture (a redis-server of the test's own, on a free port,
never the system one on 6379).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from ssebridge.clock import (
    ClockAddress,
    RedisReplyError,
    _parse_simple,
    encode_command,
    publish,
    read_reply,
)
from ssebridge.testing import RedisProcess, free_port
from tests.helpers import REPO

SpawnClock = Callable[..., "subprocess.Popen[bytes]"]

TIMEOUT = 10.0


class Subscriber:
    """A blocking RESP subscriber on one channel, for reading what the clock publishes."""

    def __init__(self, address: tuple[str, int] | str, channel: bytes) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(address)
        self.file = self.sock.makefile("rb")
        self.sock.sendall(encode_command(b"SUBSCRIBE", channel))
        assert self._read() == [b"subscribe", channel, 1]

    def _read(self) -> object:
        line = self.file.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"*":
            return [self._read() for _ in range(int(rest))]
        if kind == b"$":
            data: bytes = self.file.read(int(rest) + 2)
            return data[:-2]
        if kind == b":":
            return int(rest)
        raise AssertionError(f"unexpected reply {line!r}")

    def message(self) -> bytes:
        reply = self._read()
        assert isinstance(reply, list) and reply[0] == b"message", reply
        payload: bytes = reply[2]
        return payload

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def spawn_clock() -> Iterator[SpawnClock]:
    """Start ``python -m ssebridge.clock`` with arguments; every one started is killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(*args: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        process = subprocess.Popen(
            [sys.executable, "-m", "ssebridge.clock", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


def stop_and_check(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> bytes:
    """Signal the clock; it must exit 0 within a couple of seconds. Returns its stderr."""
    process.send_signal(signum)
    began = time.monotonic()
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert time.monotonic() - began < 3.0, "the clock took too long to stop"
    assert process.returncode == 0, stderr.decode(errors="replace")
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")
    return stderr


def assert_timestamps(messages: list[bytes]) -> None:
    now = time.time()
    for message in messages:
        assert message.isdigit(), message
        assert abs(int(message) - now) < 30, message
    values = [int(m) for m in messages]
    assert values == sorted(values)


def test_publishes_unix_time_and_exits_zero_on_sigterm(redis: RedisProcess, spawn_clock: SpawnClock) -> None:
    subscriber = Subscriber(redis.address, b"clock")
    try:
        process = spawn_clock("--server", f"127.0.0.1:{redis.port}", "--interval", "0.2")
        began = time.monotonic()
        messages = [subscriber.message() for _ in range(5)]
        elapsed = time.monotonic() - began
    finally:
        subscriber.close()
    assert_timestamps(messages)
    # Five messages 0.2 s apart: well under the one-per-second the seed's clock.pl sends.
    assert elapsed < 3.0
    stderr = stop_and_check(process)
    assert b"SIGTERM received" in stderr


def test_sigint_also_exits_zero(redis: RedisProcess, spawn_clock: SpawnClock) -> None:
    subscriber = Subscriber(redis.address, b"ticks")
    try:
        process = spawn_clock(
            "--server", f"127.0.0.1:{redis.port}", "--channel", "ticks", "--interval", "0.2"
        )
        assert_timestamps([subscriber.message()])
    finally:
        subscriber.close()
    stop_and_check(process, signal.SIGINT)


def test_unix_socket_server(redis: RedisProcess, spawn_clock: SpawnClock) -> None:
    subscriber = Subscriber(redis.unix_socket, b"clock")
    try:
        process = spawn_clock("--server", redis.unix_socket, "--interval", "0.2")
        assert_timestamps([subscriber.message(), subscriber.message()])
    finally:
        subscriber.close()
    stop_and_check(process)


def test_waits_for_redis_and_survives_a_restart(spawn_clock: SpawnClock) -> None:
    port = free_port()
    # Redis is not there yet: the clock must keep trying, quietly, not crash.
    process = spawn_clock("--server", f"127.0.0.1:{port}", "--interval", "0.2")
    time.sleep(1.0)
    assert process.poll() is None
    server = RedisProcess(port=port).start()
    try:
        subscriber = Subscriber(server.address, b"clock")
        try:
            assert_timestamps([subscriber.message()])
        finally:
            subscriber.close()
        # Take Redis away while the clock is connected, then bring it back on the same port.
        assert server.process is not None
        server.process.kill()
        server.process.wait(timeout=TIMEOUT)
        time.sleep(0.5)
        assert process.poll() is None
        server.start()
        subscriber = Subscriber(server.address, b"clock")
        try:
            assert_timestamps([subscriber.message()])
        finally:
            subscriber.close()
    finally:
        server.cleanup()
    # Stopping while Redis is away (in the middle of a backoff sleep) is clean too.
    time.sleep(0.3)
    stderr = stop_and_check(process)
    assert b"cannot reach Redis" in stderr or b"lost Redis" in stderr


def test_bad_server_argument_is_a_usage_error(spawn_clock: SpawnClock) -> None:
    process = spawn_clock("--server", "127.0.0.1:notaport")
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 2
    assert b"--server" in stderr


# --- the pure parts ------------------------------------------------------------------------------------


def test_encode_command() -> None:
    assert encode_command(b"PUBLISH", b"clock", b"1700000000") == (
        b"*3\r\n$7\r\nPUBLISH\r\n$5\r\nclock\r\n$10\r\n1700000000\r\n"
    )
    assert encode_command(b"PING") == b"*1\r\n$4\r\nPING\r\n"


def test_parse_simple() -> None:
    assert _parse_simple("127.0.0.1:6380") == ClockAddress(host="127.0.0.1", port=6380)
    assert _parse_simple("redis.local") == ClockAddress(host="redis.local", port=6379)
    assert _parse_simple("[::1]:7000") == ClockAddress(host="::1", port=7000)
    assert _parse_simple("/run/redis.sock") == ClockAddress(unix_path="/run/redis.sock")
    for bad in ("host:", ":6379", "host:99999", "host:x", "[::1", "[::1]x"):
        with pytest.raises(ValueError):
            _parse_simple(bad)


def test_publish_and_replies_over_a_socketpair() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(TIMEOUT)
        theirs.sendall(b":2\r\n:0\r\n")
        buffer = bytearray()
        assert publish(ours, buffer, b"clock", b"1") == 2
        # The second reply arrived in the same read and waits in the buffer.
        assert buffer == b":0\r\n"
        assert publish(ours, buffer, b"clock", b"2") == 0
        sent = theirs.recv(4096)
        assert sent == encode_command(b"PUBLISH", b"clock", b"1") + encode_command(b"PUBLISH", b"clock", b"2")
        theirs.sendall(b"-NOAUTH Authentication required.\r\n+OK\r\n")
        with pytest.raises(RedisReplyError, match="NOAUTH"):
            read_reply(ours, buffer)
        assert read_reply(ours, buffer) == b"OK"
        theirs.sendall(b"$3\r\nabc\r\n")
        with pytest.raises(RedisReplyError):
            read_reply(ours, buffer)
        buffer.clear()
        theirs.close()
        with pytest.raises(ConnectionError):
            read_reply(ours, buffer)
