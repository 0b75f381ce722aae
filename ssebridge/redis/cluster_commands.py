"""Commands on a Redis Cluster from inside a reactor, each sent to the master of its key's slot: what
``TwistedPublisher`` is given for a ``cluster://`` address (``twisted_publisher_for`` makes it).

``ClusterCommands`` has the two methods the publisher calls on a txredisapi client: ``eval`` goes to the
slot of its first key (``publish.lua`` has one: the channel's history stream, whose ``{C}`` hash tag the
``SPUBLISH`` channel shares, so the append and the announcement are one atomic step on one node), and
``execute_command`` to the slot of the argument after the command's name (``XREVRANGE key ...``).

It keeps its own slot map (``ssebridge.redis.topology.Topology``) and one command connection per master it
sent to, and on an error reply:

- ``-MOVED``: corrects the slot's entry, sends again at the new owner, and reads the whole map again in
  the background (other slots most likely moved too);
- ``-ASK`` (a slot half-way through a migration): sends ``ASKING`` and the command at the node named, on
  a short-lived connection of their own (the two must be adjacent on one connection);
- ``-TRYAGAIN``, ``-CLUSTERDOWN``, ``-LOADING``: sends again after a jittered, doubling backoff.

A master that cannot be reached (killed, not failed over yet) makes it read the map again and retry;
nothing was sent to it, so nothing can run twice. Every call answers within its deadline (``timeout``)
and after a bounded number of redirections and waits, or fails with ``ClusterCommandError`` saying why.
A command whose connection is lost once sent is not sent again (it may have run): that fails too.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.defer import TimeoutError as DeadlinePassed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ssebridge.address import RedisServer
from ssebridge.redis.commands import command_factory
from ssebridge.redis.oneshot import ask, auth_commands
from ssebridge.redis.slots import key_slot
from ssebridge.redis.topology import (
    ASK_TIMEOUT,
    MAX_REDIRECTS,
    TRANSIENT,
    Addr,
    SlotMap,
    Topology,
    TopologyUnavailable,
    parse_redirect,
)

__all__ = ["MAX_WAITS", "ClusterCommandError", "ClusterCommands"]

log = Logger()

#: Waits (``-TRYAGAIN``, ``-CLUSTERDOWN``, ``-LOADING``, a master unreachable) one call sits out before
#: it gives up, whatever its deadline says.
MAX_WAITS = 12
#: The first wait and the longest one (each doubles, jittered down by up to half).
WAIT_INITIAL = 0.05
WAIT_MAX = 1.0


class ClusterCommandError(Exception):
    """The cluster did not run a command: redirected or refused too often, no master reachable, no
    answer within the deadline, or the connection lost with the command in flight."""


def _key_bytes(key: Any) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    raise TypeError(f"a cluster command needs a key (str or bytes) to be routed, not {key!r:.40}")


class _Unreachable(Exception):
    """No connection to a master within the wait: nothing was sent."""


class ClusterCommands:
    """``eval`` and ``execute_command`` over a Redis Cluster (see the module's docstring)."""

    def __init__(
        self,
        server: RedisServer,
        reactor: IReactorTime,
        *,
        timeout: float = 5.0,
        connect_timeout: float = ASK_TIMEOUT,
    ) -> None:
        self.server = server
        self.reactor = reactor
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        # A map of its own: the bridge's transport in the same process stops (and cancels) its own.
        self.topology = Topology(server, reactor)
        self.topology.listeners.append(self._prune)
        self.nodes: dict[Addr, Any] = {}
        #: Commands in flight per node: a node is not closed under them (their answer is -MOVED).
        self._busy: dict[Addr, int] = {}
        self._closed = False
        self._refreshing = False

    # What TwistedPublisher calls.

    def eval(self, script: str | bytes, keys: list[Any], args: list[Any]) -> Deferred[Any]:
        if not keys:
            raise ValueError("a script run on a cluster needs a key to be routed by")
        raw = (b"EVAL", script, len(keys), *keys, *args)
        return self._run(keys[0], lambda protocol: protocol.eval(script, keys, args), raw)

    def execute_command(self, *args: Any) -> Deferred[Any]:
        if len(args) < 2:
            raise ValueError(f"a command run on a cluster needs a key to be routed by: {args!r:.60}")
        return self._run(args[1], lambda protocol: protocol.execute_command(*args), args)

    def close(self) -> Deferred[None]:
        """Close every node's connection and stop a map read on its way."""
        self._closed = True
        self.topology.cancel()
        nodes, self.nodes = list(self.nodes.values()), {}
        d = gatherResults([_disconnect(factory) for factory in nodes], consumeErrors=True)
        return d.addCallback(lambda _: None)

    # Sending.

    def _run(self, key: Any, call: Callable[[Any], Deferred[Any]], raw: tuple[Any, ...]) -> Deferred[Any]:
        slot = key_slot(_key_bytes(key))
        if self._closed:
            raise ClusterCommandError(f"redis {self.topology.name}: the publisher is closed")
        return Deferred.fromCoroutine(self._send(slot, call, raw))

    async def _send(self, slot: int, call: Callable[[Any], Deferred[Any]], raw: tuple[Any, ...]) -> Any:
        name = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        start = self.reactor.seconds()
        deadline = start + self.timeout
        redirects = waits = 0
        asking: Addr | None = None
        why = ""
        while True:
            if self._closed:
                raise ClusterCommandError(f"redis {self.topology.name}: the publisher is closed")
            remaining = deadline - self.reactor.seconds()
            if remaining <= 0:
                break
            try:
                if asking is not None:
                    node, asking = asking, None
                    reply = await self._asking(node, raw, remaining)
                else:
                    slots = await self._map(deadline)
                    owner = slots.owner(slot)
                    if owner is None:
                        raise _Unreachable(f"no master serves slot {slot}")
                    node = owner
                    reply = await self._at(owner, call, remaining)
            except _Unreachable as e:
                why = str(e)
                waits += 1
                if waits > MAX_WAITS:
                    break
                self._refresh()
                await self._wait(waits, deadline)
                continue
            if not isinstance(reply, Exception):
                return reply
            text = str(reply)
            redirect = parse_redirect(text, node[0])
            if redirect is not None:
                why = text
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    break
                if redirect.kind == "MOVED":
                    self.topology.moved(redirect)
                    self._refresh()
                else:
                    asking = redirect.node
                continue
            if text.startswith(TRANSIENT):
                why = text
                waits += 1
                if waits > MAX_WAITS:
                    break
                await self._wait(waits, deadline)
                continue
            raise reply  # the command's own error (a script error, WRONGTYPE...): the caller's to see
        spent = self.reactor.seconds() - start
        raise ClusterCommandError(
            f"redis {self.topology.name}: {name} on slot {slot} not run after {redirects} redirection(s), "
            f"{waits} wait(s) and {spent:.1f}s: {why or 'no answer within the deadline'}"
        )

    async def _map(self, deadline: float) -> SlotMap:
        slots = self.topology.map
        if slots is not None and self.topology.reachable:
            return slots
        reading = self.topology.refresh()
        reading.addTimeout(max(0.0, min(deadline - self.reactor.seconds(), 2 * ASK_TIMEOUT)), self.reactor)
        try:
            return await reading
        except (TopologyUnavailable, DeadlinePassed) as e:
            raise _Unreachable(str(e) or "no node answered for the slot map") from None

    async def _at(self, addr: Addr, call: Callable[[Any], Deferred[Any]], remaining: float) -> Any:
        factory = self._node(addr)
        waiting: Deferred[Any] = factory.getConnection(peek=True)
        # Cancelling the wait for a connection is safe: nothing was sent yet.
        waiting.addTimeout(min(self.connect_timeout, remaining), self.reactor)
        try:
            protocol = await waiting
        except (DeadlinePassed, CancelledError, txredisapi.ConnectionError):
            raise _Unreachable(f"{addr[0]}:{addr[1]} not reachable") from None
        timed_out = False

        def give_up() -> None:
            # Cancelling a sent command would leave its reply to the next one: drop the connection
            # instead (txredisapi fails what is in flight; the factory reconnects).
            nonlocal timed_out
            timed_out = True
            if protocol.transport is not None:
                protocol.transport.abortConnection()

        timer = self.reactor.callLater(max(0.0, remaining), give_up)
        self._busy[addr] = self._busy.get(addr, 0) + 1
        try:
            return await call(protocol)
        except txredisapi.ResponseError as e:
            return e
        except txredisapi.ConnectionError:
            what = "no answer in time" if timed_out else "connection lost"
            raise ClusterCommandError(
                f"redis {self.topology.name}: {addr[0]}:{addr[1]}: {what} with the command sent "
                "(it may have run; not sent again)"
            ) from None
        finally:
            if timer.active():
                timer.cancel()
            left = self._busy.pop(addr) - 1
            if left:
                self._busy[addr] = left

    async def _asking(self, addr: Addr, raw: tuple[Any, ...], remaining: float) -> Any:
        commands = auth_commands(self.server.username, self.server.password)
        commands += [(b"ASKING",), raw]
        try:
            replies = await ask(self.reactor, addr, commands, max(0.001, remaining))
        except Exception as e:
            # Refused, lost, timed out: the node is on its way out of the slot; the map says where next.
            raise _Unreachable(f"{addr[0]}:{addr[1]} (ASK): {e or type(e).__name__}") from None
        refused = next((r for r in replies if isinstance(r, Exception)), None)
        if refused is not None:
            # hiredis's error type: the caller sees txredisapi's, as from any other node.
            return txredisapi.ResponseError(str(refused))
        return replies[-1]

    async def _wait(self, waits: int, deadline: float) -> None:
        delay = min(WAIT_MAX, WAIT_INITIAL * 2.0 ** (waits - 1)) * random.uniform(0.5, 1.0)
        delay = min(delay, max(0.0, deadline - self.reactor.seconds()))
        await deferLater(self.reactor, delay, lambda: None)

    # Connections and the map.

    def _node(self, addr: Addr) -> Any:
        factory = self.nodes.get(addr)
        if factory is None:
            factory = command_factory(
                self.server.at(*addr), self.reactor, self.timeout, HostnameEndpoint(self.reactor, *addr)
            )
            self.nodes[addr] = factory
        return factory

    def _refresh(self) -> None:
        """Read the map again in the background (one read at a time)."""
        if self._refreshing or self._closed:
            return
        self._refreshing = True

        def done(_: Any) -> None:
            self._refreshing = False

        self.topology.refresh().addBoth(done)

    def _prune(self, slots: SlotMap) -> None:
        # A node no longer a master (demoted, removed, dead and replaced) gets no more commands: close
        # its connection rather than reconnect to it forever.
        masters = slots.masters
        for addr in [a for a in self.nodes if a not in masters and a not in self._busy]:
            _disconnect(self.nodes.pop(addr))


def _disconnect(factory: Any) -> Deferred[None]:
    d: Deferred[Any] = factory.disconnect()
    return d.addErrback(lambda _: None).addCallback(lambda _: None)
