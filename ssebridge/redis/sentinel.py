"""Reaching a Sentinel-managed master: ask the sentinels where it is at every connect, follow its moves.

``SentinelEndpoint`` is the client endpoint ``endpoint_for`` gives for a ``sentinel://`` address. Its
``connect()`` asks the sentinels in turn (``SENTINEL MASTER``, after ``AUTH`` when the address gives
the sentinels' own credentials, each with a deadline; a sentinel that sees the master down is passed
over for one that names a master it sees up) and then connects to the master they name.
txredisapi's reconnect loop calls ``connect()`` at every attempt, so every reconnect asks again: a
failover is a reconnect to another address, after which the transport resubscribes and the hub
catches up from history.

The handshake checks ``ROLE`` on each new connection (``ssebridge.redis.handshake``): a sentinel in a
minority partition may still name a demoted master, and a replica would accept SUBSCRIBE and reads but
refuse writes, so a connection to a non-master is dropped and the sentinels asked again (with the
factory's backoff). A watcher subscribes to ``+switch-master`` on one sentinel at a time: when the
master moves, connections to the old address are closed at once instead of waiting for Redis or the
health check to drop them, and a connect attempt waiting on a dead master's address retries at once.
The watcher PINGs its sentinel and moves on to the next one after ``WATCH_HEALTH_TIMEOUT`` seconds of
silence (a frozen sentinel keeps its socket open and says nothing); on each (re)connect it also asks
that sentinel where the master is, since a switch announced while it was away is not announced again.

Errors (no sentinel reachable, a master name the sentinels do not know, sentinels refusing AUTH) are
logged once per kind in a row; the factory retries with its bounded, jittered backoff, and readiness
says not ready meanwhile (the transport is not connected).
"""

from __future__ import annotations

import random
import weakref
from typing import Any

import hiredis
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError as DeadlinePassed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ssebridge.address import RedisServer
from ssebridge.redis.oneshot import ask, auth_commands
from ssebridge.redis.resp import encode_command

__all__ = [
    "DISCOVERY_TIMEOUT",
    "SWITCH_WAIT",
    "WATCH_HEALTH_INTERVAL",
    "WATCH_HEALTH_TIMEOUT",
    "SentinelEndpoint",
    "SentinelError",
    "UnknownMaster",
    "ask_sentinel",
    "discover_master",
]

log = Logger()

#: Seconds one sentinel has to answer (connection included) before the next one is asked.
DISCOVERY_TIMEOUT = 1.0
#: Seconds to connect to the master the sentinels named.
CONNECT_TIMEOUT = 3
#: Seconds a connect attempt that found the named master unreachable waits for ``+switch-master``.
#: The master most likely has just died and the sentinels have not failed over yet; the switch
#: arriving while the attempt waits is the earliest moment the new master can be reached.
SWITCH_WAIT = 2.0
# The watcher's reconnects to the sentinels: 0.5 s doubling to 5 s, jittered.
_WATCH_INITIAL = 0.5
_WATCH_MAX = 5.0
#: Seconds between the watcher's PINGs, and of its sentinel's silence after which it moves on.
WATCH_HEALTH_INTERVAL = 1.0
WATCH_HEALTH_TIMEOUT = 3.0

Address = tuple[str, int]


class SentinelError(Exception):
    """The sentinels gave no usable master address (the message says why)."""


class UnknownMaster(SentinelError):
    """A sentinel answered, and knows no master by that name: most likely a misconfigured name."""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def ask_sentinel(
    reactor: Any, node: Address, server: RedisServer, timeout: float = DISCOVERY_TIMEOUT
) -> tuple[Address, bool]:
    """The master's address according to the sentinel at ``node``, and whether that sentinel sees it
    down (``s_down``/``o_down``: a failover is likely under way, another sentinel may know better);
    raises ``SentinelError`` (or ``UnknownMaster``) when it gives none, within ``timeout`` seconds.

    ``SENTINEL MASTER`` rather than ``get-master-addr-by-name``: its flags say whether the address is
    that of a master the sentinel itself sees down."""
    commands = auth_commands(server.sentinel_username, server.sentinel_password)
    commands.append(("SENTINEL", "MASTER", server.master))
    try:
        replies = await ask(reactor, node, commands, timeout)
    except DeadlinePassed:
        raise SentinelError(f"no answer within {timeout:g}s") from None
    except (ConnectError, ConnectionError) as e:
        raise SentinelError(str(e) or type(e).__name__) from None
    for reply in replies[:-1]:
        if isinstance(reply, Exception):
            raise SentinelError(f"AUTH refused: {reply}")
    answer = replies[-1]
    if isinstance(answer, Exception):
        if "no such master" in str(answer).lower():
            raise UnknownMaster(f"no master named {server.master!r}")
        raise SentinelError(f"SENTINEL refused: {answer}")
    if not isinstance(answer, list):
        raise SentinelError(f"unexpected answer {answer!r:.80}")
    fields = {_text(answer[i]): _text(answer[i + 1]) for i in range(0, len(answer) - 1, 2)}
    host, port = fields.get("ip", ""), fields.get("port", "")
    if not host or not port.isdigit():
        raise SentinelError(f"unexpected answer {answer!r:.80}")
    flags = set(fields.get("flags", "").split(","))
    return (host, int(port)), bool(flags & {"s_down", "o_down"})


async def discover_master(
    reactor: Any, server: RedisServer, nodes: list[Address] | None = None, timeout: float = DISCOVERY_TIMEOUT
) -> Address:
    """Ask the sentinels in turn; the first address of a master its sentinel sees up wins (that sentinel
    moves to the front of ``nodes``, when given, so that the next discovery asks it first). When every
    sentinel that answers sees the master down, the first address given: a failover is under way, and
    the connect attempt finds out."""
    order = nodes if nodes is not None else list(server.nodes)
    errors: list[str] = []
    unknown = 0
    down: Address | None = None
    for node in list(order):
        try:
            address, is_down = await ask_sentinel(reactor, node, server, timeout)
        except UnknownMaster:
            unknown += 1
            errors.append(f"{node[0]}:{node[1]}: unknown master")
            continue
        except SentinelError as e:
            errors.append(f"{node[0]}:{node[1]}: {e}")
            continue
        if is_down:
            down = down or address
            continue
        if nodes is not None and order[0] != node:
            order.remove(node)
            order.insert(0, node)
        return address
    if down is not None:
        return down
    if unknown:
        # Some sentinels answered and none knows the name: say it plainly, it is a config error.
        raise UnknownMaster(
            f"the sentinels know no master named {server.master!r} (misconfigured master name?): "
            + "; ".join(errors)
        )
    raise SentinelError("no sentinel gave the master's address: " + "; ".join(errors))


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """Connects to the master the sentinels name at each ``connect()``; follows ``+switch-master``.

    ``master`` is the address of the last connection made, ``discoveries`` counts the sentinels' answers
    asked for (how often a reconnect loop asked: a test of the backoff reads it). ``close()`` stops the
    watcher; the owner of the factory calls it when it stops.
    """

    def __init__(self, reactor: Any, server: RedisServer, watch: bool = True) -> None:
        self.reactor = reactor
        self.server = server
        self.name = server.describe()
        self.master: Address | None = None
        self.discoveries = 0
        self._nodes = list(server.nodes)
        self._last_error = ""
        self._connections: list[tuple[Address, Any]] = []
        self._switch_waiters: list[Deferred[Address | None]] = []
        #: ``+switch-master`` announcements seen, and the last one's address.
        self.switches = 0
        self._unreachable: Address | None = None
        self._switched_to: Address | None = None
        self._watch = watch
        self._watcher: ClientService | None = None
        #: The sentinel the watcher is connected to, if any.
        self.watching: Address | None = None
        # Connections closed because the sentinels announced a new master, by transport (what
        # ``connect()`` returns is a ClientService proxy of the protocol; both share the transport).
        self._moved_away: weakref.WeakKeyDictionary[Any, Address] = weakref.WeakKeyDictionary()
        self._closed = False

    # IStreamClientEndpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if self._watch and self._watcher is None and not self._closed:
            self._start_watcher()
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        switches = self.switches
        address = await self._discover()
        try:
            protocol = await self._dial(address, factory)
        except ConnectError as e:
            if self.switches > switches and self._switched_to not in (None, address):
                # A switch was announced while this attempt asked: the sentinel that answered had
                # not heard of it yet. ROLE, in the handshake, checks the announced address.
                assert self._switched_to is not None
                return await self._dial(self._switched_to, factory)
            if self._watcher is None:
                raise
            # The master the sentinels name is unreachable: most likely it died and they have not
            # failed over yet. The switch, if it comes while we wait, names the new master.
            if address != self._unreachable:
                # Once per address in a row: a long failover would otherwise log at every attempt.
                self._unreachable = address
                log.info(
                    "redis {server}: master {master} unreachable ({error}); waiting for a failover",
                    server=self.name,
                    master=_host_port(address),
                    error=str(e) or type(e).__name__,
                )
            moved = await self._next_switch(SWITCH_WAIT)
            if moved is None:
                raise
            address = moved
            protocol = await self._dial(address, factory)
        return protocol

    async def _discover(self) -> Address:
        self.discoveries += 1
        try:
            address = await discover_master(self.reactor, self.server, self._nodes)
        except SentinelError as e:
            message = str(e)
            # Once per kind of error in a row: a wrong name would otherwise log at every retry.
            kind = type(e).__name__
            if kind != self._last_error:
                self._last_error = kind
                log.error(
                    "redis {server}: {error}; asking again with backoff (not ready meanwhile)",
                    server=self.name,
                    error=message,
                    cause="sentinel-unknown-master" if isinstance(e, UnknownMaster) else "sentinel",
                )
            raise
        if self._last_error:
            log.info("redis {server}: the sentinels answer again", server=self.name)
            self._last_error = ""
        if address != self.master:
            log.info(
                "redis {server}: the sentinels name {master} as master {name}",
                server=self.name,
                master=_host_port(address),
                name=self.server.master,
            )
        return address

    async def _dial(self, address: Address, factory: IProtocolFactory) -> IProtocol:
        endpoint = HostnameEndpoint(self.reactor, address[0], address[1], timeout=CONNECT_TIMEOUT)
        protocol = await endpoint.connect(factory)
        self.master = address
        self._unreachable = None
        self._connections = [(a, p) for a, p in self._connections if _alive(p)]
        self._connections.append((address, protocol))
        return protocol

    # Following the master

    def _next_switch(self, timeout: float) -> Deferred[Address | None]:
        waiter: Deferred[Address | None] = Deferred(lambda d: self._forget_waiter(d))
        self._switch_waiters.append(waiter)
        call = self.reactor.callLater(timeout, self._switch_timeout, waiter)
        waiter.addBoth(_cancel_call, call)
        return waiter

    def _forget_waiter(self, waiter: Deferred[Address | None]) -> None:
        if waiter in self._switch_waiters:
            self._switch_waiters.remove(waiter)

    def _switch_timeout(self, waiter: Deferred[Address | None]) -> None:
        self._forget_waiter(waiter)
        if not waiter.called:
            waiter.callback(None)

    def switched_away(self, protocol: Any) -> Address | None:
        """The new master's address if this endpoint closed ``protocol``'s connection because the
        sentinels announced a switch (its owner's log then says so, not "closed by the server")."""
        transport = getattr(protocol, "transport", None)
        return self._moved_away.get(transport) if transport is not None else None

    def master_moved(self, address: Address, missed: bool = False) -> None:
        """A sentinel announced that the master is now at ``address`` (``missed``: the watcher found it
        there on reconnecting, the announcement came while it was away): close connections elsewhere
        (their reconnect asks the sentinels again) and wake the attempts waiting for it."""
        log.warn(
            "redis {server}: the sentinels {how} master {name} at {master}; reconnecting there",
            server=self.name,
            how="name" if missed else "announced (+switch-master) a new",
            name=self.server.master,
            master=_host_port(address),
        )
        self.switches += 1
        self._switched_to = address
        stale = [p for a, p in self._connections if a != address and _alive(p)]
        self._connections = [(a, p) for a, p in self._connections if a == address and _alive(p)]
        for protocol in stale:
            self._moved_away[protocol.transport] = address
            protocol.transport.abortConnection()
        waiters, self._switch_waiters = self._switch_waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(address)

    def _start_watcher(self) -> None:
        factory = Factory.forProtocol(lambda: _SwitchWatcher(self))
        service = ClientService(
            _RotatingEndpoint(self.reactor, self._nodes),
            factory,
            retryPolicy=_watch_delay,
            clock=self.reactor,
        )
        self._watcher = service
        service.startService()

    def close(self) -> Deferred[None]:
        """Stop following the master (the owner's factory is stopping)."""
        self._closed = True
        waiters, self._switch_waiters = self._switch_waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return succeed(None)
        return watcher.stopService()


def _alive(protocol: Any) -> bool:
    transport = getattr(protocol, "transport", None)
    return transport is not None and bool(getattr(transport, "connected", False))


def _cancel_call(result: Any, call: Any) -> Any:
    if call.active():
        call.cancel()
    return result


def _host_port(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def _watch_delay(attempt: int) -> float:
    base = min(_WATCH_MAX, _WATCH_INITIAL * 2.0 ** min(attempt - 1, 16))
    return base * random.uniform(0.5, 1.0)


@implementer(IStreamClientEndpoint)
class _RotatingEndpoint:
    """Each connect goes to the next sentinel: a watcher whose sentinel died moves on to another."""

    def __init__(self, reactor: Any, nodes: list[Address]) -> None:
        self.reactor = reactor
        self.nodes = nodes
        self._next = 0
        self._last: Address | None = None

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        # Never the sentinel just left, when there is another: the discovery reorders ``nodes``, which
        # could otherwise bring the rotation back to a frozen one.
        candidates = [n for n in self.nodes if n != self._last] or self.nodes
        host, port = self._last = candidates[self._next % len(candidates)]
        self._next += 1
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=CONNECT_TIMEOUT)
        return endpoint.connect(protocolFactory)


class _SwitchWatcher(Protocol):
    """A subscriber to ``+switch-master`` on one sentinel, reporting moves of one master.

    On connecting it also asks where the master is (``SENTINEL MASTER``, before ``SUBSCRIBE``: a
    subscribed connection runs nothing else), and it PINGs: a sentinel silent for
    ``WATCH_HEALTH_TIMEOUT`` seconds is left for the next one."""

    def __init__(self, endpoint: SentinelEndpoint) -> None:
        self.endpoint = endpoint
        self._reader = hiredis.Reader()
        # What the replies before the subscription answer, in order.
        self._expected: list[str] = []
        self._last_seen = 0.0
        self._health: LoopingCall | None = None
        self._peer: Address | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        server = self.endpoint.server
        commands = auth_commands(server.sentinel_username, server.sentinel_password)
        self._expected = ["AUTH"] * len(commands) + ["SENTINEL", "SUBSCRIBE"]
        commands.append(("SENTINEL", "MASTER", server.master))
        commands.append(("SUBSCRIBE", "+switch-master"))
        self.transport.write(b"".join(encode_command(*c) for c in commands))
        peer = self.transport.getPeer()
        self._peer = self.endpoint.watching = (getattr(peer, "host", "?"), getattr(peer, "port", 0))
        reactor = self.endpoint.reactor
        self._last_seen = reactor.seconds()
        self._health = LoopingCall(self._check_health)
        self._health.clock = reactor
        self._health.start(WATCH_HEALTH_INTERVAL, now=False)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._health is not None and self._health.running:
            self._health.stop()
        self._health = None
        if self.endpoint.watching == self._peer:
            self.endpoint.watching = None

    def _check_health(self) -> None:
        assert self.transport is not None
        silent = self.endpoint.reactor.seconds() - self._last_seen
        if silent > WATCH_HEALTH_TIMEOUT:
            log.warn(
                "redis {server}: sentinel {sentinel} silent for {silent:.1f}s; watching for +switch-master "
                "through another sentinel",
                server=self.endpoint.name,
                sentinel=_host_port(self.endpoint.watching or ("?", 0)),
                silent=silent,
            )
            self.transport.abortConnection()  # type: ignore[attr-defined]
        elif silent >= WATCH_HEALTH_INTERVAL * 0.5:
            # In subscribe mode PING is answered with a ["pong", ""] message: any reply proves life.
            self.transport.write(encode_command("PING"))

    def dataReceived(self, data: bytes) -> None:
        self._reader.feed(data)
        self._last_seen = self.endpoint.reactor.seconds()
        while (reply := self._reader.gets()) is not False:
            expected = self._expected.pop(0) if self._expected else None
            if isinstance(reply, Exception):
                # AUTH refused (the discovery logs the same error) or the sentinel does not know the
                # master: this connection is useless.
                assert self.transport is not None
                self.transport.loseConnection()
                return
            if expected == "SENTINEL":
                self._named(reply)
            elif isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                self._switch(reply[2])

    def _named(self, reply: Any) -> None:
        """This sentinel's answer on (re)connecting: a master elsewhere than the connections' means a
        switch announced while the watcher was away (its sentinel frozen, say)."""
        if not isinstance(reply, list):
            return
        fields = {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
        host, port = fields.get("ip", ""), fields.get("port", "")
        flags = set(fields.get("flags", "").split(","))
        current = self.endpoint.master
        if not host or not port.isdigit() or flags & {"s_down", "o_down"} or current is None:
            return
        if (host, int(port)) != current:
            self.endpoint.master_moved((host, int(port)), missed=True)

    def _switch(self, payload: bytes) -> None:
        # "<name> <old ip> <old port> <new ip> <new port>"
        words = payload.split()
        if len(words) != 5 or _text(words[0]) != self.endpoint.server.master or not words[4].isdigit():
            return
        self.endpoint.master_moved((_text(words[3]), int(words[4])))


def _conforms(reactor: IReactorTime, server: RedisServer) -> IStreamClientEndpoint:
    return SentinelEndpoint(reactor, server)
