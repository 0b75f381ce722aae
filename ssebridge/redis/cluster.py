"""Redis Cluster: sharded pub/sub (``SSUBSCRIBE``) and history reads routed to each slot's master.

``cluster://host1:7000,host2:7001`` names seed nodes. ``Topology`` keeps the slot map, read with
``CLUSTER SLOTS`` (and ``CLUSTER INFO`` for ``cluster_state``) on a short-lived connection to any
node that answers: known masters first, then the seeds, then replicas. ``ClusterTransport`` keeps one
subscriber connection per master owning a slot it needs (a ``RedisTransport`` speaking ``SSUBSCRIBE``,
one channel per command: a command naming channels of several slots is refused with ``CROSSSLOT``),
and moves channels when the map changes:

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

import random
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

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
from ssebridge.redis.oneshot import ask, auth_commands
from ssebridge.redis.pubsub import RedisTransport
from ssebridge.redis.retries import Subscriptions
from ssebridge.redis.slots import SLOTS, key_slot

__all__ = [
    "NO_PATTERNS",
    "ClusterHistory",
    "ClusterTransport",
    "Redirect",
    "SlotMap",
    "Topology",
    "TopologyUnavailable",
    "parse_redirect",
    "shared_topology",
]

log = Logger()

#: A node: (host, port).
Addr = tuple[str, int]

#: Why a pattern cannot be subscribed on a cluster (config checks say the same at load time).
NO_PATTERNS = (
    "a Redis Cluster has no pattern subscriptions: sharded pub/sub (SSUBSCRIBE) takes channel names only"
)
#: Seconds between map reads while everything is fine (jittered down by up to half): picks up what
#: no connection reports. Redis 7.0 sends nothing to the subscribers of a master demoted by a manual
#: failover (``CLUSTER FAILOVER`` on its replica): its channels go quiet until the map is read again.
REFRESH_INTERVAL = 1.0
#: The backoff of map reads while something is wrong (a node unreachable, the cluster not ok).
REFRESH_RETRY_INITIAL = 0.1
REFRESH_RETRY_MAX = 1.0
#: Seconds one node may take to connect and answer a map read.
ASK_TIMEOUT = 1.0
#: Redirections and waits one history read follows before giving up.
MAX_REDIRECTS = 8
#: Errors after which a command may succeed as it is, a little later: the cluster is busy or settling.
TRANSIENT = ("ASK", "TRYAGAIN", "CLUSTERDOWN", "LOADING")


@dataclass(frozen=True, slots=True)
class Redirect:
    """A ``-MOVED`` or ``-ASK`` error: the slot and the node to ask."""

    kind: str
    slot: int
    node: Addr


def parse_redirect(error: str, default_host: str = "") -> Redirect | None:
    """``MOVED 3999 127.0.0.1:6381`` (or ``ASK ...``) as a ``Redirect``; ``None`` for other errors.

    Redis 7 may leave the host out (``MOVED 3999 :6381``) when the node's endpoint is unknown: it is
    then the node that answered (``default_host``).
    """
    words = error.split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    host = host.strip("[]") or default_host
    try:
        slot, number = int(words[1]), int(port)
    except ValueError:
        return None
    if not 0 <= slot < SLOTS or not 0 < number < 65536 or not host:
        return None
    return Redirect(words[0], slot, (host, number))


def _jitter(delay: float) -> float:
    # Down by up to half: bridges (and channels) that failed together do not retry in step.
    return delay * random.uniform(0.5, 1.0)


class SlotMap:
    """Which master serves each slot (``None``: no node does), and the masters' replicas."""

    __slots__ = ("owners", "replicas")

    def __init__(self, owners: list[Addr | None], replicas: Iterable[Addr] = ()) -> None:
        self.owners = owners
        self.replicas = tuple(replicas)

    @classmethod
    def from_slots(cls, reply: Any, default_host: str) -> SlotMap:
        """The map of a ``CLUSTER SLOTS`` reply (an empty host is the node that answered)."""
        owners: list[Addr | None] = [None] * SLOTS
        replicas: list[Addr] = []
        if not isinstance(reply, list):
            raise ValueError(f"CLUSTER SLOTS: unexpected reply {reply!r:.80}")
        for entry in reply:
            start, end, master, *others = entry
            owner = _node_of(master, default_host)
            for slot in range(int(start), int(end) + 1):
                owners[slot] = owner
            replicas.extend(_node_of(o, default_host) for o in others)
        return cls(owners, dict.fromkeys(replicas))

    @property
    def masters(self) -> set[Addr]:
        return {o for o in self.owners if o is not None}

    @property
    def covered(self) -> int:
        return sum(1 for o in self.owners if o is not None)

    def owner(self, slot: int) -> Addr | None:
        return self.owners[slot]

    def summary(self) -> str:
        """``127.0.0.1:7000 0-5460, ...``: what a log line shows of the map."""
        ranges: list[tuple[Addr | None, int, int]] = []
        for slot, owner in enumerate(self.owners):
            if ranges and ranges[-1][0] == owner and ranges[-1][2] == slot - 1:
                ranges[-1] = (owner, ranges[-1][1], slot)
            else:
                ranges.append((owner, slot, slot))
        parts = [
            f"{h}:{p} {a}-{b}" if a != b else f"{h}:{p} {a}"
            for (owner, a, b) in ranges
            if owner is not None
            for (h, p) in [owner]
        ]
        if len(parts) > 8:
            parts = [*parts[:8], f"... ({len(parts)} ranges)"]
        return ", ".join(parts)


def _node_of(entry: Any, default_host: str) -> Addr:
    host = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
    if host in ("", "?"):
        host = default_host
    return host, int(entry[1])


class TopologyUnavailable(Exception):
    """No node answered a map read."""


class Topology:
    """The slot map of one cluster, read again on request; its readers are told of each new map.

    Reads coalesce: a request while one is on its way is answered by the next read after it, so a
    burst of errors costs two reads, not one per error.
    """

    def __init__(self, server: RedisServer, reactor: IReactorTime) -> None:
        self.server = server
        self.reactor = reactor
        self.name = server.describe()
        self.map: SlotMap | None = None
        #: The last read reached a node (readiness needs it: a map read long ago proves nothing).
        self.reachable = False
        #: That node's ``cluster_state``: ``ok``, or why not (``fail``...).
        self.state = "unknown"
        self.listeners: list[Callable[[SlotMap], None]] = []
        self._reading: Deferred[SlotMap] | None = None
        self._cancelled = False
        self._again: list[Deferred[SlotMap]] = []
        self._last_error = ""
        self._last_summary = ""
        #: Map reads sent (each one connection to one node or more): what bounds the retries.
        self.reads = 0

    @property
    def ok(self) -> bool:
        return self.map is not None and self.reachable and self.state == "ok"

    def candidates(self) -> list[Addr]:
        """Nodes to ask, best first: the known masters (shuffled: spread the reads), seeds, replicas."""
        masters = list(self.map.masters) if self.map is not None else []
        random.shuffle(masters)
        replicas = list(self.map.replicas) if self.map is not None else []
        return list(dict.fromkeys([*masters, *self.server.nodes, *replicas]))

    def refresh(self) -> Deferred[SlotMap]:
        """A map read from a node after this call: the new map, or ``TopologyUnavailable``."""
        if self._reading is not None:
            waiter: Deferred[SlotMap] = Deferred(self._leave)
            self._again.append(waiter)
            return waiter
        self._cancelled = False
        reading = self._reading = Deferred.fromCoroutine(self._read())
        result: Deferred[SlotMap] = Deferred()
        reading.addBoth(self._read_done, result)
        return result

    def _leave(self, waiter: Deferred[SlotMap]) -> None:
        if waiter in self._again:
            self._again.remove(waiter)

    def _read_done(self, outcome: SlotMap | Failure, result: Deferred[SlotMap]) -> None:
        self._reading = None
        again, self._again = self._again, []
        if isinstance(outcome, Failure) and outcome.check(CancelledError):
            for waiter in again:
                waiter.errback(outcome)
            result.errback(outcome)
            return
        if again:
            # They asked while this read was on its way: what it read may predate their reason.
            chained = self.refresh()

            def answer(value: SlotMap | Failure) -> None:
                for waiter in again:
                    if waiter.called:
                        continue
                    if isinstance(value, Failure):
                        waiter.errback(value)
                    else:
                        waiter.callback(value)

            chained.addBoth(answer)
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    def cancel(self) -> None:
        """Stop a read on its way (the owner stops)."""
        if self._reading is not None:
            self._cancelled = True
            self._reading.cancel()

    async def _read(self) -> SlotMap:
        errors: list[str] = []
        commands = auth_commands(self.server.username, self.server.password)
        commands += [(b"CLUSTER", b"SLOTS"), (b"CLUSTER", b"INFO")]
        self.reads += 1
        for addr in self.candidates():
            try:
                replies = await ask(self.reactor, addr, commands, ASK_TIMEOUT)
                refused = next((r for r in replies if isinstance(r, Exception)), None)
                if refused is not None:
                    raise refused
                slots = SlotMap.from_slots(replies[-2], addr[0])
            except CancelledError:
                raise
            except Exception as e:
                if self._cancelled:
                    # Cancelling a connection attempt fails it with ConnectingCancelledError.
                    raise CancelledError() from None
                errors.append(f"{addr[0]}:{addr[1]}: {str(e) or type(e).__name__}")
                continue
            if not slots.covered:
                errors.append(f"{addr[0]}:{addr[1]}: serves no slot (not part of a cluster yet?)")
                continue
            self._install(slots, _cluster_state(replies[-1]), addr)
            return slots
        self.reachable = False
        message = "; ".join(errors) or "no node to ask"
        if message != self._last_error:
            self._last_error = message
            log.warn(
                "redis {server}: no node answered for the slot map ({errors}); retrying with backoff",
                server=self.name,
                errors=message,
            )
        raise TopologyUnavailable(f"redis {self.name}: no node answered for the slot map ({message})")

    def _install(self, slots: SlotMap, state: str, addr: Addr) -> None:
        self.map = slots
        self.reachable = True
        self._last_error = ""
        if state != self.state:
            if state == "ok":
                log.info("redis {server}: cluster_state ok", server=self.name)
            else:
                log.warn(
                    "redis {server}: cluster_state is {state} (as {node} sees it); not ready while it is",
                    server=self.name,
                    state=state,
                    node=f"{addr[0]}:{addr[1]}",
                )
            self.state = state
        summary = slots.summary()
        if summary != self._last_summary:
            self._last_summary = summary
            log.info(
                "redis {server}: slot map ({covered} of 16384 slots served): {summary}",
                server=self.name,
                covered=slots.covered,
                summary=summary,
            )
        for listener in list(self.listeners):
            listener(slots)

    def moved(self, redirect: Redirect) -> None:
        """A ``-MOVED``: correct the one slot now (a full read follows at its owner's request)."""
        if self.map is not None:
            self.map.owners[redirect.slot] = redirect.node


def _cluster_state(reply: Any) -> str:
    if isinstance(reply, bytes):
        for line in reply.splitlines():
            if line.startswith(b"cluster_state:"):
                return line.split(b":", 1)[1].strip().decode(errors="replace")
    return "unknown"


# One map per cluster address and reactor, shared by its transport and its history.
_topologies: weakref.WeakValueDictionary[tuple[int, RedisServer], Topology] = weakref.WeakValueDictionary()


def shared_topology(server: RedisServer, reactor: IReactorTime) -> Topology:
    """The ``Topology`` of ``server`` that this reactor's transport and history share."""
    key = (id(reactor), server)
    topology = _topologies.get(key)
    if topology is None:
        topology = _topologies[key] = Topology(server, reactor)
    return topology


def _default_reactor(reactor: IReactorTime | None) -> IReactorTime:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = cast(IReactorTime, default_reactor)
    return reactor


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
        self.reactor = _default_reactor(reactor)
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
            self.refresh_soon(_jitter(REFRESH_INTERVAL))

    def _refresh_failed(self, failure: Failure) -> None:
        if self._stopped or failure.check(CancelledError):
            return
        if not failure.check(TopologyUnavailable):
            log.failure("redis {server}: reading the slot map failed", failure, server=self.topology.name)
        self._failures += 1
        self.refresh_soon(self._backoff())

    def _backoff(self) -> float:
        return _jitter(min(REFRESH_RETRY_MAX, REFRESH_RETRY_INITIAL * 2.0 ** min(self._failures - 1, 16)))


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
        self.reactor = _default_reactor(reactor)
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
                    await deferLater(self.reactor, _jitter(0.05 * 2**attempt), lambda: None)
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
