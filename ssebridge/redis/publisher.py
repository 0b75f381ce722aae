"""Publishing events with ids from inside a reactor: ``ssebridge.publish.Publisher`` over txredisapi.

Same script, same validation, same ids as the redis-py publisher; every call returns a Deferred.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from ssebridge.publish.envelope import history_key
from ssebridge.publish.publisher import (
    DEFAULT_HISTORY_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    SCRIPT,
    PublishCall,
    channel_names,
    position_of,
)

__all__ = ["TwistedPublisher"]


def _text(reply: Any) -> str:
    return reply.decode("ascii") if isinstance(reply, bytes) else str(reply)


class TwistedPublisher:
    """``Publisher`` for code running in a reactor, given a connected txredisapi client.

    ``redis`` is what ``txredisapi.Connection()`` / ``lazyConnection()`` returns (any client with
    ``eval`` and ``execute_command``). The options mean what they mean for ``Publisher``.
    """

    def __init__(
        self,
        redis: Any,
        *,
        history: int = DEFAULT_HISTORY_SIZE,
        max_age: float | None = None,
        ttl: float | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        sharded: bool = False,
    ) -> None:
        self._call = PublishCall(
            history=history, max_age=max_age, ttl=ttl, max_message_size=max_message_size, sharded=sharded
        )
        self._redis = redis

    def publish(
        self, channel: str | bytes, data: str | bytes, *, event: str | None = None, retry: int | None = None
    ) -> Deferred[str]:
        """The event's id, once it is in history and announced; a bad value raises ``ValueError`` now."""
        keys, args = self._call.arguments(channel, data, event, retry)
        d: Deferred[Any] = self._redis.eval(SCRIPT, keys, args)
        return d.addCallback(_text)

    def current_id(self, channels: str | bytes | Iterable[str | bytes]) -> Deferred[str]:
        names = channel_names(channels)
        replies = [
            self._redis.execute_command("XREVRANGE", history_key(n), "+", "-", "COUNT", 1) for n in names
        ]
        return gatherResults(replies).addCallback(lambda newest: position_of(names, newest))
