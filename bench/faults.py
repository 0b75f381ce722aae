"""Fault figures: what the bridge does when Redis dies, freezes or is away, a client stalls, fds run out.

    python bench/faults.py [--clients 200] [--mib 50]

Runs a private ``redis-server`` and the bridge (``python -m twisted ssebridge``, this checkout) with
real sockets, and prints one line a figure, then one JSON line. Each scenario:

1. Redis killed (SIGKILL) with clients connected, restarted 3 s later: are the streams still open,
   how long from Redis accepting again to every client receiving a new message, ``PUBSUB NUMSUB``.
2. Redis frozen (SIGSTOP: the socket stays open): how long until the bridge drops the silent
   connection (``ssebridge_redis_disconnects_total`` on the metrics listener), whether it reports
   Redis up while it stays frozen (``ssebridge_redis_connected``, 2 s of samples), then from SIGCONT
   to every client receiving.
3. A client arriving while Redis is away: its status and wait for headers, then how long from Redis
   back to its first message.
4. A client that never reads (4 KiB receive buffer) beside one that does, while ``--mib`` MiB of
   16 KiB messages are published: the bridge's RSS before, at its peak and after; whether the stalled
   client was cut (``ssebridge_slow_clients_disconnected_total``); whether the reader got every
   message in order.
5. The bridge started with ``RLIMIT_NOFILE`` 512: streams held before the first 503, whether the 503
   carries ``Retry-After``, whether the open streams still receive.

Standard library and ``ssebridge.testing`` only; every process is stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import procstat  # noqa: E402  (bench/ is this script's directory, first on sys.path)
import services  # noqa: E402

from ssebridge.testing import RedisProcess, free_port  # noqa: E402

CHANNEL = "faults"


class Bridge:
    """The bridge as a subprocess, with a metrics listener; ``stop()`` ends it."""

    def __init__(self, redis: RedisProcess, workdir: Path, fd_limit: int | None = None) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        config = workdir / f"bridge-{self.port}.ini"
        config.write_text(
            "[uwsgi]\n"
            f"http-socket = 127.0.0.1:{self.port}\n"
            f"redis = 127.0.0.1:{redis.port}\n"
            "route = ^/events/(.+)$ sse:$1\n"
            f"metrics-listen = tcp:{self.metrics_port}:interface=127.0.0.1\n"
            "shutdown-window = 0.2\n"
        )

        def limit() -> None:
            if fd_limit:
                resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(workdir / f"bridge-{self.port}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "twisted", "ssebridge", "--config", str(config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=limit,
            )
        for port in (self.port, self.metrics_port):
            services.wait_for_port("127.0.0.1", port, 20.0, self.proc)

    def metric(self, name: str) -> float | None:
        """The first sample of ``name`` from the metrics listener."""
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        for line in data.decode().splitlines():
            if line.startswith(name):
                return float(line.split()[-1])
        return None

    def rss_mib(self) -> float:
        return procstat.rss_kib([self.proc.pid]) / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Client:
    """One SSE client on a raw socket: it sends the request, and ``pump()`` reads what has come."""

    def __init__(self, port: int, rcvbuf: int | None = None, read_headers: bool = True) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET /events/{CHANNEL} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        self.data = b""
        self.closed = False
        self.status = 0
        if read_headers:
            self.sock.settimeout(10)
            while b"\r\n\r\n" not in self.data:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.data += chunk
            self.status = int(self.data.split(b" ", 2)[1]) if self.data else 0
            self.sock.setblocking(False)

    def pump(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 20):
                self.data += chunk
            self.closed = True
        except BlockingIOError:
            pass
        except OSError:
            self.closed = True

    def close(self) -> None:
        self.sock.close()


def seconds_until(check: Callable[[], bool], timeout: float, step: float = 0.02) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return round(time.monotonic() - start, 2)
        time.sleep(step)
    return None


def all_receive(redis: RedisProcess, clients: list[Client], tag: str, timeout: float = 10.0) -> float | None:
    """Publish ``tag`` every 20 ms until every client has it; the seconds that took, or None."""

    def check() -> bool:
        try:
            redis.publish(CHANNEL, tag)
        except OSError:
            return False
        for c in clients:
            c.pump()
        return all(tag.encode() in c.data for c in clients)

    return seconds_until(check, timeout)


@contextmanager
def running(redis: RedisProcess, workdir: Path, fd_limit: int | None = None) -> Iterator[Bridge]:
    bridge = Bridge(redis, workdir, fd_limit)
    try:
        yield bridge
    finally:
        bridge.stop()


def redis_faults(redis: RedisProcess, workdir: Path, n: int, out: dict[str, Any]) -> None:
    with running(redis, workdir) as bridge:
        clients = [Client(bridge.port) for _ in range(n)]
        if all_receive(redis, clients, "warm-up") is None:
            raise RuntimeError("clients received nothing before the faults")
        redis.kill()
        time.sleep(3)
        redis.start()
        out["kill9_recover_s"] = all_receive(redis, clients, "after-restart")
        out["kill9_streams_open"] = sum(not c.closed for c in clients)
        out["kill9_numsub"] = redis.numsub(CHANNEL)

        drops = bridge.metric("ssebridge_redis_disconnects_total") or 0.0
        redis.freeze()
        try:
            out["sigstop_detect_s"] = seconds_until(
                lambda: (bridge.metric("ssebridge_redis_disconnects_total") or 0.0) > drops, 15, step=0.05
            )
            # While it stays frozen the bridge must not report it up again (new TCP connections to a
            # stopped Redis still complete in its kernel).
            samples = []
            for _ in range(40):
                samples.append(bridge.metric("ssebridge_redis_connected"))
                time.sleep(0.05)
            out["sigstop_reported_up_while_frozen"] = f"{samples.count(1.0)}/{len(samples)} samples"
        finally:
            redis.thaw()
        out["sigstop_recover_s"] = all_receive(redis, clients, "after-thaw")
        out["sigstop_streams_open"] = sum(not c.closed for c in clients)

        redis.kill()
        time.sleep(1.5)
        start = time.monotonic()
        late = Client(bridge.port)
        out["down_arrival_status"] = late.status
        out["down_arrival_headers_s"] = round(time.monotonic() - start, 2)
        redis.start()
        out["down_arrival_receive_s"] = all_receive(redis, [late], "late")
        for c in [*clients, late]:
            c.close()


def stalled_client(redis: RedisProcess, workdir: Path, mib: int, out: dict[str, Any]) -> None:
    with running(redis, workdir) as bridge:
        stalled = Client(bridge.port, rcvbuf=4096, read_headers=False)
        reader = Client(bridge.port)
        time.sleep(0.5)
        before = peak = bridge.rss_mib()
        payload = "x" * 16384
        count = mib * 64
        with socket.create_connection(("127.0.0.1", redis.port)) as publisher:
            publisher.setblocking(False)
            for i in range(count):
                body = f"{i} {payload}".encode()
                frame = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                    len(CHANNEL),
                    CHANNEL.encode(),
                    len(body),
                    body,
                )
                publisher.setblocking(True)
                publisher.sendall(frame)
                publisher.setblocking(False)
                try:
                    while publisher.recv(65536):
                        pass
                except BlockingIOError:
                    pass
                if i % 4 == 0:
                    # The reader keeps up as a browser would: it must not be the slow one.
                    marker = b"data: %d " % i
                    while marker not in reader.data[-70000:] and not reader.closed:
                        reader.pump()
                        time.sleep(0.0005)
                if i % 64 == 0:
                    peak = max(peak, bridge.rss_mib())
            # Closing a socket with replies unread sends a reset, which makes Redis drop the commands
            # it has not read yet: wait until it has answered them all.
            publisher.setblocking(True)
            publisher.sendall(b"*1\r\n$4\r\nPING\r\n")
            tail = b""
            while not tail.endswith(b"+PONG\r\n"):
                tail = (tail + publisher.recv(65536))[-16:]
        last = b"data: %d " % (count - 1)
        seconds_until(lambda: reader.pump() or last in reader.data[-70000:], 20)
        seqs = [int(line.split(b" ")[1]) for line in reader.data.split(b"\n") if line.startswith(b"data: ")]
        out["stalled_rss_mib"] = [round(before, 1), round(peak, 1), round(bridge.rss_mib(), 1)]
        out["stalled_published_mib"] = mib
        out["stalled_cut"] = bridge.metric("ssebridge_slow_clients_disconnected_total")
        out["stalled_reader_complete_in_order"] = seqs == list(range(count))
        stalled.close()
        reader.close()


def fd_limit(redis: RedisProcess, workdir: Path, out: dict[str, Any], limit: int = 512) -> None:
    with running(redis, workdir, fd_limit=limit) as bridge:
        held: list[Client] = []
        refused: Client | None = None
        while len(held) < limit:
            client = Client(bridge.port)
            if client.status != 200:
                refused = client
                break
            held.append(client)
        out["fd_limit"] = limit
        out["fd_streams_held"] = len(held)
        out["fd_refusal_status"] = refused.status if refused else None
        out["fd_refusal_retry_after"] = bool(refused and b"Retry-After" in refused.data)
        out["fd_open_streams_receive"] = all_receive(redis, held[:5], "still-here", 5) is not None
        for c in held:
            c.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="clients in the Redis fault scenarios")
    parser.add_argument("--mib", type=int, default=50, help="MiB published past a stalled client")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out: dict[str, Any] = {"clients": args.clients}
    with tempfile.TemporaryDirectory(prefix="ssebridge-faults-") as tmp:
        workdir = Path(tmp)
        redis = RedisProcess().start()
        try:
            redis_faults(redis, workdir, args.clients, out)
            stalled_client(redis, workdir, args.mib, out)
            fd_limit(redis, workdir, out)
        finally:
            redis.cleanup()
    width = max(len(k) for k in out)
    for key, value in out.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
