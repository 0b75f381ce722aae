"""Redis Cluster: sharded pub/sub (``SSUBSCRIBE``) and history reads routed to each slot's master.

``cluster://host1:7000,host2:7001`` names seed nodes; ``ssebridge.redis.topology`` keeps the slot
map. ``ClusterTransport`` keeps one subscriber connection per master owning a slot it needs (a
``RedisTransport`` speaking ``SSUBSCRIBE``, one channel per command: a command naming channels of
several slots is refused with ``CROSSSLOT``), and moves channels when the map changes:

- ``-MOVED slot host:port`` to an ``SSUBSCRIBE``: the slot's entry is corrected at once, the channel
  subscribed at its new owner, and the whole map read again (other slots moved too, most likely).
- an unsolicited ``sunsubscribe`` (the node gave the slot away at the end of a migration, or it was
  demoted by a failover): the channel is asked for again at the same node, whose ``-MOVED`` says where
  it went, and the map is read again.
- a node's connection lost: its channels are void; the map is read again, with a bounded, jittered
  backoff while any channel's node is unreachable or the cluster is not ``ok`` (a failover takes about
  the cluster's node timeout), and every second otherwise: a master demoted by ``CLUSTER FAILOVER``
  tells its subscribers nothing (Redis 7.0), so only the map shows that its channels moved.

After each of these the hub is told which subscriptions were lost (``TransportSink.subscriptions_lost``),
and when they are confirmed again each channel catches up from history, as after a reconnect: the
history stream and the envelope channel share the channel's slot (``{C}`` hash tag), hence its node.
Sharded pub/sub has no patterns: ``psubscribe`` is refused (``psubscribe_failed``) with the reason.

``ClusterHistory`` sends each read to its slot's master (one read is one channel's stream: one slot),
follows ``-MOVED`` (and waits out ``-ASK``, ``-TRYAGAIN``, ``-CLUSTERDOWN`` and ``-LOADING`` with a short
backoff) within its deadline. The transport and the history of one address share one ``Topology``.
The Twisted publisher's commands follow the same map and redirections with a ``Topology`` of their own
(``ssebridge.redis.cluster_commands``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults
from twisted.internet.defer import TimeoutError as DeadlinePassed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssebridge.address import RedisServer
from ssebridge.interfaces import History, HistoryUnavailable, Replay, Transport, TransportSink
from ssebridge.logs import printable
from ssebridge.publish.envelope import EventId, history_key
from ssebridge.redis.history import DEFAULT_TIMEOUT, RedisHistory
from ssebridge.redis.pubsub import RedisTransport
from ssebridge.redis.retries import Subscriptions
from ssebridge.redis.slots import key_slot
from ssebridge.redis.topology import (
    MAX_REDIRECTS,
    REFRESH_INTERVAL,
    REFRESH_RETRY_INITIAL,
    REFRESH_RETRY_MAX,
    TRANSIENT,
    Addr,
    Redirect,
    SlotMap,
    Topology,
    TopologyUnavailable,
    default_reactor,
    jitter,
    parse_redirect,
    shared_topology,
)

__all__ = ["NO_PATTERNS", "ClusterHistory", "ClusterTransport"]

log = Logger()

#: Why a pattern cannot be subscribed on a cluster (config checks say the same at load time).
NO_PATTERNS = (
    "a Redis Cluster has no pattern subscriptions: sharded pub/sub (SSUBSCRIBE) takes channel names only"
)
# --- subscriptions ---------------------------------------------------------------------------------


class _ShardedTransport(RedisTransport):
    """One master's subscriber connection: ``SSUBSCRIBE``/``SUNSUBSCRIBE``, ``smessage``, and the
    cluster's redirections handed to the ``ClusterTransport`` instead of being retried here."""

    def __init__(
        self, owner: ClusterTransport, node: _Node, server: RedisServer, sink: TransportSink
    ) -> None:
        self.owner = owner
        self.node = node
        super().__init__(server, sink, owner.reactor, owner.health_interval, owner.health_timeout)
        # Before any connection (connecting is asynchronous): the channels are sharded ones.
        self.channels = Subscriptions(
            self.reactor,
            server.describe(),
            b"SSUBSCRIBE",
            b"SUNSUBSCRIBE",
            self._send_if_up,
            sink.subscribed,
            sink.subscribe_failed,
        )

    def connection_ready(self, protocol: Any) -> None:
        super().connection_ready(protocol)
        if self._loop is not None:
            # Set before any reply can arrive: the SSUBSCRIBEs were only just written.
            self._loop.pushes = self._dropped

    def _dropped(self, channel: bytes) -> None:
        self.owner.dropped(self.node, channel)

    def replied(self, command: bytes, argument: bytes, reply: Any) -> None:
        if command == b"SSUBSCRIBE":
            self.channels.answered(argument, None)
        elif command != b"SUNSUBSCRIBE":
            super().replied(command, argument, reply)

    def refused(self, command: bytes, argument: bytes, error: str) -> None:
        if command == b"SUNSUBSCRIBE":
            # A node that no longer owns the slot answers -MOVED: there is nothing to undo there.
            return
        if command == b"SSUBSCRIBE":
            redirect = parse_redirect(error, self.node.addr[0])
            if redirect is not None and redirect.kind == "MOVED":
                channels = self.channels
                left = channels.inflight.get(argument, 0) - 1
                if left > 0:
                    channels.inflight[argument] = left
                    return
                channels.inflight.pop(argument, None)
                if argument in channels.wanted:
                    self.owner.moved(self.node, argument, redirect)
                return
            if error.startswith(TRANSIENT):
                self.owner.refresh_soon()
            self.channels.answered(argument, error)
            return
        super().refused(command, argument, error)


class _Node:
    """A master the transport subscribes at: its connection and the channels placed there."""

    __slots__ = ("addr", "channels", "transport")

    def __init__(self, addr: Addr) -> None:
        self.addr = addr
        self.channels: set[bytes] = set()
        self.transport: _ShardedTransport


class _NodeSink:
    """What a node's connection reports, passed on to the hub for the channels placed there."""

    def __init__(self, cluster: ClusterTransport, node: _Node) -> None:
        self.cluster = cluster
        self.node = node
        self._deliver = cluster.sink.deliver

    def deliver(self, batch: Mapping[bytes, list[bytes]]) -> None:
        self._deliver(batch)

    def connection_up(self) -> None:
        self.cluster.sink.connection_up()

    def connection_down(self) -> None:
        # Not the hub's ``connection_down``, which would void every channel of the cluster, where only
        # this node's are: ``node_down`` reports them lost with their connection.
        self.cluster.node_down(self.node)

    def subscriptions_lost(self, names: Iterable[bytes], *, disconnected: bool = False) -> None:
        self.cluster.lost(names, disconnected=disconnected)

    def subscribed(self, channel: bytes) -> None:
        if channel in self.node.channels:
            self.cluster.confirmed.add(channel)
            self.cluster.sink.subscribed(channel)

    def subscribe_failed(self, channel: bytes, error: str) -> None:
        if channel in self.node.channels:
            self.cluster.sink.subscribe_failed(channel, error)

    def psubscribed(self, pattern: bytes) -> None:
        pass

    def psubscribe_failed(self, pattern: bytes, error: str) -> None:
        pass

    def deliver_patterns(self, batch: Any) -> None:
        pass


class ClusterTransport:
    """Sharded pub/sub over a Redis Cluster (see the module's docstring); a ``Transport``."""

    def __init__(
        self,
        server: RedisServer,
        sink: TransportSink,
        reactor: IReactorTime | None = None,
        health_interval: float = 1.0,
        health_timeout: float = 3.0,
        topology: Topology | None = None,
    ) -> None:
        self.server = server
        self.sink = sink
        self.reactor = default_reactor(reactor)
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.topology = topology if topology is not None else shared_topology(server, self.reactor)
        self.topology.listeners.append(self._apply)
        self.wanted: set[bytes] = set()
        #: Channels the hub was told are confirmed (and not lost since).
        self.confirmed: set[bytes] = set()
        self.nodes: dict[Addr, _Node] = {}
        self.placed: dict[bytes, _Node] = {}
        self._refresh_call: IDelayedCall | None = None
        self._refresh_due = 0.0
        self._failures = 0
        self._stopped = False
        log.info("redis {server}: reading the slot map", server=self.topology.name)
        self.refresh_soon()

    # Transport

    @property
    def connected(self) -> bool:
        """Up: the map was read from a node that says ``cluster_state:ok``, every channel has a master,
        and every master holding channels has answered on its connection."""
        if not self.topology.ok or len(self.placed) != len(self.wanted):
            return False
        return all(node.transport.connected for node in self.nodes.values() if node.channels)

    def subscribe(self, channel: bytes) -> None:
        if channel in self.wanted:
            return
        self.wanted.add(channel)
        self._place(channel)

    def unsubscribe(self, channel: bytes) -> None:
        self.wanted.discard(channel)
        self.confirmed.discard(channel)
        node = self.placed.pop(channel, None)
        if node is not None:
            node.channels.discard(channel)
            node.transport.unsubscribe(channel)

    def psubscribe(self, pattern: bytes) -> None:
        self.sink.psubscribe_failed(pattern, NO_PATTERNS)

    def punsubscribe(self, pattern: bytes) -> None:
        pass

    def stop(self) -> Deferred[None]:
        self._stopped = True
        if self._apply in self.topology.listeners:
            self.topology.listeners.remove(self._apply)
        if self._refresh_call is not None and self._refresh_call.active():
            self._refresh_call.cancel()
        self._refresh_call = None
        self.topology.cancel()
        nodes, self.nodes = list(self.nodes.values()), {}
        d = gatherResults([n.transport.stop() for n in nodes], consumeErrors=True)
        return d.addCallback(lambda _: None)

    # Placing channels.

    def _node(self, addr: Addr) -> _Node:
        node = self.nodes.get(addr)
        if node is None:
            node = self.nodes[addr] = _Node(addr)
            node.transport = _ShardedTransport(self, node, self.server.at(*addr), _NodeSink(self, node))
        return node

    def _place(self, channel: bytes, owner: Addr | None = None) -> None:
        """Subscribe ``channel`` at ``owner`` (by default its slot's master in the map)."""
        if owner is None:
            slots = self.topology.map
            if slots is None:
                return  # placed when the map arrives
            owner = slots.owner(key_slot(channel))
            if owner is None:
                self.refresh_soon()
                return
        current = self.placed.get(channel)
        if current is not None:
            if current.addr == owner:
                return
            current.channels.discard(channel)
            current.transport.unsubscribe(channel)
            self.lost([channel])
        node = self._node(owner)
        self.placed[channel] = node
        node.channels.add(channel)
        node.transport.subscribe(channel)

    def _apply(self, slots: SlotMap) -> None:
        """A new map: move the channels whose slot changed hands; close masters no longer needed."""
        if self._stopped:
            return
        moved = 0
        for channel in list(self.wanted):
            owner = slots.owner(key_slot(channel))
            if owner is None:
                continue
            current = self.placed.get(channel)
            if current is None or current.addr != owner:
                moved += current is not None
                self._place(channel, owner)
        if moved:
            log.info(
                "redis {server}: {moved} channel(s) moved to their slots' new masters",
                server=self.topology.name,
                moved=moved,
            )
        masters = slots.masters
        for addr, node in list(self.nodes.items()):
            if addr not in masters and not node.channels:
                del self.nodes[addr]
                node.transport.stop()

    def lost(self, names: Iterable[bytes], *, disconnected: bool = False) -> None:
        """These channels' subscriptions are void (with a node's connection, when ``disconnected``): the
        hub waits for them to be confirmed again."""
        gone = [n for n in names if n in self.confirmed]
        self.confirmed.difference_update(gone)
        if gone or disconnected:
            self.sink.subscriptions_lost(gone, disconnected=disconnected)

    # The nodes' reports.

    def moved(self, node: _Node, channel: bytes, redirect: Redirect) -> None:
        self.topology.moved(redirect)
        log.info(
            "redis {server}: {channel} moved to {host}:{port} (slot {slot})",
            server=self.topology.name,
            channel=printable(channel),
            host=redirect.node[0],
            port=redirect.node[1],
            slot=redirect.slot,
        )
        self._place(channel, redirect.node)
        self.refresh_soon()

    def dropped(self, node: _Node, channel: bytes) -> None:
        """``node`` unsubscribed ``channel`` on its own: its slot went elsewhere."""
        if channel not in node.channels:
            return
        self.lost([channel])
        # Asking the same node again is the quickest way to learn where it went: its -MOVED says.
        node.transport.channels.add(channel)
        self.refresh_soon()

    def node_down(self, node: _Node) -> None:
        self.lost(node.channels, disconnected=True)
        if not self._stopped:
            self.refresh_soon()

    # Reading the map.

    def refresh_soon(self, delay: float = 0.0) -> None:
        """Read the map within ``delay`` seconds (sooner if already due)."""
        if self._stopped:
            return
        due = self.reactor.seconds() + delay
        call = self._refresh_call
        if call is not None and call.active():
            if self._refresh_due <= due:
                return
            call.cancel()
        self._refresh_due = due
        self._refresh_call = self.reactor.callLater(delay, self._refresh)

    def _refresh(self) -> None:
        self._refresh_call = None
        self.topology.refresh().addCallbacks(self._refreshed, self._refresh_failed)

    def _refreshed(self, slots: SlotMap) -> None:
        if self._stopped:
            return
        for channel in list(self.wanted):
            if channel not in self.placed:
                self._place(channel)
        troubled = not self.topology.ok or any(
            not node.transport.connected for node in self.nodes.values() if node.channels
        )
        if troubled:
            self._failures += 1
            self.refresh_soon(self._backoff())
        else:
            self._failures = 0
            self.refresh_soon(jitter(REFRESH_INTERVAL))

    def _refresh_failed(self, failure: Failure) -> None:
        if self._stopped or failure.check(CancelledError):
            return
        if not failure.check(TopologyUnavailable):
            log.failure("redis {server}: reading the slot map failed", failure, server=self.topology.name)
        self._failures += 1
        self.refresh_soon(self._backoff())

    def _backoff(self) -> float:
        return jitter(min(REFRESH_RETRY_MAX, REFRESH_RETRY_INITIAL * 2.0 ** min(self._failures - 1, 16)))


def _transport_conforms(transport: ClusterTransport) -> Transport:
    return transport


def _sink_conforms(sink: _NodeSink) -> TransportSink:
    return sink


# --- history ---------------------------------------------------------------------------------------


class ClusterHistory:
    """``History`` over a Redis Cluster: each read goes to its channel's slot's master."""

    def __init__(
        self,
        server: RedisServer,
        reactor: IReactorTime | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        topology: Topology | None = None,
    ) -> None:
        self.server = server
        self.reactor = default_reactor(reactor)
        self.timeout = timeout
        self.topology = topology if topology is not None else shared_topology(server, self.reactor)
        self.nodes: dict[Addr, RedisHistory] = {}
        self._stopped = False

    def read_after(self, channel: bytes, position: EventId | None, limit: int) -> Deferred[Replay]:
        if not isinstance(channel, bytes) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"bad read: channel {channel!r:.40} (bytes), limit {limit!r} (int >= 0)")
        if self._stopped:
            return fail(HistoryUnavailable(f"redis {self.topology.name}: history reader stopped"))
        d = Deferred.fromCoroutine(self._read(channel, position, limit))
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(self._unavailable)

    def current_id(self, channel: bytes) -> Deferred[EventId | None]:
        return self.read_after(channel, None, 0).addCallback(lambda replay: replay.last_id)

    def stop(self) -> Deferred[None]:
        self._stopped = True
        nodes, self.nodes = list(self.nodes.values()), {}
        d = gatherResults([n.stop() for n in nodes], consumeErrors=True)
        return d.addCallback(lambda _: None)

    def _unavailable(self, failure: Failure) -> Failure:
        if failure.check(HistoryUnavailable):
            return failure
        if failure.check(DeadlinePassed, TimeoutError):
            error = HistoryUnavailable(
                f"redis {self.topology.name}: no history answer within {self.timeout:g}s"
            )
        else:
            error = HistoryUnavailable(f"redis {self.topology.name}: {failure.getErrorMessage()}")
        error.__cause__ = failure.value
        return Failure(error)

    def _node(self, addr: Addr) -> RedisHistory:
        history = self.nodes.get(addr)
        if history is None:
            # Half the deadline per node: a dead master must leave time to ask its successor.
            history = self.nodes[addr] = RedisHistory(self.server.at(*addr), self.reactor, self.timeout / 2)
        return history

    async def _read(self, channel: bytes, position: EventId | None, limit: int) -> Replay:
        slot = key_slot(history_key(channel))
        last: Exception | None = None
        for attempt in range(MAX_REDIRECTS):
            slots = self.topology.map
            if slots is None or not self.topology.reachable:
                slots = await self.topology.refresh()
            owner = slots.owner(slot)
            if owner is None:
                raise HistoryUnavailable(f"redis {self.topology.name}: no master serves slot {slot}")
            try:
                return await self._node(owner).read_after(channel, position, limit)
            except HistoryUnavailable as e:
                last = e
                cause = e.__cause__
                text = str(cause) if isinstance(cause, txredisapi.ResponseError) else ""
                redirect = parse_redirect(text, owner[0])
                if redirect is not None and redirect.kind == "MOVED":
                    self.topology.moved(redirect)
                    continue
                if text.startswith(TRANSIENT):
                    # A slot being migrated (ASK), a cluster settling: the same read soon succeeds.
                    await deferLater(self.reactor, jitter(0.05 * 2**attempt), lambda: None)
                    continue
                if text:
                    raise
                # The node is unreachable or silent (a master killed, not failed over yet): ask the
                # cluster again; its owner may have changed.
                await self.topology.refresh()
        assert last is not None
        raise last


def _history_conforms(history: ClusterHistory) -> History:
    return history
