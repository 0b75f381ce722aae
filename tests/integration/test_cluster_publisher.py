"""The in-reactor publisher (``twisted_publisher_for("cluster://...")``) and ``ClusterHistory``'s
redirections, on a real 3-master cluster made on loopback for this module, with the bridge and real SSE
clients where delivery is the point.

In this order (each leaves the cluster whole but the last): events published from the reactor reach the
bridge's clients on every master; a slot moved (``-MOVED``) and a slot half-way through a migration
(``-ASK``) under the publisher; a history read sent to a slot's old owner; a master down, so the cluster
refuses (``-CLUSTERDOWN``) and the publisher fails within its deadline, then publishes again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from ssebridge.address import parse_server
from ssebridge.config.model import load_config
from ssebridge.publish.envelope import format_id, history_key
from ssebridge.redis.cluster import ClusterHistory
from ssebridge.redis.cluster_commands import ClusterCommandError, ClusterCommands
from ssebridge.redis.publisher import TwistedPublisher, twisted_publisher_for
from ssebridge.redis.slots import key_slot
from ssebridge.redis.topology import Topology
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import RedisProcess, SSEClient, connect_sse, free_port, redis_pipeline
from tests.cluster_support import Cluster
from tests.helpers import until


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    made = Cluster(masters=3)
    try:
        yield made.start()
    finally:
        made.cleanup()


@pytest_twisted.async_yield_fixture
async def publisher(cluster: Cluster) -> AsyncIterator[TwistedPublisher]:
    made = twisted_publisher_for(cluster.address, reactor, timeout=3.0)
    yield made
    await made.close()


@pytest_twisted.async_yield_fixture
async def bridge(cluster: Cluster, tmp_path: Path) -> AsyncIterator[tuple[BridgeService, int]]:
    port = free_port()
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "{cluster.address}"\n'
        '[[route]]\nmatch = "^/events/(.+)$"\naction = "sse:$1"\n'
    )
    service = BridgeService(load_config(path))
    await service.startService()
    yield service, port
    await service.stopService()


def commands(publisher: TwistedPublisher) -> ClusterCommands:
    redis = publisher._redis
    assert isinstance(redis, ClusterCommands)
    return redis


def entries(node: RedisProcess, channel: str, asking: bool = False) -> list[tuple[str, bytes]]:
    """``(id, data)`` of each event in ``channel``'s history as ``node`` holds it (``asking``: a node
    importing the slot, which answers only after ``ASKING``)."""
    xrange = ("XRANGE", history_key(channel.encode()), "-", "+")
    reply = redis_pipeline(node.address, [("ASKING",), xrange])[1] if asking else node.command(*xrange)
    return [(i.decode(), dict(zip(f[::2], f[1::2], strict=True))[b"d"]) for i, f in reply]


async def stream(port: int, channel: str) -> SSEClient:
    client = await connect_sse(reactor, "127.0.0.1", port, f"/events/{channel}".encode())
    assert client.status == 200
    return client


@pytest_twisted.ensureDeferred
async def test_events_published_in_the_reactor_reach_clients_on_every_master(
    cluster: Cluster, bridge: tuple[BridgeService, int], publisher: TwistedPublisher
) -> None:
    service, port = bridge
    masters = cluster.current_masters()
    channels = [cluster.channel_on(master, "tw") for master in masters]
    clients = [await stream(port, channel) for channel in channels]
    await until(lambda: service.hub.not_ready() is None, what="subscribed")
    ids = [await publisher.publish(ch, f"hello {ch}").addTimeout(5, reactor) for ch in channels]
    for channel, client, event_id, master in zip(channels, clients, ids, masters, strict=True):
        (event,) = await client.wait_events(1).addTimeout(5, reactor)
        assert (event.data, event.id) == (f"hello {channel}", event_id)
        # At the slot's master, nowhere else.
        assert entries(master, channel) == [(event_id, f"hello {channel}".encode())]
        await client.disconnect()
    # One connection per master, each to the master that owns the channel's slot.
    assert set(commands(publisher).nodes) == {("127.0.0.1", m.port) for m in masters}
    assert await publisher.current_id(channels[1]).addTimeout(5, reactor) == ids[1]
    position = await publisher.current_id(channels).addTimeout(5, reactor)
    assert all(event_id.split("-")[0] in position for event_id in ids)


@pytest_twisted.ensureDeferred
async def test_the_publisher_follows_a_moved_slot(
    cluster: Cluster, bridge: tuple[BridgeService, int], publisher: TwistedPublisher
) -> None:
    service, port = bridge
    channel = cluster.channel_on(cluster.current_masters()[0], "moved")
    slot = key_slot(channel.encode())
    source = cluster.owner(slot)
    target = next(m for m in cluster.current_masters() if m.port != source.port)
    client = await stream(port, channel)
    await until(lambda: service.hub.not_ready() is None, what="subscribed")
    first = await publisher.publish(channel, "before").addTimeout(5, reactor)
    topology = commands(publisher).topology
    reads = topology.reads
    await deferToThread(cluster.move_slot, slot, target)
    # The publisher's map still names the old owner: its first send is answered -MOVED.
    assert topology.map is not None and topology.map.owner(slot) == ("127.0.0.1", source.port)
    second = await publisher.publish(channel, "after").addTimeout(5, reactor)
    assert topology.map.owner(slot) == ("127.0.0.1", target.port)
    await until(lambda: topology.reads > reads, what="the map read again after -MOVED")
    assert entries(target, channel) == [(first, b"before"), (second, b"after")]
    events = await client.wait_events(2).addTimeout(10, reactor)
    assert [(e.data, e.id) for e in events] == [("before", first), ("after", second)]
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_the_publisher_follows_ask_during_a_migration(
    cluster: Cluster, publisher: TwistedPublisher
) -> None:
    channel = cluster.channel_on(cluster.current_masters()[1], "asked")
    slot = key_slot(channel.encode())
    source = cluster.owner(slot)
    target = next(m for m in cluster.current_masters() if m.port != source.port)
    first = await publisher.publish(channel, "before").addTimeout(5, reactor)
    # Half a reshard: the key is at the target, the slot still the source's (which answers -ASK).
    target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(source))
    source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(target))
    source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", history_key(channel.encode()))
    try:
        second = await publisher.publish(channel, "during").addTimeout(5, reactor)
        assert entries(target, channel, asking=True) == [(first, b"before"), (second, b"during")]
        assert source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        # ASK redirects one command only: the map still names the source.
        topology = commands(publisher).topology
        assert topology.map is not None and topology.map.owner(slot) == ("127.0.0.1", source.port)
    finally:
        for node in cluster.current_masters():
            node.command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(target))
        cluster.forget_map()
    await publisher.publish(channel, "after").addTimeout(5, reactor)
    assert [d for _, d in entries(target, channel)] == [b"before", b"during", b"after"]


@pytest_twisted.ensureDeferred
async def test_a_history_read_at_the_old_owner_follows_moved(
    cluster: Cluster, publisher: TwistedPublisher
) -> None:
    channel = cluster.channel_on(cluster.current_masters()[2], "read")
    slot = key_slot(channel.encode())
    source = cluster.owner(slot)
    target = next(m for m in cluster.current_masters() if m.port != source.port)
    ids = [await publisher.publish(channel, f"e{i}").addTimeout(5, reactor) for i in range(3)]
    server = parse_server(cluster.address)
    topology = Topology(server, reactor)
    history = ClusterHistory(server, reactor, topology=topology)
    try:
        replay = await history.read_after(channel.encode(), (0, 0), 10)
        assert [format_id(e.id) for e in replay.events] == ids
        assert set(history.nodes) == {("127.0.0.1", source.port)}
        reads = topology.reads
        await deferToThread(cluster.move_slot, slot, target)
        ids.append(await publisher.publish(channel, "e3").addTimeout(5, reactor))
        # Sent to the old owner by the map it holds, answered -MOVED, read again at the new one.
        replay = await history.read_after(channel.encode(), (0, 0), 10)
        assert [(format_id(e.id), e.data) for e in replay.events] == [
            (i, f"e{n}".encode()) for n, i in enumerate(ids)
        ]
        assert replay.gap is None and format_id(replay.last_id or (0, 0)) == ids[-1]
        assert ("127.0.0.1", target.port) in history.nodes, "the read went to the new owner"
        assert topology.reads == reads, "the -MOVED answer corrected the map, no full read needed"
        assert topology.map is not None and topology.map.owner(slot) == ("127.0.0.1", target.port)
        replay = await history.read_after(channel.encode(), replay.events[1].id, 10)
        assert [format_id(e.id) for e in replay.events] == ids[2:]
    finally:
        await history.stop()


@pytest_twisted.async_yield_fixture
async def hasty(cluster: Cluster) -> AsyncIterator[TwistedPublisher]:
    """A publisher with a short deadline: what gives up is the point, not how long it waits."""
    made = twisted_publisher_for(cluster.address, reactor, timeout=1.5)
    yield made
    await made.close()


@pytest_twisted.ensureDeferred
async def test_a_master_down_the_publisher_fails_in_time_then_publishes_again(
    cluster: Cluster, hasty: TwistedPublisher, bridge: tuple[BridgeService, int]
) -> None:
    publisher = hasty
    service, port = bridge
    masters = cluster.current_masters()
    victim, other = masters[0], masters[1]
    on_victim, on_other = cluster.channel_on(victim, "down"), cluster.channel_on(other, "up")
    clients = [await stream(port, on_victim), await stream(port, on_other)]
    await until(lambda: service.hub.not_ready() is None, what="subscribed")
    await publisher.publish(on_victim, "x").addTimeout(5, reactor)
    await publisher.publish(on_other, "x").addTimeout(5, reactor)
    connects, disconnects = service.stats.redis_connects, service.stats.redis_disconnects
    assert connects >= 2, "each master's subscriber connection is counted"
    victim.kill()
    try:
        # The bridge counts the node's lost connection as it counted its connect.
        await until(lambda: service.stats.redis_disconnects == disconnects + 1, what="counted")
        # No replica: the shard is gone, and once the others count it failed they refuse writes too.
        await until(lambda: b"cluster_state:fail" in other.command("CLUSTER", "INFO"), what="fail")
        start = reactor.seconds()  # type: ignore[attr-defined]
        with pytest.raises(ClusterCommandError, match="CLUSTERDOWN") as refused:
            await publisher.publish(on_other, "refused").addTimeout(10, reactor)
        with pytest.raises(ClusterCommandError, match="not reachable|CLUSTERDOWN"):
            await publisher.publish(on_victim, "unreachable").addTimeout(10, reactor)
        took = reactor.seconds() - start  # type: ignore[attr-defined]
        assert took < 2 * 1.5 + 1.0, f"each call fails within its 1.5 s deadline ({took:.1f}s for two)"
        print(f"\n{refused.value}")
        assert "wait(s)" in str(refused.value)
    finally:
        await deferToThread(victim.start)
        await deferToThread(cluster.wait_ok)
    ids = [await publisher.publish(ch, "back").addTimeout(10, reactor) for ch in (on_victim, on_other)]
    assert entries(victim, on_victim)[-1] == (ids[0], b"back")
    assert entries(other, on_other)[-1] == (ids[1], b"back")
    for client, event_id in zip(clients, ids, strict=True):
        await until(lambda c=client, i=event_id: i in [e.id for e in c.events], what="received again")
        await client.disconnect()
    assert service.stats.redis_connects > connects, "the node's reconnect is counted"
