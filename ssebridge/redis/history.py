"""Reading channels' history (Redis Streams) for resume: ``RedisHistory``, the Redis ``History``.

One read is one ``EVALSHA`` of ``ssebridge.redis.streams.READ_SCRIPT`` (metadata and events taken
atomically; ``replay_from`` there says what the reply means).

It has a command connection of its own: the subscriber connection can run nothing but (un)subscribes.
Reads of the same (channel, position, limit) that wait together share one read of the server; a read
already sent is never shared with a later caller, whose replay must include what was published up to
its call (``ssebridge.interfaces.History``).

A server still loading its dataset (``-LOADING``: restarted, or a replica just promoted) refuses the
read; the read waits and asks again (0.1 s doubling to 1 s, jittered, every read waiting on one timer)
until its deadline, so a catch-up after a restart finds the history once it is loaded instead of
telling clients of a gap. One log line says so per loading, not one per channel.
"""

from __future__ import annotations

import random
from typing import Any, cast

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.defer import TimeoutError as DeadlinePassed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssebridge.address import RedisServer
from ssebridge.interfaces import History, HistoryUnavailable, Replay
from ssebridge.publish.envelope import EventId, history_key
from ssebridge.redis.handshake import close_endpoint, endpoint_for, factory_for, handshake, switched_away
from ssebridge.redis.streams import READ_SCRIPT, READ_SHA, read_arguments, replay_from

__all__ = ["DEFAULT_TIMEOUT", "HistoryUnavailable", "RedisHistory"]

log = Logger()

#: Seconds a read may take, from the call (waiting for a connection included) to the answer.
DEFAULT_TIMEOUT = 5.0
#: Seconds between asking a server that answers ``-LOADING`` again: doubling, jittered, bounded.
LOADING_RETRY_INITIAL = 0.1
LOADING_RETRY_MAX = 1.0

_Key = tuple[bytes, EventId | None, int]


class _Protocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """txredisapi's command protocol with a handshake that has a deadline and never stops the retries.

    txredisapi stops reconnecting for good when AUTH or SELECT fails for any reason (a connection lost
    midway included) and waits for their answers without a deadline (``RedisTransport`` has the same fix).
    """

    factory: _Factory

    def connectionMade(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._handshake())

    async def _handshake(self) -> None:
        owner = self.factory.owner
        sentinel = owner.server.kind == "sentinel"
        error = await handshake(self, owner.timeout, owner.reactor, master=sentinel)
        if error is not None:
            owner.handshake_failed(error)
            return
        owner.connection_ready(self)

    def connectionLost(self, why: Any) -> None:
        # The owner first: the base class fails the commands in flight, and their callers may read
        # again at once, which must not pick this connection.
        self.factory.owner.connection_lost(self, why)
        super().connectionLost(why)


class _Factory(txredisapi.RedisFactory):  # type: ignore[misc]
    protocol = _Protocol
    # One connection per server, reconnected for good: Twisted's "Starting factory" line at each
    # connection says nothing an operator needs.
    noisy = False
    initialDelay = 0.1
    factor = 2.0
    maxDelay = 1.0
    jitter = 0.2

    owner: RedisHistory


class _Batch:
    """Callers of one (channel, position, limit) that will share the next read of the server."""

    __slots__ = ("callers", "deadline", "key")

    def __init__(self, key: _Key, deadline: float) -> None:
        self.key = key
        self.deadline = deadline
        # A dict for its order and O(1) removal: in a storm thousands may wait, and some leave.
        self.callers: dict[Deferred[Replay], None] = {}


class RedisHistory:
    """``History`` over one Redis server: per-channel streams written by ``publish.lua``.

    Connects on the first read and reconnects by itself. Every read answers within ``timeout``
    seconds of its call or fails with ``HistoryUnavailable``. ``requests`` counts calls, ``reads``
    the reads sent to Redis (their ratio is what coalescing saved).
    """

    def __init__(
        self, server: RedisServer, reactor: IReactorTime | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = cast(IReactorTime, default_reactor)
        self.server = server
        self.reactor = reactor
        self.timeout = timeout
        self.requests = 0
        self.reads = 0
        self._factory: _Factory | None = None
        self._protocol: _Protocol | None = None
        self._waiters: list[Deferred[_Protocol]] = []
        # Callers waiting for a read not sent yet, and the reads sent, by key: a key has at most one
        # of each, so a reconnect storm costs one read in flight per key, whatever the callers.
        self._pending: dict[_Key, _Batch] = {}
        self._inflight: dict[_Key, _Batch] = {}
        self._flush_call: IDelayedCall | None = None
        self._last_handshake_error = ""
        self._stopped = False
        # While the server answers -LOADING: the reads waiting to ask again, the timer, its delay.
        self._loading_waiters: list[Deferred[None]] = []
        self._loading_call: IDelayedCall | None = None
        self._loading_delay = 0.0

    # History

    def read_after(self, channel: bytes, position: EventId | None, limit: int) -> Deferred[Replay]:
        if not isinstance(channel, bytes) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"bad read: channel {channel!r:.40} (bytes), limit {limit!r} (int >= 0)")
        if self._stopped:
            return fail(HistoryUnavailable(f"redis {self.server}: history reader stopped"))
        self.requests += 1
        key: _Key = (channel, position, limit if position is not None else 0)
        batch = self._pending.get(key)
        if batch is None:
            batch = self._pending[key] = _Batch(key, self.reactor.seconds() + self.timeout)
            if key not in self._inflight:
                # Sent at the end of this reactor turn, so that callers of the same turn share it;
                # otherwise when the read in flight is answered.
                self._schedule_flush()
        caller: Deferred[Replay] = Deferred(lambda d: self._leave(batch, d))
        batch.callers[caller] = None
        return caller

    def current_id(self, channel: bytes) -> Deferred[EventId | None]:
        return self.read_after(channel, None, 0).addCallback(lambda replay: replay.last_id)

    def stop(self) -> Deferred[None]:
        """Fail what waits, close the connection for good; fires once it is closed."""
        if self._stopped:
            return succeed(None)
        self._stopped = True
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._loading_call is not None and self._loading_call.active():
            self._loading_call.cancel()
        self._loading_call = None
        stopped = HistoryUnavailable(f"redis {self.server}: history reader stopped")
        batches, self._pending = list(self._pending.values()), {}
        for batch in batches:
            self._answer(batch, Failure(stopped))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(stopped)
        if self._factory is None:
            return succeed(None)
        closed = close_endpoint(self._endpoint)
        gone = gatherResults([self._factory.disconnect(), closed])
        return cast(Deferred[None], gone.addCallback(lambda _: None))

    # Coalescing

    def _leave(self, batch: _Batch, caller: Deferred[Replay]) -> None:
        """A caller cancelled: only its own Deferred fails; a batch nobody waits for is never sent."""
        batch.callers.pop(caller, None)
        if not batch.callers and self._pending.get(batch.key) is batch:
            del self._pending[batch.key]

    def _schedule_flush(self) -> None:
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        for key, batch in list(self._pending.items()):
            if key not in self._inflight:
                self._send(batch)

    def _send(self, batch: _Batch) -> None:
        del self._pending[batch.key]
        remaining = batch.deadline - self.reactor.seconds()
        if remaining <= 0:
            # It waited a whole deadline behind the read in flight.
            self._answer(batch, Failure(self._timed_out()))
            return
        self._inflight[batch.key] = batch
        self.reads += 1
        d = Deferred.fromCoroutine(self._fetch(batch.key))
        d.addTimeout(remaining, self.reactor)
        d.addBoth(self._done, batch)

    def _done(self, result: Replay | Failure, batch: _Batch) -> None:
        del self._inflight[batch.key]
        if isinstance(result, Failure):
            result = Failure(self._unavailable(result))
        self._answer(batch, result)
        waiting = self._pending.get(batch.key)
        if waiting is not None and not self._stopped:
            self._send(waiting)

    @staticmethod
    def _answer(batch: _Batch, result: Replay | Failure) -> None:
        callers, batch.callers = batch.callers, {}
        for caller in callers:
            if not caller.called:
                if isinstance(result, Failure):
                    caller.errback(result)
                else:
                    caller.callback(result)

    def _timed_out(self) -> HistoryUnavailable:
        # Waiting for a connection that AUTH or SELECT keeps refusing: say so, not just "no answer".
        refused = f" (AUTH/SELECT: {self._last_handshake_error})" if self._last_handshake_error else ""
        return HistoryUnavailable(f"redis {self.server}: no answer within {self.timeout:g}s{refused}")

    def _unavailable(self, failure: Failure) -> HistoryUnavailable:
        error = failure.value
        if isinstance(error, HistoryUnavailable):
            return error
        if isinstance(error, (DeadlinePassed, TimeoutError, CancelledError)):
            unavailable = self._timed_out()
        elif isinstance(error, txredisapi.ConnectionError):
            unavailable = HistoryUnavailable(f"redis {self.server}: {error or 'connection lost'}")
        elif isinstance(error, txredisapi.ResponseError):
            unavailable = HistoryUnavailable(f"redis {self.server} refused the history read: {error}")
        else:
            log.failure("redis {server}: unexpected history reply", failure, server=self.server.describe())
            unavailable = HistoryUnavailable(f"redis {self.server}: unexpected reply ({error!r:.80})")
        unavailable.__cause__ = error
        return unavailable

    # Reading

    async def _fetch(self, key: _Key) -> Replay:
        channel, position, limit = key
        args = (1, history_key(channel), *read_arguments(position, limit))
        while True:
            protocol = await self._connection()
            try:
                reply = await self._read(protocol, args)
            except txredisapi.ResponseError as e:
                if not str(e).startswith("LOADING"):
                    raise
                # The read's deadline (``_send``) bounds the waiting: cancelled, it fails as a timeout.
                await self._loaded(str(e))
                continue
            if self._loading_delay:
                self._loading_delay = 0.0
                log.info(
                    "redis {server}: loaded; history reads answered again", server=self.server.describe()
                )
            return replay_from(position, limit, reply)

    def _loaded(self, error: str) -> Deferred[None]:
        """Fires when a read refused with ``-LOADING`` should ask again (one timer for every read)."""
        if not self._loading_delay:
            self._loading_delay = LOADING_RETRY_INITIAL
            log.warn(
                "redis {server}: loading its dataset ({error}); history reads wait for it, up to their "
                "{timeout:g}s deadline",
                server=self.server.describe(),
                error=error,
                timeout=self.timeout,
                cause="loading",
            )
        if self._loading_call is None:
            delay = self._loading_delay * random.uniform(0.5, 1.0)
            self._loading_delay = min(LOADING_RETRY_MAX, self._loading_delay * 2)
            self._loading_call = self.reactor.callLater(delay, self._retry_loading)
        waiter: Deferred[None] = Deferred()
        self._loading_waiters.append(waiter)
        return waiter

    def _retry_loading(self) -> None:
        self._loading_call = None
        waiters, self._loading_waiters = self._loading_waiters, []
        for waiter in waiters:
            if not waiter.called:  # a read whose deadline passed was cancelled
                waiter.callback(None)

    async def _read(self, protocol: _Protocol, args: tuple[Any, ...]) -> Any:
        try:
            try:
                return await protocol.execute_command(b"EVALSHA", READ_SHA, *args)
            except txredisapi.ResponseError as e:
                if str(e).startswith("READONLY"):
                    # A demoted master (a missed failover): the reconnect asks the sentinels again.
                    self._drop(protocol)
                if not str(e).startswith("NOSCRIPT"):
                    raise
                # Redis restarted or its scripts were flushed: EVAL caches the script again.
                return await protocol.execute_command(b"EVAL", READ_SCRIPT, *args)
        except CancelledError:
            self._drop(protocol)
            raise

    def _connection(self) -> Deferred[_Protocol]:
        if self._protocol is not None and self._protocol.connected:
            return succeed(self._protocol)
        if self._factory is None:
            self._connect()
        waiter: Deferred[_Protocol] = Deferred(self._cancel_waiter)
        self._waiters.append(waiter)
        return waiter

    def _drop(self, protocol: _Protocol) -> None:
        """The deadline passed with a command sent on ``protocol``: start afresh on a new connection.

        Replies come in order, so every command behind it would wait too, and a half-open connection
        never answers. The abort completes on a later reactor turn: forget the connection now.
        """
        if self._protocol is protocol:
            self._protocol = None
            if not self._stopped:
                log.warn(
                    "redis {server}: no history answer within {timeout}s; reconnecting",
                    server=self.server.describe(),
                    timeout=self.timeout,
                )
        if protocol.transport is not None:
            protocol.transport.abortConnection()

    def _cancel_waiter(self, waiter: Deferred[_Protocol]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _connect(self) -> None:
        factory = factory_for(_Factory, self.server)
        factory.owner = self
        self._factory = factory
        self._endpoint = endpoint_for(self.reactor, self.server)
        factory.startConnecting(self._endpoint)
        log.info("redis {server}: history reader connecting", server=self.server.describe())

    # The connection's reports.

    def connection_ready(self, protocol: _Protocol) -> None:
        if self._stopped:
            return
        self._protocol = protocol
        self._last_handshake_error = ""
        log.info("redis {server}: history reader connected", server=self.server.describe())
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(protocol)

    def connection_lost(self, protocol: _Protocol, why: Any) -> None:
        if self._protocol is protocol:
            self._protocol = None
            if not self._stopped:
                switched = switched_away(self._endpoint, protocol)
                log.warn(
                    "redis {server}: history connection lost ({why}); reconnecting",
                    server=self.server.describe(),
                    why=f"the sentinels announced a new master at {switched[0]}:{switched[1]}"
                    if switched is not None
                    else why.getErrorMessage()
                    if hasattr(why, "getErrorMessage")
                    else why,
                )

    def handshake_failed(self, error: Exception) -> None:
        # Once per kind of error in a row: a wrong password would otherwise log on every retry.
        message = str(error) or type(error).__name__
        if message != self._last_handshake_error:
            self._last_handshake_error = message
            log.error(
                "redis {server}: history AUTH/SELECT failed ({error}); retrying",
                server=self.server.describe(),
                error=message,
            )


def _conforms(history: RedisHistory) -> History:
    return history
