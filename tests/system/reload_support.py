"""What the reload tests run beside the bridge: a prober, a publisher with ids, systemd's notify
socket, plain requests, and a check that a process is gone. Used by test_reload.py."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from ssebridge.testing import RedisProcess

#: Seconds between two published events.
PUBLISH_EVERY = 0.02


class Prober(threading.Thread):
    """New connections in a loop, each asking ``/probe`` (a 404): counts what is not an HTTP answer."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.answered = 0
        self.refused = 0
        self.failed: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    s.sendall(b"GET /probe HTTP/1.0\r\nHost: x\r\n\r\n")
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
                if data.startswith(b"HTTP/1.") and data.split(b" ")[1] == b"404":
                    self.answered += 1
                else:
                    self.failed.append(repr(data[:60]))
            except ConnectionRefusedError:
                self.refused += 1
            except OSError as e:
                self.failed.append(repr(e))
            time.sleep(0.002)


class Publishing(threading.Thread):
    """Publishes 1, 2, 3... to ``news`` with ids, every ``PUBLISH_EVERY`` seconds."""

    def __init__(self, redis: RedisProcess) -> None:
        super().__init__(daemon=True)
        import redis as redis_py

        from ssebridge.publish import Publisher

        host, port = redis.address
        self.publisher = Publisher(redis_py.Redis(host=host, port=port), history=100_000)
        self.stop = threading.Event()
        self.published = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.publisher.publish("news", str(self.published + 1))
            self.published += 1
            time.sleep(PUBLISH_EVERY)


class NotifyListener:
    """systemd's side of ``NOTIFY_SOCKET``, with the sender's pid of every notice (SO_PASSCRED)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.notices: list[tuple[int, dict[str, str]]] = []

    def next(self, key: str, timeout: float = 30.0) -> tuple[int, dict[str, str]]:
        """The next notice that sets ``key`` (those before it are kept in ``notices``)."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                raise AssertionError(f"no {key} notice in {timeout}s; got {self.notices}") from None
            pid = next(
                int.from_bytes(d[:4], "little")
                for level, kind, d in ancillary
                if kind == socket.SCM_CREDENTIALS
            )
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.notices.append((pid, fields))
            if key in fields:
                return pid, fields


def http_get(port: int, path: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def unix_status(path: Path) -> int:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"GET /nope HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ")[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our own child, not reaped yet) has stopped.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False
