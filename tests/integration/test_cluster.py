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
from twisted.internet import reactor

from ssebridge.config.model import load_config
from ssebridge.publish import Publisher
from ssebridge.publish.connect import publisher_for
from ssebridge.redis.cluster import ClusterTransport
from ssebridge.redis.slots import key_slot
from ssebridge.runtime.service import BridgeService
from ssebridge.testing import SSEClient, connect_sse, free_port
from tests.cluster_support import Cluster
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
    made = publisher_for(cluster.address, history=1000)
    yield made
    made._redis.close()


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
                    publisher.publish(channel, tag)
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
    cluster: Cluster, start_bridge: StartBridge, publisher: Publisher
) -> None:
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
