"""A fleet of bridges on one Redis (issue 12, item 3): bridges keep no state a client depends on.

Each bridge has its own subscriptions; event ids and history live in Redis. So a client may leave one
bridge and resume on another with ``Last-Event-ID``, and a rolling restart of the whole fleet (each
bridge drained with SIGTERM in turn, its clients spreading over the others) loses nothing.

"Lost" here means: an event the client never received although history still held it when the client
came back. A publisher keeps far more history than the test publishes, so nothing is trimmed, and an
``ssebridge.gap`` event (what the bridge sends for events that history no longer holds, see
docs/resume.md) would fail the test as surely as a missing event.

The client picks the other bridge itself when its stream closes, as a load balancer would; the
``retry:`` hint the draining bridge sends sets when. ``SSEBRIDGE_FLEET_CLIENTS`` sets the rolling
restart's fleet size (default 2,000, the issue's figure). Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from ssebridge.testing import Event, EventStreamParser, RedisProcess, free_port
from tests.helpers import twistd, wait_port
from tests.system.sse_fleet import Client, Fleet

CLIENTS = int(os.environ.get("SSEBRIDGE_FLEET_CLIENTS", "2000"))
RETRY_MS = 200
WINDOW = 1.0
#: Seconds between published events: slow enough that 2,000 clients in one Python thread keep up.
PUBLISH_EVERY = 0.1
WAIT = 30.0

CONFIG = """listen = ["tcp:{port}:interface=127.0.0.1:backlog=4096"]
redis = "127.0.0.1:{redis}"
retry_ms = {retry}
shutdown_window = {window}
metrics_listen = "tcp:{metrics}:interface=127.0.0.1"

[[route]]
match = '^/events/(?P<channel>[a-z]+)$'
action = "sse:${{channel}}"
"""


@dataclass
class Bridge:
    """One ``twistd ssebridge`` of the fleet; ``start`` again after a stop reuses its ports."""

    name: str
    directory: Path
    redis: RedisProcess
    port: int = 0
    metrics: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.port = free_port()
        self.metrics = free_port()

    def start(self) -> Bridge:
        config = self.directory / f"{self.name}.toml"
        config.write_text(
            CONFIG.format(
                port=self.port, redis=self.redis.port, retry=RETRY_MS, window=WINDOW, metrics=self.metrics
            )
        )
        self.starts += 1
        with (self.directory / f"{self.name}-{self.starts}.log").open("wb") as out:
            args = ("-n", "--pidfile=", "ssebridge", "--config", str(config))
            self.proc = twistd(*args, cwd=self.directory, stdout=out, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self) -> None:
        """Until ``/readyz`` says 200: what a load balancer's health check waits for."""
        assert self.proc is not None
        wait_port(self.port, timeout=WAIT, proc=self.proc)
        deadline = time.monotonic() + WAIT
        while get(self.metrics, "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: /readyz not 200 within {WAIT}s")
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM (the drain a rolling restart uses) and wait for the exit; its status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(WAIT)

    def log(self) -> str:
        return (self.directory / f"{self.name}-{self.starts}.log").read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.fixture
def bridges(tmp_path: Path, redis: RedisProcess) -> Iterator[tuple[Bridge, Bridge]]:
    a = Bridge("a", tmp_path, redis).start()
    b = Bridge("b", tmp_path, redis).start()
    try:
        # Started side by side: two cold Python starts take as long as one on two cores.
        a.wait_ready()
        b.wait_ready()
        yield a, b
    finally:
        for bridge in (a, b):
            if bridge.proc is not None and bridge.proc.poll() is None:
                try:
                    bridge.stop()
                except subprocess.TimeoutExpired:
                    bridge.kill()


# --- one client moves ---------------------------------------------------------------------------------


class Stream:
    """One blocking SSE client: HTTP/1.0 (close-delimited), events parsed as a browser does."""

    def __init__(self, port: int, path: str, last_event_id: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
        self.sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n{resume}\r\n".encode())
        self.parser = EventStreamParser()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, f"closed before the headers: {head!r}"
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"200", head
        self.parser.feed(rest)

    def events(self, count: int) -> list[Event]:
        """The first ``count`` events of the stream (waiting for them)."""
        while len(self.parser.events) < count:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed after {self.parser.events}"
            self.parser.feed(chunk)
        return self.parser.events[:count]

    def close(self) -> None:
        self.sock.close()


def test_a_client_resumes_on_another_bridge(bridges: tuple[Bridge, Bridge], redis: RedisProcess) -> None:
    """Read from A, leave, events published meanwhile, come back to B (never subscribed to the channel
    before): every missed event once, in order, with the ids A would have given, then B's live ones."""
    import redis as redis_py

    from ssebridge.publish import Publisher

    a, b = bridges
    publisher = Publisher(redis_py.Redis(host="127.0.0.1", port=redis.port), history=1000)
    ids: list[str] = []

    def publish(first: int, last: int) -> None:
        ids.extend(publisher.publish("news", f"event {n}") for n in range(first, last + 1))

    on_a = Stream(a.port, "/events/news")
    publish(1, 5)
    seen = on_a.events(5)
    assert [e.data for e in seen] == [f"event {n}" for n in range(1, 6)]
    assert [e.id for e in seen] == ids
    on_a.close()

    publish(6, 15)  # nobody listens on B yet; A's stream is gone
    on_b = Stream(b.port, "/events/news", last_event_id=seen[-1].id)
    missed = on_b.events(10)
    assert [e.data for e in missed] == [f"event {n}" for n in range(6, 16)]
    assert [e.id for e in missed] == ids[5:15]
    publish(16, 18)
    assert [e.data for e in on_b.events(13)[10:]] == ["event 16", "event 17", "event 18"]
    on_b.close()

    # And back to A, which has kept its subscription all along (or dropped it: either way).
    publish(19, 20)
    back = Stream(a.port, "/events/news", last_event_id=ids[17])
    assert [(e.id, e.data) for e in back.events(2)] == [(ids[18], "event 19"), (ids[19], "event 20")]
    publish(21, 21)
    assert back.events(3)[2].data == "event 21"
    # Nothing else: no gap event, no repeat, before the last live one.
    assert all(e.event == "message" for e in back.parser.events)
    back.close()


# --- a rolling restart under 2,000 clients --------------------------------------------------------


class MovingFleet(Fleet):
    """Clients spread over several bridges; a client whose stream closes (or whose connection is
    refused) comes back to the next bridge, as a load balancer sends it to a live one."""

    def __init__(self, ports: list[int], path: str, count: int) -> None:
        super().__init__(ports[0], path, count)
        self.ports = ports
        self.at = {n: n % len(ports) for n in range(count)}
        self.gaps: list[tuple[int, str | None]] = []
        self.named: set[int] = set()

    def _connect(self, client: Client) -> None:
        self.port = self.ports[self.at[client.number]]
        super()._connect(client)

    def _move(self, client: Client) -> None:
        self.at[client.number] = (self.at[client.number] + 1) % len(self.ports)

    def _attempt_failed(self, client: Client, err: int) -> None:
        self._move(client)
        super()._attempt_failed(client, err)

    def _closed(self, client: Client) -> None:
        self._move(client)
        self.named.discard(client.number)
        super()._closed(client)

    def _line(self, client: Client, line: str) -> None:
        # The base fleet knows only numbered events: a named one (a gap) is recorded, not counted.
        if line.startswith("event:"):
            self.named.add(client.number)
            return
        if not line and client.number in self.named:
            self.named.discard(client.number)
            self.gaps.append((client.number, client.event_data))
            client.event_data = None
        super()._line(client, line)

    def all_on(self, index: int) -> bool:
        return all(c.head and self.at[c.number] == index for c in self.clients)


class Publishing(threading.Thread):
    """1, 2, 3... to ``news`` with ids, every ``PUBLISH_EVERY`` seconds; history far longer than the run."""

    def __init__(self, redis: RedisProcess) -> None:
        super().__init__(daemon=True)
        import redis as redis_py

        from ssebridge.publish import Publisher

        self.publisher = Publisher(redis_py.Redis(host="127.0.0.1", port=redis.port), history=100_000)
        self.stop = threading.Event()
        self.published = 0

    def run(self) -> None:
        while not self.stop.wait(PUBLISH_EVERY):
            self.publisher.publish("news", str(self.published + 1))
            self.published += 1


def test_a_rolling_restart_of_the_fleet_loses_nothing(
    bridges: tuple[Bridge, Bridge], redis: RedisProcess
) -> None:
    a, b = bridges
    publishing = Publishing(redis)
    publishing.start()
    fleet = MovingFleet([a.port, b.port], "/events/news", CLIENTS)
    fleet.start()
    began = time.monotonic()
    timeline: dict[str, float] = {}
    try:
        fleet.wait(lambda: fleet.streaming() == CLIENTS and fleet.all_received(1), WAIT, "all streaming")
        timeline["connected"] = time.monotonic() - began
        # Drain A: its clients spread over (here: move to) B; then A comes back, and B goes the same way.
        for stopped, other in ((a, 1), (b, 0)):
            assert stopped.stop() in (0, -signal.SIGTERM), stopped.log()[-3000:]
            fleet.wait(partial(fleet.all_on, other), WAIT, f"every client on bridge {'ab'[other]}")
            timeline[f"{stopped.name} drained, all on {'ab'[other]}"] = time.monotonic() - began
            stopped.start().wait_ready()
        time.sleep(3 * PUBLISH_EVERY)
    finally:
        publishing.stop.set()
        publishing.join(5)
    last = publishing.published
    try:
        fleet.wait(lambda: fleet.all_received(upto=last), WAIT, f"every client at event {last}")
    finally:
        fleet.stop.set()
        fleet.join(10)
    report = fleet.report(last)
    print(f"\nrolling restart, {CLIENTS} clients, {last} events: {report}; at s: {timeline}")
    assert not fleet.gaps, fleet.gaps[:5]
    assert report["lost"] == 0 and report["duplicates"] == 0, report
    # Each client moved with every drain of the bridge it was on: A's half twice, B's once...
    assert report["closed_streams"] == CLIENTS + CLIENTS // 2, report
    # ...and each came back at its first attempt, to a bridge that took it.
    assert report["refused"] == 0 and report["failed_attempts"] == 0, report
    assert report["retries_needed"] == 0, report
    assert report["hint_min"] >= RETRY_MS and report["hint_max"] <= RETRY_MS + WINDOW * 1000, report


# --- behind nginx -----------------------------------------------------------------------------------

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)

#: The upstream block of docs/scaling.md. ``max_fails=0``: with nginx's default (1), a bridge that
#: refused once is then sent one request per ``fail_timeout`` until a request to it *completes*, which a
#: stream never does; so a restarted bridge would take one client per 10 s and the others get 502 "no
#: live upstreams" (seen here with ``max_fails=1``). Refused connects are retried on the next server.
NGINX_CONFIG = """daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream ssebridge {{
        server 127.0.0.1:{a} max_fails=0;
        server 127.0.0.1:{b} max_fails=0;
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /events/ {{
            proxy_pass http://ssebridge;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 120s;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_503;
        }}
    }}
}}
"""


@pytest.mark.skipif(NGINX is None, reason="nginx not installed")
def test_a_rolling_restart_behind_nginx_loses_nothing(
    bridges: tuple[Bridge, Bridge], redis: RedisProcess, tmp_path: Path
) -> None:
    """The clients know one address, nginx's; it spreads them over the two bridges and sends those a
    draining bridge closes to the other one (its port refuses from the first instant of SIGTERM): no
    client sees a 502, none loses or repeats an event."""
    assert NGINX is not None
    a, b = bridges
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONFIG.format(dir=tmp_path, a=a.port, b=b.port, port=port))
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "nginx-error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    publishing = Publishing(redis)
    fleet = MovingFleet([port], "/events/news", 40)
    try:
        wait_port(port, proc=nginx)
        publishing.start()
        fleet.start()
        fleet.wait(lambda: fleet.streaming() == 40 and fleet.all_received(1), WAIT, "all streaming")
        for stopped in (a, b):
            stopped.stop()
            fleet.wait(lambda: fleet.streaming() == 40, WAIT, f"every client back after {stopped.name}")
            stopped.start().wait_ready()
        publishing.stop.set()
        publishing.join(5)
        last = publishing.published
        fleet.wait(lambda: fleet.all_received(upto=last), WAIT, f"every client at event {last}")
    finally:
        publishing.stop.set()
        fleet.stop.set()
        fleet.join(10)
        nginx.terminate()
        nginx.wait(10)
    report = fleet.report(last)
    print(f"\nbehind nginx, 40 clients, {last} events: {report}")
    assert not fleet.gaps, fleet.gaps[:5]
    assert report["lost"] == 0 and report["duplicates"] == 0, report
    assert report["failed_attempts"] == 0 and report["refused"] == 0, report  # no 502, no 503
    # nginx spread the clients: B's drain closed the streams on B, and A's some others before.
    assert 40 < report["closed_streams"] <= 80, report
