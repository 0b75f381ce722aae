"""The Redis pub/sub transport: one txredisapi connection per Redis server, carrying every channel.

txredisapi does the connecting, AUTH/SELECT, TLS and reconnect-with-backoff. What it does not do, this
module adds: it resubscribes every live channel after a reconnect, sends one channel per SUBSCRIBE
(a multi-channel SUBSCRIBE desynchronises txredisapi's reply queue), keeps payloads as bytes, and
parses the subscriber's replies itself so that every message read in one ``dataReceived`` reaches the
hub as one batch per channel (one write per client for a burst, not one per message).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, cast

import txredisapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ssebridge.hub.channels import ChannelGroup, Hub
from ssebridge.redis.address import RedisServer

log = Logger()

_MESSAGE = b"message"
_SUBSCRIBE = b"subscribe"
_UNSUBSCRIBE = b"unsubscribe"
_PUBSUB_REPLIES = frozenset([b"subscribe", b"unsubscribe", b"psubscribe", b"punsubscribe"])
_PONG = b"pong"
#: PING's answer outside subscribe mode (the first PING of a connection, or none subscribed).
_PLAIN_PONG = b"PONG"
_PING_COMMAND = b"*1\r\n$4\r\nPING\r\n"

#: Seconds between liveness checks of a Redis connection, and of silence after which it is dead.
DEFAULT_HEALTH_INTERVAL = 1.0
DEFAULT_HEALTH_TIMEOUT = 3.0


def encode_command(*args: bytes) -> bytes:
    """A RESP array of bulk strings: arguments are length-prefixed, never spliced into the command."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def endpoint_for(reactor: Any, server: RedisServer) -> IStreamClientEndpoint:
    """The Twisted client endpoint that reaches ``server``."""
    if server.kind == "unix":
        return UNIXClientEndpoint(reactor, server.path)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, server.host, server.port)
    if server.kind == "tls":
        endpoint = wrapClientTLS(optionsForClientTLS(server.host), endpoint)
    return endpoint


class _SubscriberProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """txredisapi's subscriber, with a reply loop that batches messages and tracks subscriptions."""

    factory: _Factory

    def connectionMade(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._handshake())

    async def _handshake(self) -> None:
        """AUTH and SELECT, then the channels: txredisapi's own ``connectionMade``, made to retry.

        txredisapi stops reconnecting for good when AUTH or SELECT fails for any reason, a connection
        lost midway included, and waits for their answers without a deadline (a frozen Redis). Here a
        failure drops this connection and the pool tries again with its backoff.
        """
        owner = self.factory.owner
        try:
            for command, args in (("auth", (self.password, self.username)), ("select", (self.dbid,))):
                if args[0] is None:
                    continue
                pending = cast(Deferred[Any], getattr(self, command)(*args))
                response = await pending.addTimeout(owner.health_timeout, owner.reactor)
                if isinstance(response, Exception):
                    raise response
        except Exception as e:
            owner.handshake_failed(e)
            self.transport.abortConnection()
            return
        self.connected = 1
        self._ready = True
        # txredisapi's getConnection() callers wait here (its base class keeps the list).
        waiting: list[Deferred[Any]] = getattr(self, "_waiting_for_connect", [])
        setattr(self, "_waiting_for_connect", [])  # noqa: B010 - an untyped base class attribute
        for d in waiting:
            d.callback(self)
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
        batch: dict[bytes, list[bytes]] | None = None
        while True:
            reply = reader.gets()
            if reply is False:
                break
            if type(reply) is list and len(reply) == 3 and reply[0] == _MESSAGE:
                if batch is None:
                    batch = {}
                messages = batch.get(reply[1])
                if messages is None:
                    batch[reply[1]] = [reply[2]]
                else:
                    messages.append(reply[2])
                continue
            # Anything else is ordered against the messages around it: deliver what came before first.
            if batch is not None:
                owner.deliver(batch)
                batch = None
            if type(reply) is list and len(reply) == 3 and reply[0] in _PUBSUB_REPLIES:
                # Our own SUBSCRIBE/UNSUBSCRIBE confirmations: sent raw, so no Deferred waits for them.
                if reply[0] == _SUBSCRIBE:
                    owner.subscribed(reply[1])
                continue
            if (type(reply) is list and len(reply) == 2 and reply[0] == _PONG) or reply == _PLAIN_PONG:
                # Our own PINGs: receiving anything was the point. Nothing waits for them in
                # txredisapi's reply queue, where they would pile up.
                continue
            # AUTH and SELECT replies go to txredisapi's queue, which has Deferreds waiting.
            self.replyReceived(reply)
        if batch is not None:
            owner.deliver(batch)


class _Factory(txredisapi.RedisFactory):  # type: ignore[misc]
    protocol = _SubscriberProtocol
    # Reconnect quickly: it is one connection per Redis server, not a storm, and every client of the
    # server waits on it.
    initialDelay = 0.1
    factor = 2.0
    maxDelay = 1.0
    jitter = 0.2

    owner: RedisTransport


class RedisTransport:
    """Subscriptions to one Redis server, kept alive across disconnects.

    ``wanted`` is the set of channels the hub wants; after every (re)connect each is subscribed again,
    so a Redis restart costs the clients only the messages published while it was away.
    """

    def __init__(
        self,
        server: RedisServer,
        group: ChannelGroup,
        reactor: IReactorTime | None = None,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = cast(IReactorTime, default_reactor)
        self.server = server
        self.group = group
        self.reactor = reactor
        self.wanted: set[bytes] = set()
        # SUBSCRIBEs sent and not yet confirmed, per channel: a channel is confirmed to the hub only when
        # its last one is, so a confirmation that belongs to an older SUBSCRIBE (one followed by an
        # UNSUBSCRIBE and a new SUBSCRIBE) never starts a stream early.
        self._inflight: dict[bytes, int] = {}
        self.protocol: _SubscriberProtocol | None = None
        #: Whether Redis has sent anything on the current connection (see ``connected``).
        self.answered = False
        self._last_handshake_error = ""
        self.connects = 0
        self.last_seen = 0.0
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self._health: LoopingCall | None = None
        self._stopped = False
        factory = _Factory(
            None,
            server.db,
            1,
            isLazy=True,
            charset=None,
            password=server.password,
            convertNumbers=False,
            username=server.username,
        )
        factory.owner = self
        self._factory = factory
        factory.startConnecting(endpoint_for(reactor, server))
        log.info("redis {server}: connecting", server=server.describe())

    @property
    def connected(self) -> bool:
        """Up: connected, and Redis has answered on this connection.

        A stopped (SIGSTOP) Redis still completes TCP handshakes from its kernel's listen queue; a
        connection it has not answered on proves nothing, so readiness and the metrics wait for a reply.
        """
        return self.protocol is not None and self.answered

    # The hub's requests.

    def subscribe(self, channel: bytes) -> None:
        self.wanted.add(channel)
        if self.protocol is not None:
            self._inflight[channel] = self._inflight.get(channel, 0) + 1
            self.protocol.transport.write(encode_command(b"SUBSCRIBE", channel))

    def unsubscribe(self, channel: bytes) -> None:
        self.wanted.discard(channel)
        if self.protocol is not None:
            self.protocol.transport.write(encode_command(b"UNSUBSCRIBE", channel))

    def stop(self) -> Deferred[None]:
        self._stopped = True
        self._stop_health()
        d = self._factory.disconnect()
        return cast(Deferred[None], d.addCallback(lambda _: None)) if d is not None else succeed(None)

    # The connection's reports.

    def connection_ready(self, protocol: _SubscriberProtocol) -> None:
        self.protocol = protocol
        self._last_handshake_error = ""
        # Up once Redis answers on this connection: the PING asks it to at once.
        self.answered = False
        self.last_seen = self.reactor.seconds()
        protocol.transport.write(_PING_COMMAND)
        if self.health_interval > 0:
            self._health = LoopingCall(self._check_health)
            self._health.clock = self.reactor
            self._health.start(self.health_interval, now=False)
        log.info(
            "redis {server}: connected, subscribing {count} channels",
            server=self.server.describe(),
            count=len(self.wanted),
        )
        self._inflight = dict.fromkeys(self.wanted, 1)
        if self.wanted:
            # One channel per command, all in one write.
            protocol.transport.write(b"".join(encode_command(b"SUBSCRIBE", ch) for ch in self.wanted))

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
        self.group.stats.redis_connects += 1

    def connection_lost(self, protocol: _SubscriberProtocol, why: Any) -> None:
        if self.protocol is protocol:
            self.protocol = None
            self.answered = False
            self._stop_health()
            self.group.stats.redis_disconnects += 1
            self.group.disconnected()
            if not self._stopped:
                log.warn(
                    "redis {server}: connection lost ({why}); reconnecting",
                    server=self.server.describe(),
                    why=why.getErrorMessage() if hasattr(why, "getErrorMessage") else why,
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
            protocol.transport.abortConnection()
            return
        if silent >= self.health_interval * 0.5:
            protocol.transport.write(_PING_COMMAND)

    def subscribed(self, channel: bytes) -> None:
        left = self._inflight.get(channel, 0) - 1
        if left > 0:
            self._inflight[channel] = left
            return
        self._inflight.pop(channel, None)
        # A confirmation for a channel nobody wants any longer is followed by our UNSUBSCRIBE.
        if channel in self.wanted:
            self.group.subscribed(channel)

    def deliver(self, batch: dict[bytes, list[bytes]]) -> None:
        self.group.deliver(batch)


def redis_transport_factory(reactor: IReactorTime | None = None) -> Any:
    """A ``TransportFactory`` for the hub: one ``RedisTransport`` per ``RedisServer`` key."""

    def make(key: Hashable, group: ChannelGroup) -> RedisTransport:
        assert isinstance(key, RedisServer)
        return RedisTransport(key, group, reactor)

    return make


def redis_hub(reactor: IReactorTime | None = None, **options: Any) -> Hub:
    """A ``Hub`` fed by Redis pub/sub: the usual way to make one when mounting streams yourself."""
    return Hub(redis_transport_factory(reactor), **options)
