"""Helpers for testing code that uses ssebridge: a private Redis server, an SSE client, a RESP client.

They are what ssebridge's own tests use, and they are public so that an application can test its own
hand-over to the bridge against real parts: ``RedisProcess`` starts a throw-away ``redis-server`` on a
free port (and a unix socket), ``redis_command`` speaks RESP to it without a client library, and
``SSEClient`` is a Twisted HTTP client that parses a stream by the WHATWG rules a browser applies.

Somewhat over 400 lines: a public helper module for users' tests (a Redis process, an SSE client
and parser, RESP), kept in one importable place on purpose.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from ssebridge.redis.resp import encode_command


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- RESP, blocking: for tests and tools, never inside the service ---------------------------------


class RespError(Exception):
    """An error reply from Redis."""


def _read_reply(f: Any) -> Any:
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RespError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ConnectionError(f"bad RESP reply {line!r}")


def redis_command(address: tuple[str, int] | str, *args: bytes | str | int, timeout: float = 5.0) -> Any:
    """Run one command on a fresh connection (``(host, port)`` or a unix socket path)."""
    return redis_pipeline(address, [args], timeout=timeout)[0]


def redis_pipeline(
    address: tuple[str, int] | str, commands: list[tuple[bytes | str | int, ...]], timeout: float = 5.0
) -> list[Any]:
    """Send many commands in one write and read all their replies: a burst reaches Redis at once."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.sendall(b"".join(encode_command(*c) for c in commands))
        f = s.makefile("rb")
        return [_read_reply(f) for _ in commands]


# --- a private redis-server -----------------------------------------------------------------------


class ServerProcess:
    """What a test does to a server process of its own: kill, freeze, thaw, stop, clean up.

    Subclasses set ``process`` when they start it and own ``directory``; ``_wait_started`` polls a
    liveness check until it holds, the process exits, or the time is up.
    """

    process: subprocess.Popen[bytes] | None
    directory: Path

    def _wait_started(self, alive: Callable[[], bool], what: str, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                if alive():
                    return
            except (OSError, ConnectionError, RespError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the socket dies with the process, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: the socket stays open and silent, as on a hung host."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class RedisProcess(ServerProcess):
    """A ``redis-server`` of its own, on a free port and a unix socket, that tests may kill and restart."""

    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ssebridge-redis-")))
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def unix_socket(self) -> str:
        return str(self.directory / "redis.sock")

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self, timeout: float = 10.0) -> RedisProcess:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--unixsocket", self.unix_socket,
                "--unixsocketperm", "700",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--loglevel", "warning",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_started(
            lambda: redis_command(self.address, "PING", timeout=1.0) == b"PONG",
            f"redis-server on port {self.port}",
            timeout,
        )
        return self

    def command(self, *args: bytes | str | int) -> Any:
        return redis_command(self.address, *args)

    def publish(self, channel: bytes | str, message: bytes | str) -> int:
        """PUBLISH; returns how many subscribers Redis delivered to."""
        n: int = self.command("PUBLISH", channel, message)
        return n

    def numsub(self, channel: bytes | str) -> int:
        """How many subscriptions Redis holds for ``channel`` (``PUBSUB NUMSUB``)."""
        reply = self.command("PUBSUB", "NUMSUB", channel)
        n: int = reply[1]
        return n

# --- the event-stream format, as a browser parses it ---------------------------------------------


@dataclass
class Event:
    """One dispatched event: what ``MessageEvent`` would carry in a browser."""

    data: str
    event: str = "message"
    id: str = ""


class EventStreamParser:
    """The WHATWG ``text/event-stream`` parser: feed bytes, collect ``Event``s (and ``retry`` values)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""
        self._first = True
        self.events: list[Event] = []
        self.comments: list[str] = []
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse what arrived; returns the events completed by it."""
        before = len(self.events)
        buf = self._buffer + chunk
        if self._first and buf:
            if len(buf) < 3 and b"\xef\xbb\xbf".startswith(buf):
                self._buffer = buf
                return []
            if buf.startswith(b"\xef\xbb\xbf"):
                buf = buf[3:]
            self._first = False
        start = 0
        n = len(buf)
        while True:
            i = start
            while i < n and buf[i] not in (10, 13):
                i += 1
            if i >= n:
                break
            if buf[i] == 13:
                if i + 1 >= n:
                    break  # a CR at the end: wait to see whether LF follows
                end = i + 2 if buf[i + 1] == 10 else i + 1
            else:
                end = i + 1
            self._line(buf[start:i].decode("utf-8", "replace"))
            start = end
        self._buffer = buf[start:]
        return self.events[before:]

    def _line(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments.append(line[1:].lstrip(" "))
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._last_id = value
        elif name == "retry":
            if value.isdigit():
                self.retry = int(value)

    def _dispatch(self) -> None:
        if not self._data:
            self._event = ""
            return
        data = "\n".join(self._data)
        self.events.append(Event(data=data, event=self._event or "message", id=self._last_id))
        self._data = []
        self._event = ""


# --- an SSE client over Twisted -------------------------------------------------------------------


class SSEClient(Protocol):
    """A streaming HTTP/1.1 GET that parses the response as an event stream.

    Connect it with ``connect_sse(reactor, host, port, path)``. ``headers_received`` fires with
    ``(status, headers)``; ``wait_events(n)`` fires once ``n`` events have arrived.
    """

    def __init__(self, path: bytes, headers: dict[bytes, bytes] | None = None, http10: bool = False) -> None:
        self.path = path
        self.extra_headers = headers or {}
        self.http10 = http10
        self.status: int | None = None
        self.headers: dict[bytes, list[bytes]] = {}
        self.parser = EventStreamParser()
        self.raw = bytearray()
        self.headers_received: Deferred[tuple[int, dict[bytes, list[bytes]]]] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._head = b""
        self._chunked = False
        self._chunk_buf = b""
        self._in_body = False
        #: The chunked body's last chunk arrived: the response is over, as any HTTP client sees it.
        self.body_ended = False
        self._waiters: list[tuple[int, Deferred[list[Event]]]] = []
        self._raw_waiters: list[tuple[int, Deferred[bytes]]] = []

    @property
    def events(self) -> list[Event]:
        return self.parser.events

    def connectionMade(self) -> None:
        proto = b"HTTP/1.0" if self.http10 else b"HTTP/1.1"
        lines = [b"GET " + self.path + b" " + proto, b"Host: 127.0.0.1", b"Accept: text/event-stream"]
        lines += [k + b": " + v for k, v in self.extra_headers.items()]
        assert self.transport is not None
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        if not self._in_body:
            self._head += data
            if b"\r\n\r\n" not in self._head:
                return
            head, _, rest = self._head.partition(b"\r\n\r\n")
            status_line, *header_lines = head.split(b"\r\n")
            self.status = int(status_line.split(b" ")[1])
            for line in header_lines:
                k, _, v = line.partition(b":")
                self.headers.setdefault(k.strip().lower(), []).append(v.strip())
            self._chunked = self.headers.get(b"transfer-encoding", [b""])[0].lower() == b"chunked"
            self._in_body = True
            self.headers_received.callback((self.status, self.headers))
            data = rest
        if self.body_ended:
            return
        if self._chunked:
            data = self._dechunk(data)
        if data:
            self.raw += data
            self.parser.feed(data)
            self._notify()

    def _dechunk(self, data: bytes) -> bytes:
        buf = self._chunk_buf + data
        out = []
        while True:
            head, sep, rest = buf.partition(b"\r\n")
            if not sep:
                break
            size = int(head.split(b";")[0], 16)
            if len(rest) < size + 2:
                break
            out.append(rest[:size])
            buf = rest[size + 2 :]
            if size == 0:
                self.body_ended = True
                break
        self._chunk_buf = buf
        return b"".join(out)

    def _notify(self) -> None:
        for pair in list(self._waiters):
            n, d = pair
            if len(self.events) >= n:
                self._waiters.remove(pair)
                d.callback(self.events[:n])
        for rpair in list(self._raw_waiters):
            size, rd = rpair
            if len(self.raw) >= size:
                self._raw_waiters.remove(rpair)
                rd.callback(bytes(self.raw[:size]))

    def wait_events(self, n: int, timeout: float = 10.0) -> Deferred[list[Event]]:
        """Fires with the first ``n`` events once they have arrived; fails after ``timeout`` seconds."""
        from twisted.internet import reactor

        d: Deferred[list[Event]] = Deferred()
        self._waiters.append((n, d))
        self._notify()
        return d.addTimeout(timeout, reactor)

    def wait_raw(self, size: int, timeout: float = 10.0) -> Deferred[bytes]:
        """Fires with the first ``size`` body bytes (after de-chunking)."""
        from twisted.internet import reactor

        d: Deferred[bytes] = Deferred()
        self._raw_waiters.append((size, d))
        self._notify()
        return d.addTimeout(timeout, reactor)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is None:
            reason = Failure(ConnectionError("connection lost"))
        if not self.headers_received.called:
            self.headers_received.errback(reason)
        for _, d in self._waiters:
            if not d.called:
                d.errback(reason)
        self._waiters = []
        self.closed.callback(None)

    def disconnect(self) -> Deferred[None]:
        if self.transport is not None:
            self.transport.loseConnection()
        return self.closed


async def connect_sse(
    reactor: Any,
    host: str,
    port: int,
    path: bytes,
    headers: dict[bytes, bytes] | None = None,
    timeout: float = 10.0,
    wait_headers: bool = True,
    http10: bool = False,
) -> SSEClient:
    """Open an SSE stream and (by default) wait for its response headers."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    client = SSEClient(path, headers, http10)
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=int(timeout))
    await connectProtocol(endpoint, client)
    if wait_headers:
        await client.headers_received.addTimeout(timeout, reactor)
    return client

