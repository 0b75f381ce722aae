"""The routing language's limits, in a leaf module so ``ssebridge.config.defaults`` can take the
default from here without importing the language (no circle, no cost)."""

from __future__ import annotations

__all__ = ["MAX_CHANNELS", "MAX_CHANNEL_LENGTH"]

#: Longest channel name (or pattern) a request may resolve to, in bytes.
MAX_CHANNEL_LENGTH = 256
#: Most channels plus patterns one stream may hold, unless the ``max_channels`` setting says otherwise:
#: each is a subscription and a position in the stream's ``Last-Event-ID``, and both should stay small.
MAX_CHANNELS = 16
