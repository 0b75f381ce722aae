"""Log observers for ``twistd --logger``: structured output for journald and log shippers.

``twistd --logger=ssebridge.logs.json_stdout ssebridge ...`` writes one JSON object a line to stdout,
with every structured field of each event (channel, client, duration, reason...), where the default
text log would flatten them into a sentence.
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, ILogObserver, eventAsJSON


def json_stdout() -> ILogObserver:
    """One JSON object a line, on stdout."""
    return FileLogObserver(sys.stdout, lambda event: eventAsJSON(event) + "\n")
