"""The unit tier: pure code and fakes, no reactor turns, no processes, no sockets.

The top conftest's leak check lets the reactor settle after each test (50 ms); nothing here runs on
the reactor, so this tier skips it and stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_leaked_delayed_calls() -> Iterator[None]:
    yield
