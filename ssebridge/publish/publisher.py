"""Publishing events with ids from ordinary Python code: a Django view, a Flask route, a Celery task.

``Publisher(redis.Redis(...))`` needs no reactor: it speaks through redis-py (``pip install
'ssebridge[publish]'``). Each ``publish`` runs ``publish.lua``, which appends the event to the channel's
history and announces it live in one atomic step, and returns the event's id.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from typing import Any, Protocol

from ssebridge.publish.envelope import (
    envelope_channel,
    format_position,
    history_key,
    parse_id,
    validate_event,
    validate_retry,
)

__all__ = [
    "DEFAULT_HISTORY_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "SCRIPT",
    "PublishCall",
    "Publisher",
    "channel_names",
    "position_of",
    "script_source",
]

#: Events kept per channel (an approximate ``MAXLEN ~``) unless the publisher says otherwise.
DEFAULT_HISTORY_SIZE = 1000
#: The bridge's own default ``max_message_size``: a larger event would never be delivered.
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024


def script_source() -> str:
    """The Lua source of ``publish.lua`` (for ``SCRIPT LOAD`` from any language)."""
    return resources.files("ssebridge.publish").joinpath("publish.lua").read_text(encoding="utf-8")


SCRIPT = script_source()


class RedisClient(Protocol):
    """What ``Publisher`` needs of a redis-py client (``redis.Redis`` or ``redis.sentinel``'s master)."""

    def register_script(self, script: str) -> Any: ...

    def xrevrange(self, name: Any, max: Any = ..., min: Any = ..., count: Any = ...) -> Any: ...


def channel_bytes(channel: str | bytes) -> bytes:
    if isinstance(channel, bytes):
        name = channel
    elif isinstance(channel, str):
        name = channel.encode("utf-8")
    else:
        raise TypeError("channel must be str or bytes")
    if not name or b"\r" in name or b"\n" in name or b"\x00" in name:
        raise ValueError(f"invalid channel {channel!r}: empty, or holds CR, LF or NUL")
    return name


class PublishCall:
    """The validated keys and arguments of one ``publish.lua`` call; shared by both publishers.

    The limits (``history`` events, ``max_age`` and ``ttl`` seconds) and ``max_message_size`` mean what
    ``Publisher`` documents.
    """

    def __init__(
        self,
        *,
        history: int = DEFAULT_HISTORY_SIZE,
        max_age: float | None = None,
        ttl: float | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        sharded: bool = False,
    ) -> None:
        if history < 0 or (max_age is not None and max_age <= 0) or (ttl is not None and ttl <= 0):
            raise ValueError("history must be >= 0, max_age and ttl > 0")
        self.limits = [
            str(history),
            str(int(max_age * 1000)) if max_age else "0",
            str(int(ttl * 1000)) if ttl else "0",
            "SPUBLISH" if sharded else "PUBLISH",
        ]
        self.max_message_size = max_message_size

    def arguments(
        self, channel: str | bytes, data: str | bytes, event: str | None, retry: int | None
    ) -> tuple[list[bytes], list[bytes | str]]:
        """``(keys, args)`` for the script; a bad value is a ``ValueError`` (``TypeError`` for types)."""
        name = channel_bytes(channel)
        payload = data.encode("utf-8") if isinstance(data, str) else data
        if not isinstance(payload, bytes):
            raise TypeError("data must be str or bytes")
        if self.max_message_size and len(payload) > self.max_message_size:
            raise ValueError(
                f"data of {len(payload)} bytes is over max_message_size ({self.max_message_size})"
            )
        event = validate_event(event)
        retry = validate_retry(retry)
        args: list[bytes | str] = [
            envelope_channel(name),
            payload,
            (event or "").encode("utf-8"),
            b"" if retry is None else str(retry).encode(),
            *self.limits,
        ]
        return [history_key(name)], args


def channel_names(channels: str | bytes | Iterable[str | bytes]) -> list[bytes]:
    """One channel or several, as validated bytes."""
    if isinstance(channels, (str, bytes)):
        return [channel_bytes(channels)]
    return [channel_bytes(c) for c in channels]


def position_of(names: list[bytes], newest: list[Any]) -> str:
    """The ``current_id`` of ``names`` from each one's ``XREVRANGE key + - COUNT 1`` reply."""
    positions = {}
    for name, reply in zip(names, newest, strict=True):
        raw = reply[0][0] if reply else b"0-0"
        positions[name] = parse_id(raw) or (0, 0)
    return format_position(positions)


def _text(reply: Any) -> str:
    return reply.decode("ascii") if isinstance(reply, bytes) else str(reply)


class Publisher:
    """Publish events with ids to channels that ssebridge streams.

    ``history`` bounds each channel's history by count (approximately: Redis trims whole nodes);
    ``max_age`` (seconds) drops events older than that; ``ttl`` (seconds) lets a channel's whole
    history expire when nothing was published for that long. ``max_message_size`` refuses data the
    bridge would not deliver (keep it at or under the bridge's ``max_message_size`` and Redis's
    pub/sub output buffer limit). ``sharded`` publishes with ``SPUBLISH`` (Redis Cluster).
    """

    def __init__(
        self,
        redis_client: RedisClient,
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
        self._redis = redis_client
        self._script = redis_client.register_script(SCRIPT)

    def publish(
        self, channel: str | bytes, data: str | bytes, *, event: str | None = None, retry: int | None = None
    ) -> str:
        """Append an event to ``channel``'s history, announce it live, and return its id.

        ``data`` is ``str`` (sent as UTF-8) or ``bytes``, with any line endings: clients receive it
        as one event. ``event`` names the event (the browser's ``addEventListener`` type); ``retry``
        sets the client's reconnection delay in ms. A bad value is a ``ValueError``.
        """
        keys, args = self._call.arguments(channel, data, event, retry)
        return _text(self._script(keys=keys, args=args))

    def current_id(self, channels: str | bytes | Iterable[str | bytes]) -> str:
        """The id that starts a stream of ``channels`` exactly after the newest event published so far.

        Embed it in a page rendered from the same data (``new EventSource(url + "?last_event_id=" +
        id)``): events published after the render reach the page, none twice. A channel with no
        history yet is at ``0-0``.
        """
        names = channel_names(channels)
        return position_of(names, [self._redis.xrevrange(history_key(n), "+", "-", count=1) for n in names])
