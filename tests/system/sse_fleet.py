"""Many SSE clients on one epoll loop that behave like a browser's ``EventSource``.

Each client reads an HTTP/1.0 stream (close-delimited, no chunking), keeps the last ``id:`` and the
last ``retry:`` hint, and when its stream closes waits that hint, then comes back with
``Last-Event-ID``, as the SSE specification says a browser does. Events carry a sequence number as
their data, so a client's list of numbers shows any loss or duplicate. Used by test_reload.py.
"""

from __future__ import annotations

import errno
import heapq
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: EventSource's reconnection delay before any ``retry:`` was received.
DEFAULT_RETRY_MS = 3000


@dataclass
class Client:
    number: int
    sock: socket.socket | None = None
    connecting: bool = False
    buf: bytes = b""
    head: bool = False
    last_id: str | None = None
    retry_ms: int = DEFAULT_RETRY_MS
    event_id: str | None = None
    event_data: str | None = None
    seqs: list[int] = field(default_factory=list)
    #: monotonic time the stream closed, and the hint it was given: set while the client is away.
    closed_at: float | None = None
    hint: int = 0
    attempts: int = 0
    backs: int = 0
    refused: int = 0
    failed: list[str] = field(default_factory=list)
    #: (hint ms, seconds late: back minus close minus hint) per return.
    returns: list[tuple[int, float]] = field(default_factory=list)


class Fleet(threading.Thread):
    """``count`` clients of ``path`` on 127.0.0.1:``port``; ``stop`` ends them."""

    def __init__(self, port: int, path: str, count: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.clients = [Client(n) for n in range(count)]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ep = select.epoll()
        self.by_fd: dict[int, Client] = {}
        self.due: list[tuple[float, int]] = [(0.0, n) for n in range(count)]

    # --- the loop -------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                while self.due and self.due[0][0] <= now:
                    _, n = heapq.heappop(self.due)
                    self._connect(self.clients[n])
                for fd, _mask in self.ep.poll(0.01):
                    client = self.by_fd.get(fd)
                    if client is None:
                        continue
                    with self.lock:
                        if client.connecting:
                            self._connected(client)
                        else:
                            self._read(client)
        finally:
            for client in self.clients:
                if client.sock is not None:
                    client.sock.close()
            self.ep.close()

    def _connect(self, client: Client) -> None:
        client.attempts += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(("127.0.0.1", self.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._attempt_failed(client, err)
            return
        client.sock = sock
        client.connecting = True
        self.by_fd[sock.fileno()] = client
        self.ep.register(sock.fileno(), select.EPOLLOUT)

    def _attempt_failed(self, client: Client, err: int) -> None:
        if err == errno.ECONNREFUSED:
            client.refused += 1
        else:
            client.failed.append(errno.errorcode.get(err, str(err)))
        heapq.heappush(self.due, (time.monotonic() + client.retry_ms / 1000, client.number))

    def _connected(self, client: Client) -> None:
        assert client.sock is not None
        err = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._drop(client)
            self._attempt_failed(client, err)
            return
        client.connecting = False
        resume = f"Last-Event-ID: {client.last_id}\r\n" if client.last_id else ""
        request = f"GET {self.path} HTTP/1.0\r\nHost: x\r\n{resume}\r\n".encode()
        client.sock.sendall(request)  # small: fits in an empty send buffer
        self.ep.modify(client.sock.fileno(), select.EPOLLIN)

    def _drop(self, client: Client) -> None:
        assert client.sock is not None
        fd = client.sock.fileno()
        self.ep.unregister(fd)
        del self.by_fd[fd]
        client.sock.close()
        client.sock = None
        client.connecting = False
        client.head = False
        client.buf = b""
        client.event_id = client.event_data = None

    def _read(self, client: Client) -> None:
        assert client.sock is not None
        try:
            data = client.sock.recv(65536)
        except OSError as e:
            client.failed.append(repr(e))
            data = b""
        if not data:
            self._closed(client)
            return
        client.buf += data
        if not client.head:
            head, sep, rest = client.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            status = head.split(b" ", 2)[1]
            if status != b"200":
                client.failed.append(f"status {status.decode()}")
                self._closed(client)
                return
            client.head = True
            client.buf = rest
            if client.closed_at is not None:
                late = time.monotonic() - client.closed_at - client.hint / 1000
                client.returns.append((client.hint, late))
                client.closed_at = None
                client.backs += 1
        *lines, client.buf = client.buf.split(b"\n")
        for raw in lines:
            self._line(client, raw.rstrip(b"\r").decode())

    def _line(self, client: Client, line: str) -> None:
        if not line:
            if client.event_data is not None:
                client.seqs.append(int(client.event_data))
            if client.event_id is not None:
                client.last_id = client.event_id
            client.event_id = client.event_data = None
            return
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            client.event_id = value
        elif name == "data":
            client.event_data = value
        elif name == "retry" and value.isdigit():
            client.retry_ms = int(value)

    def _closed(self, client: Client) -> None:
        self._drop(client)
        if client.closed_at is None:
            client.closed_at = time.monotonic()
            client.hint = client.retry_ms
        heapq.heappush(self.due, (time.monotonic() + client.retry_ms / 1000, client.number))

    # --- what the test reads (from another thread) ---------------------------------------------------

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if predicate():
                    return
            if time.monotonic() > deadline or not self.is_alive():
                with self.lock:
                    raise AssertionError(f"{what}: not reached in {timeout}s; {self.report(0)}")
            time.sleep(0.05)

    def streaming(self) -> int:
        return sum(1 for c in self.clients if c.head)

    def all_received(self, upto: int = 0) -> bool:
        return all(c.seqs and c.seqs[-1] >= upto for c in self.clients)

    def all_back(self) -> bool:
        return all(c.backs >= 1 and c.head for c in self.clients)

    def report(self, last: int) -> dict[str, float]:
        lost = duplicates = 0
        for c in self.clients:
            if not c.seqs:
                continue
            seen = set(c.seqs)
            duplicates += len(c.seqs) - len(seen)
            top = max(last, c.seqs[-1])
            lost += sum(1 for s in range(c.seqs[0], top + 1) if s not in seen)
        returns = [r for c in self.clients for r in c.returns]
        hints = [h for h, _ in returns] or [0]
        late = sorted(x for _, x in returns) or [0.0]
        return {
            "closed_streams": len(returns),
            "refused": sum(c.refused for c in self.clients),
            "failed_attempts": sum(len(c.failed) for c in self.clients),
            "retries_needed": sum(c.attempts - 1 - c.backs for c in self.clients),
            "lost": lost,
            "duplicates": duplicates,
            "events": sum(len(c.seqs) for c in self.clients),
            "hint_min": min(hints),
            "hint_max": max(hints),
            "late_p50_s": round(late[len(late) // 2], 3),
            "late_max_s": round(late[-1], 3),
        }
