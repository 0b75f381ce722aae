"""A Redis Cluster's slot map, kept current: which master serves each of the 16384 slots.

``Topology`` reads the map with ``CLUSTER SLOTS`` (and ``CLUSTER INFO`` for ``cluster_state``) on a
short-lived connection (``ssebridge.redis.oneshot``) to any node that answers: known masters first,
then the seeds, then replicas. It is read again on request (a ``-MOVED``, a lost node, a pushed
``sunsubscribe``), every ``REFRESH_INTERVAL`` seconds while all is well, and with a bounded, jittered
backoff while something is wrong; its readers (the transport, the history, the Twisted publisher) are
told of each new map. ``parse_redirect`` reads ``-MOVED``/``-ASK`` errors. One ``Topology`` per
address and reactor is shared (``shared_topology``).
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssebridge.address import RedisServer
from ssebridge.redis.oneshot import ask, auth_commands
from ssebridge.redis.slots import SLOTS

__all__ = [
    "ASK_TIMEOUT",
    "MAX_REDIRECTS",
    "REFRESH_INTERVAL",
    "REFRESH_RETRY_INITIAL",
    "REFRESH_RETRY_MAX",
    "TRANSIENT",
    "Addr",
    "Redirect",
    "SlotMap",
    "Topology",
    "TopologyUnavailable",
    "default_reactor",
    "jitter",
    "parse_redirect",
    "shared_topology",
]

log = Logger()

#: A node: (host, port).
Addr = tuple[str, int]

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


def jitter(delay: float) -> float:
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


def default_reactor(reactor: IReactorTime | None) -> IReactorTime:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = cast(IReactorTime, default_reactor)
    return reactor
