"""Redis Sentinel: a real master, a replica and three sentinels on loopback, an in-process bridge.

The bridge finds the master through the sentinels, keeps every stream open across a failover (the
master SIGKILLed while messages flow) and catches up from the new master's history; a wrong master
name or sentinels that are down leave it running and not ready, retrying with backoff.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.logger import formatEvent, globalLogPublisher

from ssebridge.address import parse_server
from ssebridge.config.model import load_config
from ssebridge.publish import Publisher
from ssebridge.publish.connect import publisher_for, redis_client_for
from ssebridge.publish.envelope import history_key
from ssebridge.redis.publisher import twisted_publisher_for
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import SSEClient, connect_sse, free_port
from tests.helpers import sleep, until
from tests.sentinel_support import SentinelDeployment

GAP = "ssebridge.gap"


@pytest.fixture
def deployment() -> Iterator[SentinelDeployment]:
    d = SentinelDeployment()
    try:
        yield d.start()
    finally:
        d.cleanup()


class Bridges:
    """Starts in-process bridges from a ``redis`` address and extra route lines; stops them after."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.services: list[BridgeService] = []

    async def start(self, redis: str, routes: str = "") -> tuple[BridgeService, int]:
        port = free_port()
        path = self.directory / f"sentinel-{len(self.services)}.toml"
        path.write_text(
            f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "{redis}"\n'
            '[[route]]\nmatch = "^/events/(.+)$"\naction = "sse:$1"\n' + routes
        )
        service = BridgeService(load_config(path))
        await service.startService()
        self.services.append(service)
        return service, port


@pytest_twisted.async_yield_fixture
async def bridges(tmp_path: Path) -> AsyncIterator[Bridges]:
    b = Bridges(tmp_path)
    yield b
    for service in b.services:
        await service.stopService()


def transports(service: BridgeService) -> list[Any]:
    return [g.transport for g in service.hub.groups.values()]


async def streams(port: int, path: str, n: int) -> list[SSEClient]:
    clients = [await connect_sse(reactor, "127.0.0.1", port, path.encode()) for _ in range(n)]
    assert all(c.status == 200 for c in clients)
    return clients


def live(service: BridgeService, channel: bytes, n: int) -> bool:
    return sum(len(ch._sse) for g in service.hub.groups.values() if (ch := g.channels.get(channel))) >= n


@pytest_twisted.ensureDeferred
async def test_streams_receive_through_a_sentinel_address_in_redis_and_in_a_route(
    deployment: SentinelDeployment, bridges: Bridges
) -> None:
    address = deployment.address()
    # The route names the same sentinels in another order: another server key, its own connections;
    # its commas are the address's, not the action's argument separators.
    reordered = "sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in reversed(deployment.sentinels))
    route = f'[[route]]\nmatch = "^/routed/(.+)$"\naction = "sse:server={reordered}/mymaster,subscribe=$1"\n'
    service, port = await bridges.start(address, route)
    direct = await streams(port, "/events/a", 2)
    routed = await streams(port, "/routed/a", 2)
    await until(lambda: live(service, b"a", 4), what="streams live")
    assert len(service.hub.groups) == 2
    assert service.hub.not_ready() is None
    # Every connection reached the master, none the replica.
    assert {t._endpoint.master for t in transports(service)} == {("127.0.0.1", deployment.master.port)}

    publisher = publisher_for(address)
    ids = [publisher.publish("a", f"m{i}") for i in range(3)]
    twisted = twisted_publisher_for(address)
    try:
        ids.append(await twisted.publish("a", "from-twisted").addTimeout(5, reactor))
    finally:
        await twisted.close()
    for client in direct + routed:
        events = await client.wait_events(4)
        expected = list(zip(["m0", "m1", "m2", "from-twisted"], ids, strict=True))
        assert [(e.data, e.id) for e in events] == expected
        await client.disconnect()


class Flow:
    """Publishes ``m0``, ``m1``... every few ms from a thread through the Sentinel-aware redis-py client,
    retrying through a failover; remembers which publishes were acknowledged, and when."""

    def __init__(self, address: str, channel: str) -> None:
        client = redis_client_for(parse_server(address), socket_timeout=0.5, socket_connect_timeout=0.5)
        self.publisher = Publisher(client, history=10_000)
        self.channel = channel
        self.acked: dict[str, tuple[str, float]] = {}  # data -> (id, monotonic time of the ack)
        self.failed: list[str] = []
        self.sent = 0
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            data = f"m{self.sent}"
            self.sent += 1
            try:
                event_id = self.publisher.publish(self.channel, data)
            except Exception:  # a connection error, a timeout, READONLY: a failover is under way
                self.failed.append(data)
                time.sleep(0.05)
                continue
            self.acked[data] = (event_id, time.monotonic())
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()


@pytest_twisted.ensureDeferred
async def test_master_killed_while_messages_flow_streams_stay_and_lose_nothing_the_new_master_has(
    deployment: SentinelDeployment, bridges: Bridges, logs: list[str]
) -> None:
    address = deployment.address()
    service, port = await bridges.start(address)
    clients = await streams(port, "/events/f", 5)
    await until(lambda: live(service, b"f", 5), what="streams live")
    old_master = deployment.master

    flow = Flow(address, "f")
    running = threads.deferToThread(flow.run)
    try:
        await until(lambda: len(flow.acked) >= 30, what="messages flowing")
        before = len(flow.acked)
        killed = time.monotonic()
        old_master.kill()

        # Receiving again: every client has an event published after the kill.
        def received_again() -> bool:
            after = {d for d, (_, t) in flow.acked.items() if t > killed}
            return bool(after) and all(any(e.data in after for e in c.events) for c in clients)

        await until(received_again, timeout=20, what="clients receiving after the failover")
        recovered = time.monotonic() - killed
        await until(lambda: deployment.master_address()[1] != old_master.port, what="sentinels switched")
        await sleep(0.5)
    finally:
        flow.stop()
        await running

    # Everything acknowledged after the failover reaches every client, in order.
    last = max(flow.acked, key=lambda d: flow.acked[d][1])
    for client in clients:
        await until(lambda c=client: any(e.data == last for e in c.events), what="last message")
    assert all(not c.closed.called for c in clients), "a stream was closed by the failover"

    new_master = deployment.process_at(deployment.master_address()[1])
    kept = {entry[1][1].decode() for entry in new_master.command("XRANGE", history_key(b"f"), "-", "+")}
    during = [d for d, (_, t) in flow.acked.items() if killed < t < killed + recovered]
    reached = [d for d in flow.acked if all(any(e.data == d for e in c.events) for c in clients)]
    lost = sorted(set(flow.acked) - set(reached), key=lambda d: int(d[1:]))
    print(
        f"\nsentinel failover: kill -> clients receiving again {recovered:.2f}s; "
        f"{len(flow.acked)} publishes acknowledged ({before} before the kill, {len(during)} between the kill "
        f"and recovery), {len(flow.failed)} failed and retried; acknowledged but not delivered to every "
        f"client: {len(lost)} {lost[:10]}, of which still in the new master's history: "
        f"{len(set(lost) & kept)}"
    )
    # Asynchronous replication may lose what the old master acknowledged last and never sent on;
    # nothing the new master still holds may be missing from any client.
    for client in clients:
        got = [e.data for e in client.events if e.event != GAP]
        missing = sorted(kept - set(got))
        assert not missing, f"in the new master's history, not delivered: {missing[:10]}"
        ids = [e.id for e in client.events if e.event != GAP]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert set(lost) <= set(flow.acked) - kept
    for client in clients:
        await client.disconnect()
    # The next connection is to another server: a failover, not a restart nor a buffer limit.
    new = f"127.0.0.1:{new_master.port}"
    assert any(f"another server ({new}" in line for line in logs), logs
    assert not any("had restarted" in line or "client-output-buffer-limit" in line for line in logs)


@pytest_twisted.ensureDeferred
async def test_a_wrong_master_name_is_logged_once_and_retried_with_backoff_not_ready(
    deployment: SentinelDeployment, bridges: Bridges
) -> None:
    logged: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") is not None and event["log_level"].name == "error":
            logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        service, _ = await bridges.start(deployment.address("nosuchmaster"))
        await sleep(3.0)
    finally:
        globalLogPublisher.removeObserver(observe)
    [transport] = transports(service)
    assert not transport.connected
    assert service.hub.not_ready() is not None
    # Backoff: 0.1 s doubling to 1 s, jittered: a handful of attempts in 3 s, not a busy loop.
    attempts = transport._endpoint.discoveries
    print(f"\nwrong master name: {attempts} discovery attempts in 3 s")
    assert 2 <= attempts <= 10
    about = [line for line in logged if "nosuchmaster" in line]
    assert len(about) == 1 and "misconfigured master name" in about[0], logged


@pytest_twisted.ensureDeferred
async def test_sentinels_down_at_start_the_bridge_waits_not_ready_then_streams(bridges: Bridges) -> None:
    d = SentinelDeployment(sentinel_ports=(free_port(), free_port(), free_port()))
    try:
        d.start_data()
        address = "sentinel://" + ",".join(f"127.0.0.1:{p}" for p in d.sentinel_ports) + "/mymaster"
        service, port = await bridges.start(address)
        client = (await streams(port, "/events/w", 1))[0]
        await sleep(1.5)
        assert service.hub.not_ready() is not None
        assert not client.closed.called
        await threads.deferToThread(d.start_sentinels)
        await until(lambda: service.hub.not_ready() is None, timeout=10, what="ready once sentinels are up")
        await until(lambda: live(service, b"w", 1), what="stream live")
        event_id = await threads.deferToThread(lambda: publisher_for(address).publish("w", "hello"))
        [event] = await client.wait_events(1)
        assert (event.data, event.id) == ("hello", event_id)
        await client.disconnect()
    finally:
        d.cleanup()


@pytest_twisted.ensureDeferred
async def test_a_manual_failover_demotes_a_live_master_and_the_bridge_follows(
    deployment: SentinelDeployment, bridges: Bridges, logs: list[str]
) -> None:
    """``SENTINEL FAILOVER``: the old master stays up and becomes a replica; the bridge must leave it
    (``+switch-master``, ``ROLE``) for the new master, where publishes now go."""
    address = deployment.address()
    service, port = await bridges.start(address)
    [client] = await streams(port, "/events/m", 1)
    await until(lambda: live(service, b"m", 1), what="stream live")
    [transport] = transports(service)
    publisher = publisher_for(address)
    first = publisher.publish("m", "before")
    await client.wait_events(1)
    old = deployment.master.port
    # Replication is asynchronous: an event the replica has not yet got would be lost by promoting it
    # (the kill test shows that case); here the failover starts once it has.
    assert deployment.replica is not None
    replica = deployment.replica
    await until(lambda: replica.command("XLEN", history_key(b"m")) == 1, what="replicated")
    deployment.sentinels[0].command("SENTINEL", "FAILOVER", "mymaster")
    await until(lambda: deployment.master_address()[1] != old, timeout=15, what="sentinels switched")
    new = deployment.master_address()[1]
    await until(
        lambda: transport.connected and transport._endpoint.master == ("127.0.0.1", new),
        timeout=10,
        what="bridge on the new master",
    )
    # A fresh client: one still connected to the old master would write there until the sentinels
    # reconfigure it as a replica (up to 10 s, their INFO period), and that write would be lost
    # (docs/sentinel.md, What can be lost).
    later = await threads.deferToThread(lambda: publisher_for(address).publish("m", "after"))
    events = await client.wait_events(2)
    assert [(e.data, e.id) for e in events] == [("before", first), ("after", later)]
    assert not client.closed.called
    await client.disconnect()
    # The logs say why the connection to the old master ended, and blame neither it nor a restart.
    switched = (
        f"connection to 127.0.0.1:{old} dropped: the sentinels announced a new master at 127.0.0.1:{new}"
    )
    assert any(switched in line for line in logs), "\n".join(ln for ln in logs if "redis" in ln)
    for misleading in ("closed by the server or the network", "had restarted", "client-output-buffer-limit"):
        assert not any(misleading in line for line in logs), misleading


@pytest_twisted.ensureDeferred
async def test_a_frozen_sentinel_under_the_watcher_is_left_and_a_failover_through_another_is_followed(
    deployment: SentinelDeployment, bridges: Bridges, logs: list[str]
) -> None:
    """The sentinel the ``+switch-master`` watcher listens to is SIGSTOPped, then a live one fails over:
    the watcher's PINGs go unanswered, it moves to another sentinel, learns of the switch there, and the
    bridge follows within a few seconds, not when the demoted master finally drops its clients."""
    address = deployment.address()
    service, port = await bridges.start(address)
    [client] = await streams(port, "/events/z", 1)
    await until(lambda: live(service, b"z", 1), what="stream live")
    [transport] = transports(service)
    endpoint = transport._endpoint
    await until(lambda: endpoint.watching is not None, what="watcher connected")
    frozen = next(s for s in deployment.sentinels if s.address == endpoint.watching)
    others = [s for s in deployment.sentinels if s is not frozen]
    # The publishers ask only the live sentinels: redis-py would wait on the frozen one without a deadline.
    live_address = "sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in others) + "/mymaster"
    first = publisher_for(live_address).publish("z", "before")
    await client.wait_events(1)
    assert deployment.replica is not None
    replica = deployment.replica
    await until(lambda: replica.command("XLEN", history_key(b"z")) == 1, what="replicated")
    old = deployment.master.port
    frozen.freeze()
    try:
        others[0].command("SENTINEL", "FAILOVER", "mymaster")

        def master_port() -> int:
            return int(others[0].command("SENTINEL", "get-master-addr-by-name", "mymaster")[1])

        await until(lambda: master_port() != old, timeout=15, what="sentinels switched")
        switched = time.monotonic()
        new = master_port()
        await until(
            lambda: transport.connected and endpoint.master == ("127.0.0.1", new),
            timeout=8,
            what="bridge on the new master",
        )
        followed = time.monotonic() - switched
        print(f"\nfrozen watcher sentinel: bridge on the new master {followed:.2f}s after the switch")
        # Through the watcher (on another sentinel now), not through the demoted master's CLIENT KILL.
        assert endpoint.switches >= 1
        assert endpoint.watching is not None and endpoint.watching != frozen.address
        assert any(f"sentinel 127.0.0.1:{frozen.port} silent for" in line for line in logs)
        later = await threads.deferToThread(lambda: publisher_for(live_address).publish("z", "after"))
        events = await client.wait_events(2)
        assert [(e.data, e.id) for e in events] == [("before", first), ("after", later)]
        assert not client.closed.called
        await client.disconnect()
    finally:
        frozen.thaw()


@pytest_twisted.ensureDeferred
async def test_sentinels_and_master_with_passwords_of_their_own(bridges: Bridges, logs: list[str]) -> None:
    """Sentinels with ``requirepass`` (``sentinel_password=`` in the address) in front of a master with
    another password (the address's ``:password@``): the bridge streams, both publishers publish; a
    wrong sentinel password is one clear error and a bridge that is not ready."""
    d = SentinelDeployment(password="master-secret", sentinel_password="sentinel-secret")
    try:
        await threads.deferToThread(d.start)
        address = d.address()
        assert "sentinel_password=sentinel-secret" in address and ":master-secret@" in address
        service, port = await bridges.start(address)
        [client] = await streams(port, "/events/p", 1)
        await until(lambda: live(service, b"p", 1), what="stream live")
        assert service.hub.not_ready() is None
        first = await threads.deferToThread(lambda: publisher_for(address).publish("p", "sync"))
        twisted = twisted_publisher_for(address)
        try:
            second = await twisted.publish("p", "twisted").addTimeout(5, reactor)
        finally:
            await twisted.close()
        events = await client.wait_events(2)
        assert [(e.data, e.id) for e in events] == [("sync", first), ("twisted", second)]
        await client.disconnect()
        # The passwords never reach a log line.
        assert not any("secret" in line for line in logs)

        wrong = address.replace("sentinel-secret", "wrong")
        refused, _ = await bridges.start(wrong)
        await sleep(1.5)
        assert refused.hub.not_ready() is not None
        auth_errors = [line for line in logs if "AUTH refused" in line]
        assert auth_errors and len(auth_errors) <= 2, auth_errors  # the transport's, maybe the history's
    finally:
        d.cleanup()
