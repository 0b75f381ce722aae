"""The wait before restarting something that keeps failing: exponential, capped, with jitter.

Shared by the mules and the worker pool, so both back off the same way.
"""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(
    failures: int,
    *,
    initial: float,
    maximum: float,
    factor: float = 2.0,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> float:
    """The wait before restart number ``failures`` (0 for the first restart after a clean run).

    ``initial * factor**failures`` capped at ``maximum``, then spread by up to ``±jitter`` (a
    fraction: 0.2 is ±20 %), and capped again so ``maximum`` really is the longest wait.
    """
    # Cap the exponent before computing: factor**1000 would overflow a float.
    base = initial * factor ** min(failures, 64) if factor > 1 else initial
    base = min(base, maximum)
    if jitter > 0:
        base *= 1.0 + (rng or random).uniform(-jitter, jitter)
    return max(0.0, min(base, maximum))
