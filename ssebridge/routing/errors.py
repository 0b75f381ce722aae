"""The routing language's two errors: a rule that does not parse, and a channel that must not stream."""

from __future__ import annotations

__all__ = ["RefusedChannel", "RuleError"]


class RuleError(ValueError):
    """A rule, condition or action that does not parse; the message says why in one line."""


class RefusedChannel(ValueError):
    """A substituted channel name that must not be subscribed (empty, CR/LF/NUL, too long)."""
