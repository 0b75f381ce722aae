"""Redis Cluster with sharded pub/sub: a real cluster on loopback (made by the tests), an in-process
bridge with ``redis = "cluster://..."``, real SSE clients, and the redis-py cluster publisher.

One cluster of 3 masters with a replica each serves the module, in this order: channels spread over
every master; a slot migrated mid-stream; a failover asked of a replica; a master killed (the replica
takes over); a master and its replica both down (``CLUSTERDOWN``) then back. A second cluster, made
after the bridge started, covers seeds that are down at start.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from redis.backoff import ConstantBackoff
from redis.retry import Retry
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from ssebridge.address import parse_server
from ssebridge.config.model import load_config
from ssebridge.publish import Publisher
from ssebridge.publish.connect import publisher_for, redis_client_for
from ssebridge.redis.cluster import ClusterTransport
from ssebridge.redis.slots import key_slot
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import RedisProcess, RespError, SSEClient, connect_sse, free_port
from tests.cluster_support import Cluster, cluster_port
from tests.helpers import sleep, until

StartBridge = Callable[[str], Awaitable[tuple[BridgeService, int]]]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    made = Cluster(masters=3, replicas=1)
    try:
        yield made.start()
    finally:
        made.cleanup()


@pytest_twisted.async_yield_fixture
async def start_bridge(tmp_path: Path) -> AsyncIterator[StartBridge]:
    services: list[BridgeService] = []

    async def start(address: str) -> tuple[BridgeService, int]:
        port = free_port()
        path = tmp_path / f"cluster-{len(services)}.toml"
        path.write_text(
            f'listen = "tcp:{port}:interface=127.0.0.1"\nredis = "{address}"\n'
            '[[route]]\nmatch = "^/events/(.+)$"\naction = "sse:$1"\n'
        )
        service = BridgeService(load_config(path))
        await service.startService()
        services.append(service)
        return service, port

    yield start
    for service in services:
        await service.stopService()


@pytest.fixture
def publisher(cluster: Cluster) -> Iterator[Publisher]:
    # redis-py's default retries back off for seconds: publishes during a failover would measure that.
    client = redis_client_for(parse_server(cluster.address), retry=Retry(ConstantBackoff(0.02), 2))
    yield Publisher(client, history=1000, sharded=True)
    client.close()


def transport(service: BridgeService) -> ClusterTransport:
    (group,) = service.hub.groups.values()
    assert isinstance(group.transport, ClusterTransport)
    return group.transport


async def open_streams(port: int, channels: list[str]) -> dict[str, SSEClient]:
    clients = {}
    for channel in channels:
        clients[channel] = client = await connect_sse(
            reactor, "127.0.0.1", port, f"/events/{channel}".encode()
        )
        assert client.status == 200
    return clients


def received(client: SSEClient) -> list[str]:
    return [e.data for e in client.events if e.event == "message"]


async def flowing(
    publisher: Publisher, clients: dict[str, SSEClient], tag: str, timeout: float = 15.0
) -> float:
    """Publish ``tag`` on every channel, again and again, until every client has it; seconds taken."""
    start = time.monotonic()
    while True:
        for channel, client in clients.items():
            if tag not in received(client):
                try:
                    await deferToThread(publisher.publish, channel, tag)
                except Exception:
                    pass  # the cluster is failing over: publishing fails too
        await sleep(0.05)
        if all(tag in received(c) for c in clients.values()):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            missing = [ch for ch, c in clients.items() if tag not in received(c)]
            raise AssertionError(f"{tag} not received on {missing} within {timeout}s")


def spread(cluster: Cluster, prefix: str, per_master: int = 2) -> list[str]:
    """Channels whose slots are served by every master in turn (distinct slots)."""
    cluster.forget_map()
    names: list[str] = []
    used: set[int] = set()
    for master in cluster.current_masters():
        for _ in range(per_master):
            name = cluster.channel_on(master, prefix, used)
            used.add(key_slot(name.encode()))
            names.append(name)
    return names


def no_loss(client: SSEClient, sent: list[str]) -> None:
    """Every event sent is received, once, in order (repeated ``flowing`` tags aside)."""
    got = [d for d in received(client) if d in set(sent)]
    assert got == sent, f"lost or repeated: {sorted(set(sent) - set(got))[:5]}, {len(got)} of {len(sent)}"


@pytest_twisted.ensureDeferred
async def test_channels_on_every_master_reach_their_clients(
    cluster: Cluster, start_bridge: StartBridge
) -> None:
    publisher = publisher_for(cluster.address)  # as an application would make it
    service, port = await start_bridge(cluster.address)
    await until(lambda: service.hub.not_ready() is None, what="ready")
    channels = spread(cluster, "spread")
    clients = await open_streams(port, channels)
    await until(lambda: service.hub.not_ready() is None, what="subscribed")
    nodes = transport(service).nodes
    assert len([n for n in nodes.values() if n.channels]) == 3, "one subscriber connection per master"
    ids = {ch: publisher.publish(ch, f"hello {ch}") for ch in channels}
    for ch, client in clients.items():
        (event,) = await client.wait_events(1)
        assert (event.data, event.id) == (f"hello {ch}", ids[ch])
    # Sharded: each master holds the subscriptions of its own slots only.
    for master in cluster.current_masters():
        held = master.command("PUBSUB", "SHARDNUMSUB", *(f"ssebridge:{{{ch}}}:e" for ch in channels))
        counts = dict(zip(held[::2], held[1::2], strict=True))
        mine = {
            f"ssebridge:{{{ch}}}:e".encode()
            for ch in channels
            if cluster.owner_port(key_slot(ch.encode())) == master.port
        }
        assert {k for k, v in counts.items() if v} == mine
    for client in clients.values():
        await client.disconnect()
    publisher._redis.close()


@pytest_twisted.ensureDeferred
async def test_a_slot_migrated_mid_stream_loses_nothing(
    cluster: Cluster, start_bridge: StartBridge, publisher: Publisher
) -> None:
    service, port = await start_bridge(cluster.address)
    channels = spread(cluster, "moving", per_master=1)
    clients = await open_streams(port, channels)
    await until(lambda: service.hub.not_ready() is None, what="subscribed")
    moving = channels[0]
    slot = key_slot(moving.encode())
    source = cluster.owner(slot)
    target = next(m for m in cluster.current_masters() if m.port != source.port)
    sent: list[str] = []

    def burst(n: int) -> None:
        for _ in range(n):
            tag = f"m{len(sent)}"
            publisher.publish(moving, tag)
            sent.append(tag)

    burst(20)
    cluster.move_slot(slot, target)
    burst(20)  # some land before the bridge hears the slot moved: history has them
    await flowing(publisher, {moving: clients[moving]}, "after-move")
    burst(5)
    await until(lambda: len([d for d in received(clients[moving]) if d in set(sent)]) >= len(sent))
    no_loss(clients[moving], sent)
    assert transport(service).placed[moving.encode()].addr == ("127.0.0.1", target.port)
    await flowing(publisher, clients, "everyone")
    for client in clients.values():
        await client.disconnect()


async def through(
    cluster: Cluster,
    service: BridgeService,
    publisher: Publisher,
    clients: dict[str, SSEClient],
    victim: str,
    disrupt: Callable[[], None],
    successor: RedisProcess,
) -> tuple[float, float, float, int, int]:
    """Publish on ``victim`` every 20 ms while ``disrupt`` fails its master over, until its client
    receives again; then check that it has every event its slot's history holds, once and in order.

    Returns seconds from the disruption until ``successor`` was master (Redis's own failover time),
    until the bridge had the channel subscribed at the new master,
    until the client received again, how many publishes failed meanwhile (the cluster refused or could
    not be reached), and how many events were published.
    """
    client = clients[victim]
    cluster_transport = transport(service)
    old = cluster_transport.placed[victim.encode()]
    published: list[str] = []
    failed = 0

    async def publish() -> bool:
        # In a thread: a blocked publish (a master pausing writes for a failover) must not block
        # the bridge's reactor.
        nonlocal failed
        tag = f"v{len(published) + failed}"
        try:
            await deferToThread(publisher.publish, victim, tag)
        except Exception:
            failed += 1
            return False
        published.append(tag)
        return True

    for _ in range(10):
        await publish()
    await until(lambda: published[-1] in received(client), what="flowing before")
    # A replica that is still syncing is not eligible for promotion: start from a settled shard.
    await until(
        lambda: b"master_link_status:up" in successor.command("INFO", "replication"),
        timeout=15,
        what="the replica in sync",
    )
    disrupted = time.monotonic()
    disrupt()
    before = len(published)
    resubscribed = promoted = 0.0
    while True:
        if not promoted and (await deferToThread(successor.command, "ROLE"))[0] == b"master":
            promoted = time.monotonic() - disrupted
        if await publish() and len(published) > before + 1 and published[-2] in received(client):
            break
        await sleep(0.02)
        now = cluster_transport.placed.get(victim.encode())
        if not resubscribed and now is not None and now is not old:
            if victim.encode() in cluster_transport.confirmed:
                resubscribed = time.monotonic() - disrupted
        if time.monotonic() - disrupted > 20:
            nodes = cluster.live()[0].command("CLUSTER", "NODES").decode()
            raise AssertionError(f"the stream did not receive again within 20 s; CLUSTER NODES:\n{nodes}")
    back = time.monotonic() - disrupted
    for _ in range(5):
        await publish()
    await until(lambda: published[-1] in received(client), what="the last publish")
    # What history holds now (on the new master) was delivered, none twice, in order.
    owner = cluster.owner(key_slot(victim.encode()))
    entries = owner.command("XRANGE", f"ssebridge:{{{victim}}}:h", "-", "+")
    in_history = [dict(zip(f[::2], f[1::2], strict=True))[b"d"].decode() for _, f in entries]
    got = received(client)
    assert [d for d in got if d in set(in_history)] == in_history
    assert len(got) == len(set(got)), "nothing twice"
    await flowing(publisher, clients, f"after-{victim}")
    return promoted, resubscribed, back, failed, len(published)


async def survived(
    cluster: Cluster,
    start_bridge: StartBridge,
    publisher: Publisher,
    what: str,
    prefix: str,
    victim_at: int,
    disrupt: Callable[[RedisProcess, RedisProcess], None],
    check: Callable[[BridgeService, str, RedisProcess], None],
) -> None:
    """A bridge with streams on channels (``prefix``...) of every master; ``disrupt(master, replica)``
    hits the master of the channel at ``victim_at`` while messages flow (``through``: the streams stay
    whole); ``check(bridge, channel, replica)`` while the streams are open; the bridge ready again."""
    service, port = await start_bridge(cluster.address)
    cluster.wait_ok()
    channels = spread(cluster, prefix, per_master=1)
    clients = await open_streams(port, channels)
    await until(lambda: service.hub.not_ready() is None, what="subscribed")
    victim = channels[victim_at]
    master = cluster.owner(key_slot(victim.encode()))
    replica = cluster.replica_of(master)
    promoted, moved, back, failed, total = await through(
        cluster, service, publisher, clients, victim, lambda: disrupt(master, replica), replica
    )
    print(
        f"\n{what}: replica master after {promoted:.2f}s, resubscribed after {moved:.2f}s, "
        f"receiving again after {back:.2f}s, {failed} failed publishes of {total}"
    )
    check(service, victim, replica)
    await until(lambda: service.hub.not_ready() is None, what="ready again")
    for client in clients.values():
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_failover_asked_of_a_replica_keeps_streams_whole(
    cluster: Cluster, start_bridge: StartBridge, publisher: Publisher
) -> None:
    def on_the_replica(service: BridgeService, victim: str, replica: RedisProcess) -> None:
        assert transport(service).placed[victim.encode()].addr == ("127.0.0.1", replica.port)

    await survived(
        cluster,
        start_bridge,
        publisher,
        "CLUSTER FAILOVER",
        "manual",
        1,
        lambda master, replica: replica.command("CLUSTER", "FAILOVER"),
        on_the_replica,
    )


@pytest_twisted.ensureDeferred
async def test_a_master_killed_its_replica_takes_over(
    cluster: Cluster, start_bridge: StartBridge, publisher: Publisher
) -> None:
    def replica_owns_it(service: BridgeService, victim: str, replica: RedisProcess) -> None:
        assert cluster.owner(key_slot(victim.encode())).port == replica.port

    await survived(
        cluster,
        start_bridge,
        publisher,
        "master killed",
        "killed",
        2,
        lambda master, replica: master.kill(),
        replica_owns_it,
    )


@pytest_twisted.ensureDeferred
async def test_a_shard_with_no_node_left_is_clusterdown_then_back(
    cluster: Cluster, start_bridge: StartBridge, publisher: Publisher
) -> None:
    service, port = await start_bridge(cluster.address)
    cluster.wait_ok()
    channels = spread(cluster, "down", per_master=1)
    clients = await open_streams(port, channels)
    await until(lambda: service.hub.not_ready() is None, what="subscribed")
    await flowing(publisher, clients, "before")
    victim = channels[0]
    master = cluster.owner(key_slot(victim.encode()))
    shard = [master, *cluster.replicas_of(master)]
    topology = transport(service).topology
    for node in shard:
        node.kill()
    await until(lambda: service.hub.not_ready() is not None, what="not ready")
    # The other masters refuse writes with -CLUSTERDOWN once they count the shard as failed (sharded
    # pub/sub itself goes on: cluster-allow-pubsubshard-when-down), so nothing can be published.
    await until(lambda: topology.state == "fail", timeout=15, what="cluster_state:fail seen")
    other = cluster.owner(key_slot(channels[1].encode()))
    await until(lambda: b"cluster_state:fail" in other.command("CLUSTER", "INFO"), what="fail here too")
    with pytest.raises(RespError, match="CLUSTERDOWN"):
        other.command("XADD", f"ssebridge:{{{channels[1]}}}:h", "*", "d", "x")
    reads = topology.reads
    await sleep(3.0)
    assert topology.reads - reads <= 10, "map reads back off (at most about one a second)"
    assert not any(c.closed.called for c in clients.values()), "streams stay open"
    assert service.hub.not_ready() is not None
    for node in shard:
        await deferToThread(node.start)
    await deferToThread(cluster.wait_ok)
    await until(lambda: service.hub.not_ready() is None, timeout=15, what="ready again")
    await flowing(publisher, clients, "after")
    for client in clients.values():
        await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_seed_nodes_down_at_start_the_bridge_waits(start_bridge: StartBridge) -> None:
    ports = [cluster_port() for _ in range(3)]
    service, port = await start_bridge("cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports))
    await sleep(1.0)
    assert service.hub.not_ready() == "Redis is not connected"
    late = Cluster(masters=3)
    try:
        await deferToThread(late.start, 20.0, ports)
        await until(lambda: service.hub.not_ready() is None, timeout=15, what="ready once the cluster is up")
        publisher = publisher_for(late.address)
        clients = await open_streams(port, spread(late, "late", per_master=1))
        await flowing(publisher, clients, "hello")
        for client in clients.values():
            await client.disconnect()
        publisher._redis.close()
    finally:
        await deferToThread(late.cleanup)
