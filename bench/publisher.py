"""The publisher process: PUBLISH ``"<seq> <monotonic_ns> "`` + padding over raw RESP, paced or flooding.

Raw RESP on one blocking socket, no client library: the publisher must never be the bottleneck, and a
library's per-command overhead would be measured instead of the server. Commands are pipelined in small
batches (one ``sendall`` per batch, then the batch's replies), and every message carries the
``time.monotonic_ns()`` taken just before its batch is sent: batching changes when messages leave, never
what their latency says.

Two modes:

* paced (``rate``): message *i* is due at ``t0 + i / rate``; the publisher wakes at most every
  ``tick`` seconds (1 ms) and sends every due message in one batch, so high rates cost few syscalls.
* flood: messages go out in windows; after each window the publisher waits until the clients have
  received all but ``(1 - flood_fraction)`` of the previous one (read from the load processes' shared
  progress counters). So at most about two windows are in flight: the rate found is what the server
  sustains end to end, and neither Redis's pub/sub output buffer nor the bridge's client buffers
  overflow because the publisher outran them. If the clients make no progress for ``stall_timeout``
  seconds, publishing stops and the result says ``stalled``.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from services import die_with_parent

#: The first sequence number published (as ``sseload pub`` does): seq ``FIRST_SEQ + i`` is message i.
FIRST_SEQ = 1


@dataclass(frozen=True)
class PubSpec:
    """What to publish, where, and how fast (``rate`` is ignored when ``flood`` is set)."""

    host: str
    port: int
    channel: bytes
    messages: int
    size: int
    rate: float
    flood: bool
    duration: float
    window: int = 100
    flood_fraction: float = 0.9
    stall_timeout: float = 10.0
    max_batch: int = 200
    tick: float = 0.001


@dataclass
class PubResult:
    """What was published; ``zero_receivers`` counts PUBLISHes that reached no subscriber at all."""

    published: int = 0
    start_ns: int = 0
    end_ns: int = 0
    receivers_min: int = -1
    receivers_max: int = 0
    zero_receivers: int = 0
    errors: list[str] = field(default_factory=list)
    stalled: bool = False
    stopped_by_deadline: bool = False


class RespPublisher:
    """Pipelined PUBLISH commands over one socket, with their integer replies read back in order."""

    def __init__(self, spec: PubSpec, result: PubResult) -> None:
        self.spec = spec
        self.result = result
        self.sock = socket.create_connection((spec.host, spec.port), timeout=10.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.prefix = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(spec.channel), spec.channel)
        self.pending = b""
        #: Messages sent so far (the next one carries sequence number ``FIRST_SEQ + sent``).
        self.sent = 0

    def _payload(self, seq: int, now_ns: int) -> bytes:
        head = b"%d %d " % (seq, now_ns)
        if len(head) < self.spec.size:
            head += b"x" * (self.spec.size - len(head))
        return head

    def publish(self, count: int) -> None:
        """Send ``count`` messages in one write, then read exactly ``count`` replies."""
        now_ns = time.monotonic_ns()
        parts = []
        prefix = self.prefix
        first = FIRST_SEQ + self.sent
        for seq in range(first, first + count):
            payload = self._payload(seq, now_ns)
            parts.append(b"%s$%d\r\n%s\r\n" % (prefix, len(payload), payload))
        self.sock.sendall(b"".join(parts))
        self.sent += count
        if not self.result.start_ns:
            self.result.start_ns = now_ns
        self._read_replies(count)
        self.result.published = self.sent
        self.result.end_ns = time.monotonic_ns()

    def _read_replies(self, count: int) -> None:
        result = self.result
        buf = self.pending
        while count:
            lines = buf.split(b"\r\n")
            buf = lines.pop()
            for line in lines[:count]:
                if line.startswith(b":"):
                    receivers = int(line[1:])
                    if receivers == 0:
                        result.zero_receivers += 1
                    if result.receivers_min < 0 or receivers < result.receivers_min:
                        result.receivers_min = receivers
                    if receivers > result.receivers_max:
                        result.receivers_max = receivers
                elif len(result.errors) < 10:
                    result.errors.append(line.decode("utf-8", "replace"))
            taken = min(count, len(lines))
            count -= taken
            if len(lines) > taken:
                # Cannot happen for PUBLISH (one reply per command); keep the surplus for safety.
                buf = b"\r\n".join(lines[taken:] + [buf])
            if count:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("Redis closed the publisher's connection")
                buf += chunk
        self.pending = buf


def _paced(pub: RespPublisher, spec: PubSpec, deadline: float) -> None:
    t0 = time.monotonic()
    while pub.sent < spec.messages:
        now = time.monotonic()
        if now > deadline:
            pub.result.stopped_by_deadline = True
            return
        due = min(spec.messages, int((now - t0) * spec.rate) + 1)
        if due > pub.sent:
            pub.publish(min(due - pub.sent, spec.max_batch))
            continue
        time.sleep(max(spec.tick, t0 + pub.sent / spec.rate - time.monotonic()))


def _flood(pub: RespPublisher, spec: PubSpec, deadline: float, alive: Any, progress: Any) -> None:
    window = max(1, spec.window)
    while pub.sent < spec.messages:
        if time.monotonic() > deadline:
            pub.result.stopped_by_deadline = True
            return
        count = min(window, spec.messages - pub.sent)
        while count:
            batch = min(count, spec.max_batch)
            pub.publish(batch)
            count -= batch
        # Wait for most of the previous window: at most ~2 windows in flight per client.
        previous = pub.sent - window
        if previous <= 0:
            continue
        last_progress = -1
        last_change = time.monotonic()
        while True:
            clients = sum(alive)
            done = sum(progress)
            if clients == 0 or done >= clients * previous - (1.0 - spec.flood_fraction) * clients * window:
                break
            now = time.monotonic()
            if done != last_progress:
                last_progress, last_change = done, now
            elif now - last_change > spec.stall_timeout:
                pub.result.stalled = True
                return
            if now > deadline:
                pub.result.stopped_by_deadline = True
                return
            time.sleep(0.001)


def run(spec: PubSpec, ctrl: Connection, alive: Any, progress: Any, parent: int) -> None:
    """Entry point of the publisher process: publish, send ``("result", PubResult)``, await ``("exit",)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler is inherited through fork
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:
        return  # the parent died before the line above took effect
    result = PubResult()
    deadline = time.monotonic() + spec.duration
    try:
        pub = RespPublisher(spec, result)
        if spec.flood:
            _flood(pub, spec, deadline, alive, progress)
        else:
            _paced(pub, spec, deadline)
    except OSError as e:
        result.errors.append(f"publisher: {e}")
    ctrl.send(("result", result))
    # Stay (idle) until the parent has read our CPU time from /proc; bounded in case it never says so.
    if ctrl.poll(600.0):
        try:
            ctrl.recv()
        except EOFError:
            pass
