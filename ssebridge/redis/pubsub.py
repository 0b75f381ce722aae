"""The Redis pub/sub transport: one txredisapi connection per Redis server, carrying every channel.

txredisapi does the connecting, TLS and reconnect-with-backoff. What it does not do, this module adds:
AUTH/SELECT that retry instead of giving up, resubscribing every live channel and pattern after a
reconnect, one channel per SUBSCRIBE and one pattern per PSUBSCRIBE (a multi-name command
desynchronises replies), payloads kept as bytes, a
health check that drops a silent connection, and a reply loop of its own (``ssebridge.redis.replies``)
that batches messages and matches every reply to its command: a refused SUBSCRIBE or PSUBSCRIBE
(``NOAUTH``, ``NOPERM``) is logged, reported to the sink and retried with backoff. Pattern messages
reach the sink as ``deliver_patterns`` (pattern -> ``(channel, data)`` pairs).

After a connection the server closed, the next one asks the server why (``ssebridge.redis.closes``):
a server that did not restart and closed a subscriber most likely hit its pub/sub output buffer limit.
A connection closed because the sentinels announced a new master is logged as that, and is no
server's close.

Implements ``ssebridge.interfaces.Transport``; reports only through a ``TransportSink``.
"""

from __future__ import annotations

from typing import Any, cast

import txredisapi
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssebridge.address import RedisServer
from ssebridge.interfaces import Transport, TransportSink
from ssebridge.redis.closes import CloseDiagnosis, pubsub_limit
from ssebridge.redis.handshake import (
    close_endpoint,
    endpoint_for,
    factory_for,
    handshake,
    peer_of,
    switched_away,
)
from ssebridge.redis.replies import ReplyLoop
from ssebridge.redis.retries import SubscribeRetries, Subscriptions

log = Logger()

#: Seconds between liveness checks of a Redis connection, and of silence after which it is dead.
DEFAULT_HEALTH_INTERVAL = 1.0
DEFAULT_HEALTH_TIMEOUT = 3.0


class _SubscriberProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """txredisapi's subscriber, handing its replies to the transport's reply loop once it is set up."""

    factory: _Factory
    #: Set by the transport when the connection is ready; until then replies are AUTH's and SELECT's.
    loop: ReplyLoop | None = None

    def connectionMade(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._handshake())

    async def _handshake(self) -> None:
        owner = self.factory.owner
        sentinel = owner.server.kind == "sentinel"
        error = await handshake(self, owner.health_timeout, owner.reactor, master=sentinel)
        if error is not None:
            owner.handshake_failed(error)
            return
        owner.connection_ready(self)

    def connectionLost(self, why: Any) -> None:
        super().connectionLost(why)
        self.factory.owner.connection_lost(self, why)

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        reader = self._reader
        owner = self.factory.owner
        if data:
            reader.feed(data)
            owner.last_seen = owner.reactor.seconds()
            if not owner.answered and owner.protocol is self:
                owner.first_answer()
        while self.loop is None:
            # AUTH and SELECT replies go to txredisapi's queue, where their Deferreds wait. The last one
            # may make the connection ready (and set ``loop``) before the loop below runs.
            reply = reader.gets()
            if reply is False:
                return
            self.replyReceived(reply)
        self.loop.process(reader)


class _Factory(txredisapi.RedisFactory):  # type: ignore[misc]
    protocol = _SubscriberProtocol
    # One connection per server, reconnected for good: Twisted's "Starting factory" line at each
    # connection says nothing an operator needs.
    noisy = False
    # Reconnect quickly: it is one connection per Redis server, not a storm, and every client of the
    # server waits on it.
    initialDelay = 0.1
    factor = 2.0
    maxDelay = 1.0
    jitter = 0.2

    owner: RedisTransport


class RedisTransport:
    """Subscriptions to one Redis server, kept alive across disconnects and refusals.

    ``wanted`` is the set of channels the hub wants (``patterns.wanted`` the patterns); after every
    (re)connect each is subscribed again, so a Redis restart costs the clients only the messages
    published while it was away.
    """

    def __init__(
        self,
        server: RedisServer,
        sink: TransportSink,
        reactor: IReactorTime | None = None,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = cast(IReactorTime, default_reactor)
        self.server = server
        self.sink = sink
        self.reactor = reactor
        self.protocol: _SubscriberProtocol | None = None
        self._loop: ReplyLoop | None = None
        #: Whether Redis has sent anything on the current connection (see ``connected``).
        self.answered = False
        #: The error Redis answers PING with (``NOAUTH``...), while it does.
        self.ping_refused: str | None = None
        self._last_handshake_error = ""
        self.connects = 0
        self.last_seen = 0.0
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self._health: LoopingCall | None = None
        self._stopped = False
        #: Channels (SUBSCRIBE) and patterns (PSUBSCRIBE): each wanted, in flight, retried.
        self.channels = Subscriptions(
            reactor,
            server.describe(),
            b"SUBSCRIBE",
            b"UNSUBSCRIBE",
            self._send_if_up,
            sink.subscribed,
            sink.subscribe_failed,
        )
        self.patterns = Subscriptions(
            reactor,
            server.describe(),
            b"PSUBSCRIBE",
            b"PUNSUBSCRIBE",
            self._send_if_up,
            sink.psubscribed,
            sink.psubscribe_failed,
        )
        # Why the last connection ended, for the next one to explain.
        self._dropping = False
        self._closes = CloseDiagnosis(server.describe())
        # The address of the server the current connection is to, for the diagnosis.
        self._peer: str | None = None
        factory = factory_for(_Factory, server)
        factory.owner = self
        self._factory = factory
        self._endpoint = endpoint_for(reactor, server)
        factory.startConnecting(self._endpoint)
        log.info("redis {server}: connecting", server=server.describe())

    @property
    def connected(self) -> bool:
        """Up: connected, and Redis has answered on this connection, and not with an error to PING.

        A stopped (SIGSTOP) Redis still completes TCP handshakes from its kernel's listen queue; a
        connection it has not answered on proves nothing, so readiness and the metrics wait for a reply.
        """
        return self.protocol is not None and self.answered and self.ping_refused is None

    @property
    def wanted(self) -> set[bytes]:
        """The channels the hub wants."""
        return self.channels.wanted

    @property
    def retries(self) -> SubscribeRetries:
        """The channels' retries (``patterns.retries``: the patterns')."""
        return self.channels.retries

    def _send_if_up(self, *args: bytes) -> bool:
        if self.protocol is not None and self._loop is not None:
            self.protocol.transport.write(self._loop.command(*args))
            return True
        return False

    def _cancel_retries(self) -> None:
        self.channels.retries.cancel_all()
        self.patterns.retries.cancel_all()

    # Transport: the hub's requests.

    def subscribe(self, channel: bytes) -> None:
        self.channels.add(channel)

    def unsubscribe(self, channel: bytes) -> None:
        self.channels.remove(channel)

    def psubscribe(self, pattern: bytes) -> None:
        self.patterns.add(pattern)

    def punsubscribe(self, pattern: bytes) -> None:
        self.patterns.remove(pattern)

    def stop(self) -> Deferred[None]:
        self._stopped = True
        self._stop_health()
        self._cancel_retries()
        closed = close_endpoint(self._endpoint)
        d = self._factory.disconnect()
        if d is None:
            return closed
        return cast(Deferred[None], gatherResults([d, closed]).addCallback(lambda _: None))

    # The connection's reports.

    def connection_ready(self, protocol: _SubscriberProtocol) -> None:
        self.protocol = protocol
        self._peer = peer_of(protocol)
        loop = protocol.loop = self._loop = ReplyLoop(self)
        self._last_handshake_error = ""
        # Up once Redis answers on this connection: the PING asks it to at once.
        self.answered = False
        self.ping_refused = None
        self.last_seen = self.reactor.seconds()
        self._cancel_retries()
        # Before any SUBSCRIBE: INFO and CONFIG are refused on a connection in subscribe mode.
        out = [loop.command(b"PING"), loop.command(b"INFO", b"server")]
        if self._closes.closed_by_server:
            out.append(loop.command(b"CONFIG", b"GET", b"client-output-buffer-limit"))
        if self.health_interval > 0:
            self._health = LoopingCall(self._check_health)
            self._health.clock = self.reactor
            self._health.start(self.health_interval, now=False)
        log.info(
            "redis {server}: connected, subscribing {count} channels and {patterns} patterns",
            server=self.server.describe(),
            count=len(self.channels.wanted),
            patterns=len(self.patterns.wanted),
        )
        # One name per command, all in one write.
        out.extend(loop.command(*args) for args in self.channels.resend())
        out.extend(loop.command(*args) for args in self.patterns.resend())
        protocol.transport.write(b"".join(out))

    def handshake_failed(self, error: Exception) -> None:
        # Logged once per kind of error in a row: a wrong password would otherwise log every second.
        message = str(error) or type(error).__name__
        if message != self._last_handshake_error:
            self._last_handshake_error = message
            log.error(
                "redis {server}: AUTH/SELECT failed ({error}); retrying",
                server=self.server.describe(),
                error=message,
            )

    def first_answer(self) -> None:
        """Redis answered on the current connection: it is up."""
        self.answered = True
        self.connects += 1
        self.sink.connection_up()

    def connection_lost(self, protocol: _SubscriberProtocol, why: Any) -> None:
        if self.protocol is not protocol:
            return
        self.protocol = None
        self._loop = None
        self.answered = False
        self.ping_refused = None
        self._stop_health()
        self._cancel_retries()
        switched = switched_away(self._endpoint, protocol)
        # Not our health check, not a stop, not a failover: the server (or the network) closed it.
        by_server = self._closes.closed_by_server = not (self._dropping or self._stopped or switched)
        self._closes.clean = isinstance(why, Failure) and why.check(ConnectionDone) is not None
        self._dropping = False
        self.sink.connection_down()
        if self._stopped:
            return
        if switched is not None:
            log.warn(
                "redis {server}: connection to {old} dropped: the sentinels announced a new master at "
                "{master}; reconnecting there (the subscriptions follow, and each channel catches up "
                "from history)",
                server=self.server.describe(),
                old=self._peer,
                master=f"{switched[0]}:{switched[1]}",
                cause="sentinel-switch",
            )
            return
        log.warn(
            "redis {server}: connection lost ({why}){cause}; reconnecting",
            server=self.server.describe(),
            why=why.getErrorMessage() if hasattr(why, "getErrorMessage") else why,
            cause=", closed by the server or the network (the next connection asks the server why)"
            if by_server
            else "",
        )

    def _stop_health(self) -> None:
        if self._health is not None and self._health.running:
            self._health.stop()
        self._health = None

    def _check_health(self) -> None:
        """Cut a connection that has been silent too long; a sent PING alone proves nothing.

        A frozen Redis (or a half-open socket) keeps the TCP connection open and answers nothing, so
        liveness is judged by what arrives: any reply or message counts, and a PING makes one due.
        """
        protocol = self.protocol
        if protocol is None:
            return
        silent = self.reactor.seconds() - self.last_seen
        if silent > self.health_timeout:
            log.warn(
                "redis {server}: no reply for {silent:.1f}s; dropping the connection",
                server=self.server.describe(),
                silent=silent,
            )
            self._dropping = True
            protocol.transport.abortConnection()
            return
        if silent >= self.health_interval * 0.5 or self.ping_refused is not None:
            self._send_if_up(b"PING")

    # ReplyHandler: the reply loop's reports.

    def deliver(self, batch: dict[bytes, list[bytes]]) -> None:
        self.sink.deliver(batch)

    def deliver_patterns(self, batch: dict[bytes, list[tuple[bytes, bytes]]]) -> None:
        self.sink.deliver_patterns(batch)

    def replied(self, command: bytes, argument: bytes, reply: Any) -> None:
        if command == b"SUBSCRIBE":
            self.channels.answered(argument, None)
        elif command == b"PSUBSCRIBE":
            self.patterns.answered(argument, None)
        elif command == b"PING":
            if self.ping_refused is not None:
                log.info(
                    "redis {server}: {what}",
                    server=self.server.describe(),
                    what="loaded its dataset; ready"
                    if self.ping_refused.startswith("LOADING")
                    else "PING answered again",
                )
                self.ping_refused = None
        elif command == b"INFO":
            self._closes.info(reply, self._peer)
        elif command == b"CONFIG":
            self._closes.explain(pubsub_limit(reply))

    def refused(self, command: bytes, argument: bytes, error: str) -> None:
        if command == b"SUBSCRIBE":
            self.channels.answered(argument, error)
        elif command == b"PSUBSCRIBE":
            self.patterns.answered(argument, error)
        elif command == b"PING":
            if self.ping_refused != error and error.startswith("LOADING"):
                # A restart, or a replica just promoted: it answers once loaded, the health check asks.
                log.warn(
                    "redis {server}: loading its dataset ({error}); not ready until it has, asking every "
                    "{interval:g}s; subscriptions stay, and each channel's catch-up waits for the history",
                    server=self.server.describe(),
                    error=error,
                    interval=self.health_interval,
                    cause="loading",
                )
            elif self.ping_refused != error:
                log.error(
                    "redis {server}: PING refused ({error}); not ready while it is",
                    server=self.server.describe(),
                    error=error,
                )
            self.ping_refused = error
        elif command == b"INFO":
            self._closes.info(None, self._peer)
        elif command == b"CONFIG":
            self._closes.explain(None)
        else:
            log.debug("redis {server}: {command} refused: {error}", command=command, error=error)

    def unexpected(self, reply: Any) -> None:
        log.warn(
            "redis {server}: a reply no command waits for, dropped: {reply}",
            server=self.server.describe(),
            reply=repr(reply)[:200],
        )


def _conforms(transport: RedisTransport) -> Transport:
    return transport
