"""Reading channels' history (Redis Streams) for resume: ``RedisHistory``, the Redis ``History``.

One read is one ``EVALSHA`` of ``READ_SCRIPT``, which takes the stream's metadata (``XINFO STREAM``)
and the events after a position (``XRANGE key (ID + COUNT n``) atomically, so a publish can never
fall between the two; ``replay_from`` then judges gaps in Python, where 64-bit ids compare exactly
(Lua numbers are doubles).

It has a command connection of its own: the subscriber connection can run nothing but (un)subscribes.
Reads of the same (channel, position, limit) that wait together share one read of the server; a read
already sent is never shared with a later caller, whose replay must include what was published up to
its call (``ssebridge.interfaces.History``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, cast

import txredisapi
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssebridge.interfaces import History, HistoryEvent, HistoryUnavailable, Replay
from ssebridge.publish.envelope import EventId, format_id, history_key, parse_id
from ssebridge.redis.address import RedisServer
from ssebridge.redis.pubsub import endpoint_for

__all__ = [
    "DEFAULT_TIMEOUT",
    "READ_SCRIPT",
    "HistoryUnavailable",
    "RedisHistory",
    "replay_from",
]

log = Logger()

#: Seconds a read may take, from the call (waiting for a connection included) to the answer.
DEFAULT_TIMEOUT = 5.0

# KEYS[1] the history stream; ARGV[1] "(" .. position (an exclusive XRANGE start), or "" for no events;
# ARGV[2] how many events at most. Returns {} when the key does not exist, otherwise
# {last-generated-id, max-deleted-entry-id, entries-added, length, first entry's id or "", entries}.
# entries-added and max-deleted-entry-id exist from Redis 7.0 (-1 and "0-0" before: see replay_from).
READ_SCRIPT = b"""
local key = KEYS[1]
local kind = redis.call('TYPE', key)['ok']
if kind == 'none' then
  return {}
end
if kind ~= 'stream' then
  return redis.error_reply('WRONGTYPE ssebridge: the history key holds a ' .. kind .. ', not a stream')
end
local info = redis.call('XINFO', 'STREAM', key)
local f = {}
for i = 1, #info, 2 do
  f[info[i]] = info[i + 1]
end
local first = ''
if f['first-entry'] then
  first = f['first-entry'][1]
end
local entries = {}
if ARGV[1] ~= '' then
  entries = redis.call('XRANGE', key, ARGV[1], '+', 'COUNT', ARGV[2])
end
return {f['last-generated-id'], f['max-deleted-entry-id'] or '0-0', f['entries-added'] or -1,
        f['length'], first, entries}
"""
_SHA = hashlib.sha1(READ_SCRIPT).hexdigest().encode()

#: The start of every history: ``Publisher.current_id`` of a channel that has none.
_ORIGIN: EventId = (0, 0)
#: The largest stream id; ``(`` before it is refused by Redis, and nothing can come after it.
_MAX_PART = 2**64 - 1
_MAX_ID: EventId = (_MAX_PART, _MAX_PART)

_Key = tuple[bytes, EventId | None, int]


def _id(raw: Any) -> EventId:
    parsed = parse_id(raw) if isinstance(raw, bytes) else None
    if parsed is None:
        raise ValueError(f"not a stream id: {raw!r:.40}")
    return parsed


def _event(entry: Any) -> HistoryEvent:
    raw_id, flat = entry
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return HistoryEvent(_id(raw_id), fields.get(b"d", b""), fields.get(b"e", b""), fields.get(b"r", b""))


def replay_from(position: EventId | None, limit: int, reply: Sequence[Any]) -> Replay:
    """The ``Replay`` for a read after ``position`` from ``READ_SCRIPT``'s reply (see ``Replay``).

    Trims only ever remove the oldest entries, and Redis 7.0 records XDELs (max-deleted-entry-id) but
    not trims, so: at or after the oldest entry held, only an XDEL after the position is a loss;
    before it, any entry ever removed may have come after the position (a conservative "evicted"),
    and a stream that never lost one cannot have held the position (``"unknown"``), bar ``0-0``.
    """
    if not reply:
        if position is None or position == _ORIGIN:
            return Replay(())
        return Replay((), "unknown")
    raw_last, raw_deleted, added, length, raw_first, entries = reply
    last = _id(raw_last)
    if position is None:
        return Replay((), None, last)
    if position > last:
        return Replay((), "future", last)
    events = tuple(_event(e) for e in entries[:limit])
    more = len(entries) > limit
    first = _id(raw_first) if raw_first else None
    gap: str | None = None
    if position == last:
        pass  # nothing can come after the newest id ever given
    elif first is None or position < first:
        # Redis < 7.0 does not count entries added (-1): assume some were removed.
        removed = int(added) < 0 or int(added) > int(length)
        if removed:
            gap = "evicted"
        elif position != _ORIGIN:
            gap = "unknown"
    elif _id(raw_deleted) > position:
        gap = "evicted"
    if gap is None and more:
        gap = "truncated"
    return Replay(events, gap, last, more)


class _Protocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """txredisapi's command protocol with a handshake that has a deadline and never stops the retries.

    txredisapi stops reconnecting for good when AUTH or SELECT fails for any reason (a connection lost
    midway included) and waits for their answers without a deadline; ``RedisTransport`` does the same.
    """

    factory: _Factory

    def connectionMade(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._handshake())

    async def _handshake(self) -> None:
        owner = self.factory.owner
        try:
            for command, args in (("auth", (self.password, self.username)), ("select", (self.dbid,))):
                if args[0] is None:
                    continue
                pending = cast(Deferred[Any], getattr(self, command)(*args))
                response = await pending.addTimeout(owner.timeout, owner.reactor)
                if isinstance(response, Exception):
                    raise response
        except Exception as e:
            owner.handshake_failed(e)
            self.transport.abortConnection()
            return
        self.connected = 1
        self._ready = True
        # The factory's pool bookkeeping waits here (its base class keeps the list).
        waiting: list[Deferred[Any]] = getattr(self, "_waiting_for_connect", [])
        setattr(self, "_waiting_for_connect", [])  # noqa: B010 - an untyped base class attribute
        for d in waiting:
            d.callback(self)
        owner.connection_ready(self)

    def connectionLost(self, why: Any) -> None:
        super().connectionLost(why)
        self.factory.owner.connection_lost(self, why)


class _Factory(txredisapi.RedisFactory):  # type: ignore[misc]
    protocol = _Protocol
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
        self.callers: list[Deferred[Replay]] = []


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

    # History

    def read_after(self, channel: bytes, position: EventId | None, limit: int) -> Deferred[Replay]:
        if limit < 0:
            raise ValueError("limit must be >= 0")
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
        batch.callers.append(caller)
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
        stopped = HistoryUnavailable(f"redis {self.server}: history reader stopped")
        batches, self._pending = list(self._pending.values()), {}
        for batch in batches:
            self._answer(batch, Failure(stopped))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(stopped)
        if self._factory is None:
            return succeed(None)
        return cast(Deferred[None], self._factory.disconnect().addCallback(lambda _: None))

    # Coalescing

    def _leave(self, batch: _Batch, caller: Deferred[Replay]) -> None:
        """A caller cancelled: only its own Deferred fails; a batch nobody waits for is never sent."""
        if caller in batch.callers:
            batch.callers.remove(caller)
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
        callers, batch.callers = batch.callers, []
        for caller in callers:
            if not caller.called:
                if isinstance(result, Failure):
                    caller.errback(result)
                else:
                    caller.callback(result)

    def _timed_out(self) -> HistoryUnavailable:
        return HistoryUnavailable(f"redis {self.server}: no answer within {self.timeout:g}s")

    def _unavailable(self, failure: Failure) -> HistoryUnavailable:
        error = failure.value
        if isinstance(error, HistoryUnavailable):
            return error
        if isinstance(error, (TimeoutError, CancelledError)):
            unavailable = self._timed_out()
        elif isinstance(error, txredisapi.ConnectionError):
            unavailable = HistoryUnavailable(f"redis {self.server}: {error or 'connection lost'}")
        elif isinstance(error, txredisapi.ResponseError):
            unavailable = HistoryUnavailable(f"redis {self.server} refused the history read: {error}")
        else:
            log.failure("redis {server}: unexpected history reply", failure, server=self.server.describe())
            unavailable = HistoryUnavailable(f"redis {self.server}: unexpected reply ({error!r:.80})")
        unavailable.__cause__ = error if isinstance(error, BaseException) else None
        return unavailable

    # Reading

    async def _fetch(self, key: _Key) -> Replay:
        channel, position, limit = key
        if position is None or position >= _MAX_ID:
            start = b""
        else:
            start = b"(" + format_id(position).encode()
        protocol = await self._connection()
        args = (1, history_key(channel), start, limit + 1)
        try:
            try:
                reply = await protocol.execute_command(b"EVALSHA", _SHA, *args)
            except txredisapi.ResponseError as e:
                if not str(e).startswith("NOSCRIPT"):
                    raise
                # Redis restarted or its scripts were flushed: EVAL caches the script again.
                reply = await protocol.execute_command(b"EVAL", READ_SCRIPT, *args)
        except CancelledError:
            # The deadline passed with the command sent. Replies come in order, so every command
            # behind it would wait too, and a half-open connection never answers: start afresh.
            if protocol.transport is not None:
                protocol.transport.abortConnection()
            raise
        return replay_from(position, limit, reply)

    def _connection(self) -> Deferred[_Protocol]:
        if self._protocol is not None:
            return succeed(self._protocol)
        if self._factory is None:
            self._connect()
        waiter: Deferred[_Protocol] = Deferred(self._cancel_waiter)
        self._waiters.append(waiter)
        return waiter

    def _cancel_waiter(self, waiter: Deferred[_Protocol]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _connect(self) -> None:
        factory = _Factory(
            None,
            self.server.db,
            1,
            isLazy=True,
            charset=None,
            password=self.server.password,
            convertNumbers=False,
            username=self.server.username,
        )
        factory.owner = self
        self._factory = factory
        factory.startConnecting(endpoint_for(self.reactor, self.server))
        log.info("redis {server}: history reader connecting", server=self.server.describe())

    # The connection's reports.

    def connection_ready(self, protocol: _Protocol) -> None:
        if self._stopped:
            return
        self._protocol = protocol
        self._last_handshake_error = ""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(protocol)

    def connection_lost(self, protocol: _Protocol, why: Any) -> None:
        if self._protocol is protocol:
            self._protocol = None
            if not self._stopped:
                log.warn(
                    "redis {server}: history connection lost ({why}); reconnecting",
                    server=self.server.describe(),
                    why=why.getErrorMessage() if hasattr(why, "getErrorMessage") else why,
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
