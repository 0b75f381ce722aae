"""One load process: many SSE client connections on one epoll loop, with loss/dup/latency accounting.

Why this shape: a Python client per connection (threads, asyncio tasks with their own parsers) would
saturate a core long before a server does. Here one process holds thousands of non-blocking sockets in
one level-triggered ``select.epoll`` loop and does per *read* work, not per *event* work, wherever it
can: HTTP/1.1 chunked decoding produces one buffer per read, and a compiled regex pulls every event's
sequence number out of that buffer at once. Only the connections picked for latency sampling also parse the
publish timestamps.

Payload format (written by ``publisher.py``): ``"<seq> <publish_time_ns> "`` then padding. Both sides
read ``time.monotonic_ns()`` (CLOCK_MONOTONIC), so a latency is receive time minus publish time.

The parent drives each process through a ``multiprocessing`` pipe: the process connects its share of
clients and reports ``("ready", ...)``; it then streams until told ``("stop", published)`` and answers
with ``("result", LoadResult)``. While streaming it publishes two numbers in shared memory that the
publisher's flood mode and the parent's progress display read: how many connections are alive, and the
number of messages they have accounted for (received, or skipped by a gap and counted lost), so
progress also moves past lost messages.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import select
import signal
import socket
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from publisher import FIRST_SEQ
from services import die_with_parent

#: Linux: defer the source port choice from bind() to connect(), so the port only has to be unique for
#: the full 4-tuple, not per source address. Missing from the socket module on Python 3.11.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

#: A data line: ``data:``, an optional space, the sequence number, the publish time.
DATA_FULL = re.compile(rb"data: ?(\d+) (\d+)")
#: The same, when only the sequence number is needed (most connections).
DATA_SEQ = re.compile(rb"data: ?(\d+) ")

RECV_SIZE = 64 * 1024

#: ``SEQ_DIGITS[i] == b"%d" % i``: what a regex match of sequence number i looks like, grown on demand.
SEQ_DIGITS: list[bytes] = []
#: Beyond this many messages, skip the cache (it costs ~60 bytes a number) and parse every number.
SEQ_CACHE_MAX = 2_000_000


def _grow_seq_digits(upto: int) -> None:
    """Extend ``SEQ_DIGITS`` to at least ``upto`` entries (in steps, so growth is amortised)."""
    target = min(SEQ_CACHE_MAX, max(upto, 2 * len(SEQ_DIGITS), 4096))
    SEQ_DIGITS.extend(b"%d" % i for i in range(len(SEQ_DIGITS), target))

CONNECTING, HEADERS, STREAMING, CLOSED = range(4)


@dataclass(frozen=True)
class LoadSpec:
    """What one load process does: its share of the connections, and how to open them."""

    host: str
    port: int
    path: str
    count: int
    first_index: int
    src_addrs: tuple[str, ...]
    sample_every: int
    connect_concurrency: int
    connect_timeout: float
    connect_deadline: float
    sample_cap: int = 200_000
    #: Per-connection variants, connection ``i`` taking ``variants[i % len(variants)]``: extra request
    #: header lines (e.g. ``"Last-Event-ID: 1-5\r\n"``) and the first sequence number it expects
    #: (a resumed stream starts after the position it resumes from). Empty: no extra header, from 1.
    variants: tuple[tuple[str, int], ...] = ()


@dataclass
class LoadResult:
    """What one load process saw; the parent adds these up (``latencies`` are merged, then ranked)."""

    pid: int
    connected: int = 0
    failed: int = 0
    fail_reasons: Counter[str] = field(default_factory=Counter)
    connect_ms: list[float] = field(default_factory=list)
    closed_during_run: int = 0
    close_reasons: Counter[str] = field(default_factory=Counter)
    events: int = 0
    lost: int = 0
    lost_tail: int = 0
    undelivered_closed: int = 0
    duplicated: int = 0
    first_ns: int = 0
    last_ns: int = 0
    latencies_ns: bytes = b""
    latency_stride: int = 1
    latency_seen: int = 0
    latency_max_ns: int = 0
    #: Events the live connections should hold at the end (from their first expected seq to the last
    #: published), and ``received - expected`` per connection as a histogram: {0: n} means exact.
    expected_events: int = 0
    per_conn_excess: Counter[int] = field(default_factory=Counter)


class Conn:
    """One SSE connection's state: socket, HTTP/chunk parser state and sequence accounting."""

    __slots__ = (
        "sock",
        "fd",
        "index",
        "state",
        "started",
        "head",
        "chunked",
        "raw",
        "left",
        "tail",
        "expected",
        "first",
        "got",
        "sampled",
    )

    def __init__(
        self, sock: socket.socket, index: int, sampled: bool, started: float, first: int = FIRST_SEQ
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.index = index
        self.state = CONNECTING
        self.started = started
        self.head = b""
        self.chunked = False
        self.raw = b""
        self.left = 0
        self.tail = b""
        self.expected = first
        self.first = first
        self.got = 0
        self.sampled = sampled


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard limit (one fd per connection); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def dechunk(conn: Conn, data: bytes) -> bytes:
    """Decode HTTP/1.1 chunked transfer coding incrementally; return the body bytes in ``data``.

    ``conn.left`` counts what is left of the current chunk *including* its trailing CRLF, so a read
    may end anywhere (in a size line, in the data, between CR and LF) and the next read resumes.
    """
    buf = conn.raw + data if conn.raw else data
    conn.raw = b""
    pos = 0
    n = len(buf)
    out: list[bytes] = []
    left = conn.left
    while pos < n:
        if left:
            avail = n - pos
            if avail >= left:
                if left > 2:
                    out.append(buf[pos : pos + left - 2])
                pos += left
                left = 0
            else:
                body_left = left - 2
                if body_left > 0:
                    out.append(buf[pos : pos + min(body_left, avail)])
                left -= avail
                pos = n
            continue
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            conn.raw = buf[pos:]
            break
        size = int(buf[pos:eol].split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            # Last chunk: the server ended the stream; the close follows.
            break
        left = size + 2
    conn.left = left
    if len(out) == 1:
        return out[0]
    return b"".join(out)


class LoadClient:
    """The connections of one load process and the epoll loop that serves them."""

    def __init__(self, spec: LoadSpec, slot: int, alive: Any, progress: Any) -> None:
        self.spec = spec
        self.slot = slot
        self.shared_alive = alive
        self.shared_progress = progress
        self.ep = select.epoll()
        #: fd -> connection, for every socket registered with ``ep``.
        self.by_fd: dict[int, Conn] = {}
        self.ctrl_fd = -1
        head = (
            f"GET {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\nUser-Agent: ssebridge-bench\r\n"
        )
        #: (request bytes, first expected seq) per variant; one variant when none was given.
        self.requests = [
            ((head + extra + "\r\n").encode("latin-1"), first)
            for extra, first in (spec.variants or (("", FIRST_SEQ),))
        ]
        self.result = LoadResult(pid=os.getpid())
        self.pending: dict[int, Conn] = {}
        self.conns: dict[int, Conn] = {}
        self.next_index = 0
        self.alive = 0
        self.progress = 0
        self.measuring = False
        self.latencies = array("q")
        self.lat_stride = 1
        self.lat_seen = 0
        self.lat_max = 0
        #: Messages accounted for (received or counted lost) by connections closed during the run.
        self.closed_accounted: list[int] = []
        #: Set by the parent's ``("stop", published)``: how many messages were published in all.
        self.stop_requested: int | None = None

    # --- connecting -------------------------------------------------------------------------------

    def _open_one(self) -> None:
        spec = self.spec
        index = spec.first_index + self.next_index
        self.next_index += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            src = spec.src_addrs[index % len(spec.src_addrs)]
            if src:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((src, 0))
            err = sock.connect_ex((spec.host, spec.port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
        except OSError as e:
            sock.close()
            self._fail(f"connect: {e.strerror or e}")
            return
        sampled = spec.sample_every > 0 and index % spec.sample_every == 0
        first = self.requests[index % len(self.requests)][1]
        conn = Conn(sock, index, sampled, time.monotonic(), first)
        self.pending[conn.fd] = conn
        self.by_fd[conn.fd] = conn
        self.ep.register(conn.fd, select.EPOLLOUT)

    def _fail(self, reason: str) -> None:
        self.result.failed += 1
        self.result.fail_reasons[reason] += 1

    def _drop_pending(self, conn: Conn, reason: str) -> None:
        self.pending.pop(conn.fd, None)
        self._close(conn)
        self._fail(reason)

    def _close(self, conn: Conn) -> None:
        conn.state = CLOSED
        if self.by_fd.pop(conn.fd, None) is not None:
            try:
                self.ep.unregister(conn.fd)
            except OSError:
                pass
        conn.sock.close()

    def _on_writable(self, conn: Conn) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._drop_pending(conn, f"connect: {os.strerror(err)}")
            return
        try:
            conn.sock.send(self.requests[conn.index % len(self.requests)][0])
        except OSError as e:
            self._drop_pending(conn, f"send: {e.strerror or e}")
            return
        conn.state = HEADERS
        self.ep.modify(conn.fd, select.EPOLLIN)

    def _on_headers(self, conn: Conn, data: bytes, now_ns: int) -> None:
        head = conn.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > 65536:
                self._drop_pending(conn, "headers too long")
            else:
                conn.head = head
            return
        conn.head = b""
        lines = head[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            self._drop_pending(conn, "bad status line")
            return
        if parts[1] != "200":
            self._drop_pending(conn, f"HTTP {parts[1]}")
            return
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                conn.chunked = True
        self.pending.pop(conn.fd, None)
        conn.state = STREAMING
        self.conns[conn.fd] = conn
        self.alive += 1
        self.result.connected += 1
        self.result.connect_ms.append((time.monotonic() - conn.started) * 1000.0)
        rest = head[end + 4 :]
        if rest:
            self._on_data(conn, rest, now_ns)

    def connect_all(self, ctrl: Connection) -> bool:
        """Open this process's share of connections; False if the parent went away meanwhile."""
        spec = self.spec
        deadline = time.monotonic() + spec.connect_deadline
        self.ctrl_fd = ctrl.fileno()
        self.ep.register(self.ctrl_fd, select.EPOLLIN)
        while True:
            while self.next_index < spec.count and len(self.pending) < spec.connect_concurrency:
                self._open_one()
            if self.next_index >= spec.count and not self.pending:
                break
            now = time.monotonic()
            if now > deadline:
                for conn in list(self.pending.values()):
                    self._drop_pending(conn, "connect phase deadline")
                while self.next_index < spec.count:
                    self.next_index += 1
                    self._fail("connect phase deadline")
                break
            if not self._poll(0.05, ctrl):
                return False
            for conn in [c for c in self.pending.values() if now - c.started > spec.connect_timeout]:
                self._drop_pending(conn, "timeout" if conn.state == CONNECTING else "header timeout")
            self._publish_shared()
        self._publish_shared()
        return True

    # --- streaming --------------------------------------------------------------------------------

    def _on_data(self, conn: Conn, data: bytes, now_ns: int) -> None:
        """Account for the events in one read: the hot path, kept to a few calls per read."""
        body = dechunk(conn, data) if conn.chunked else data
        if conn.tail:
            body = conn.tail + body
        cut = body.rfind(b"\n") + 1
        if cut == 0:
            conn.tail = body
            return
        conn.tail = body[cut:] if cut < len(body) else b""
        if conn.sampled:
            pairs = DATA_FULL.findall(body, 0, cut)
            if not pairs:
                return
            seqs = [p[0] for p in pairs]
            if self.measuring:
                self._sample([now_ns - int(p[1]) for p in pairs])
        else:
            seqs = DATA_SEQ.findall(body, 0, cut)
            if not seqs:
                return
        result = self.result
        start = exp = conn.expected
        n = len(seqs)
        # Fast path, exact: the read holds exactly the next n sequence numbers, in order (one list
        # comparison in C against cached digit strings, instead of n int() calls).
        if exp + n <= len(SEQ_DIGITS) and seqs == SEQ_DIGITS[exp : exp + n]:
            exp += n
        else:
            if exp + n <= SEQ_CACHE_MAX and exp + n > len(SEQ_DIGITS):
                _grow_seq_digits(exp + n)
            lost = dup = 0
            for s in map(int, seqs):
                if s == exp:
                    exp += 1
                elif s > exp:
                    lost += s - exp
                    exp = s + 1
                else:
                    dup += 1
            if lost:
                result.lost += lost
            if dup:
                result.duplicated += dup
        conn.expected = exp
        conn.got += n
        self.progress += exp - start
        result.events += n
        if not result.first_ns:
            result.first_ns = now_ns
        result.last_ns = now_ns

    def _sample(self, values: list[int]) -> None:
        """Keep every ``lat_stride``-th latency; halve the sample (double the stride) when it is full."""
        if not values:
            return
        top = max(values)
        if top > self.lat_max:
            self.lat_max = top
        stride = self.lat_stride
        if stride == 1:
            self.latencies.extend(values)
        else:
            self.latencies.extend(values[(-self.lat_seen) % stride :: stride])
        self.lat_seen += len(values)
        if len(self.latencies) >= self.spec.sample_cap:
            self.latencies = self.latencies[::2]
            self.lat_stride *= 2

    def _on_closed(self, conn: Conn, reason: str) -> None:
        self.conns.pop(conn.fd, None)
        self._close(conn)
        self.alive -= 1
        self.progress -= conn.expected - conn.first
        self.result.closed_during_run += 1
        self.result.close_reasons[reason] += 1
        self.closed_accounted.append(conn.expected - FIRST_SEQ)

    def _poll(self, timeout: float, ctrl: Connection) -> bool:
        """One epoll wait and the handling of every ready socket; False if the parent's pipe closed."""
        by_fd = self.by_fd
        for fd, _events in self.ep.poll(timeout, 4096):
            conn = by_fd.get(fd)
            if conn is None:
                if fd == self.ctrl_fd and not self._control(ctrl):
                    return False
                continue
            if conn.state == CONNECTING:
                self._on_writable(conn)
                continue
            try:
                data = conn.sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError as e:
                reason = f"recv: {e.strerror or e}"
                if conn.state == HEADERS:
                    self._drop_pending(conn, reason)
                else:
                    self._on_closed(conn, reason)
                continue
            now_ns = time.monotonic_ns()
            if not data:
                if conn.state == HEADERS:
                    self._drop_pending(conn, "closed before headers")
                else:
                    self._on_closed(conn, "closed by server")
                continue
            if conn.state == STREAMING:
                self._on_data(conn, data, now_ns)
            else:
                self._on_headers(conn, data, now_ns)
        return True

    def _publish_shared(self) -> None:
        self.shared_alive[self.slot] = self.alive
        self.shared_progress[self.slot] = self.progress

    def _control(self, ctrl: Connection) -> bool:
        try:
            message = ctrl.recv()
        except (EOFError, OSError):
            return False
        kind = message[0]
        if kind == "measure":
            self.measuring = True
        elif kind == "stop":
            self.stop_requested = int(message[1])
        return True

    def stream_until_stopped(self, ctrl: Connection) -> bool:
        """Read until the parent says stop; False if the parent went away."""
        while self.stop_requested is None:
            if not self._poll(0.05, ctrl):
                return False
            self._publish_shared()
        return True

    def finish(self) -> LoadResult:
        """Fold the end-of-run accounting into the result and close every socket."""
        published = self.stop_requested or 0
        result = self.result
        for conn in self.conns.values():
            # The last seq reached (a connection resumed past seq 1 still counts up to ``published``).
            accounted = conn.expected - FIRST_SEQ
            if accounted < published:
                result.lost_tail += published - accounted
            should = max(0, published - conn.first + 1)
            result.expected_events += should
            result.per_conn_excess[conn.got - should] += 1
        result.undelivered_closed = sum(max(0, published - n) for n in self.closed_accounted)
        result.latencies_ns = self.latencies.tobytes()
        result.latency_stride = self.lat_stride
        result.latency_seen = self.lat_seen
        result.latency_max_ns = self.lat_max
        for conn in list(self.conns.values()):
            self._close(conn)
        self.conns.clear()
        return result


def run(spec: LoadSpec, slot: int, ctrl: Connection, alive: Any, progress: Any, parent: int) -> None:
    """Entry point of a load process (``multiprocessing.Process`` target)."""
    # Ctrl-C goes to the whole foreground group: let the parent decide, and kill us if need be.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler is inherited through fork
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:
        return  # the parent died before the line above took effect
    raise_nofile()
    client = LoadClient(spec, slot, alive, progress)
    if not client.connect_all(ctrl):
        return
    result = client.result
    ctrl.send(("ready", result.connected, result.failed, dict(result.fail_reasons), result.connect_ms))
    if not client.stream_until_stopped(ctrl):
        return
    ctrl.send(("result", client.finish()))
