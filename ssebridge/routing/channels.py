"""What a request resolves to (``Resolved``) and the checks every channel and pattern name passes.

Pure: no Twisted, no I/O. ``rules`` resolves a rule's action through ``subscriptions`` and re-exports
the public names here, so imports from ``ssebridge.routing.rules`` keep working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ssebridge.address import RedisServer
from ssebridge.routing.actions import Action, Mode
from ssebridge.routing.errors import RefusedChannel
from ssebridge.routing.limits import MAX_CHANNEL_LENGTH
from ssebridge.routing.templates import _Context, glob_escape

__all__ = ["Resolved", "check_channel", "check_pattern", "subscriptions"]


@dataclass(frozen=True)
class Resolved:
    """What a matching rule resolved to for one request: ready for the hub.

    ``channel`` is the first channel (``b""`` when the route names patterns only), ``more_channels``
    the others and ``patterns`` the Redis glob patterns, each already checked, none twice;
    ``channels`` is every channel in order. ``name_events``: events the publisher gave no name are
    named after their channel.
    """

    mode: Mode
    channel: bytes
    server: RedisServer
    buffer_size: int | None
    more_channels: tuple[bytes, ...] = ()
    patterns: tuple[bytes, ...] = ()
    name_events: bool = False

    @property
    def channels(self) -> tuple[bytes, ...]:
        """The first channel and the others, in order, without empties or repeats."""
        if not self.more_channels:
            return (self.channel,) if self.channel else ()
        return tuple(dict.fromkeys(c for c in (self.channel, *self.more_channels) if c))


def _check_name(what: str, text: str, allow: re.Pattern[str] | None) -> bytes:
    if not text:
        raise RefusedChannel(f"empty {what}")
    for char, name in (("\r", "CR"), ("\n", "LF"), ("\x00", "NUL")):
        if char in text:
            raise RefusedChannel(f"{what} contains {name}")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: bytes that were not UTF-8 on the wire (ssebridge.routing.wire).
        raise RefusedChannel(f"{what} is not valid Unicode (not UTF-8 on the wire)") from None
    if len(data) > MAX_CHANNEL_LENGTH:
        raise RefusedChannel(f"{what} is longer than {MAX_CHANNEL_LENGTH} bytes ({len(data)})")
    if allow is not None and allow.fullmatch(text) is None:
        raise RefusedChannel(f"{what} not allowed by the rule's allow pattern")
    return data


def check_channel(channel: str, allow: re.Pattern[str] | None = None) -> bytes:
    """The channel as the bytes to subscribe to; raise ``RefusedChannel`` when it must not be.

    CR, LF and NUL are refused although Redis bulk strings could carry them: they would let a channel
    name forge log lines and protocol text wherever it is echoed. Other bytes (spaces, any Unicode)
    are ordinary channel names.
    """
    return _check_name("channel", channel, allow)


def check_pattern(pattern: str, allow: re.Pattern[str] | None = None) -> bytes:
    """A Redis glob pattern as the bytes to ``PSUBSCRIBE``; refused as ``check_channel`` refuses a
    channel (empty, CR/LF/NUL, not UTF-8, too long, or not matching ``allow`` in full)."""
    return _check_name("pattern", pattern, allow)


def subscriptions(
    action: Action, context: _Context, allow: re.Pattern[str] | None, max_channels: int
) -> tuple[list[bytes], list[bytes]]:
    """The action's channels and patterns for one request, checked, each once, in order."""
    templates = [action._channel, *action._more]
    if not action._channel.text and (action._more or action._patterns):
        # No first channel written: a patterns-only (or built-in-code) action, not an empty name.
        templates = templates[1:]
    channels = list(dict.fromkeys(check_channel(context.render(t), allow) for t in templates))
    patterns = list(
        dict.fromkeys(check_pattern(context.render(t, glob_escape), allow) for t in action._patterns)
    )
    if len(channels) + len(patterns) > max_channels:
        raise RefusedChannel(f"more than {max_channels} channels")
    return channels, patterns
