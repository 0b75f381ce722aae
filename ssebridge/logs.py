"""Log observers for ``twistd --logger``: structured output for journald and log shippers.

``twistd --logger=ssebridge.logs.json_stdout ssebridge ...`` writes one JSON object a line to stdout,
with every structured field of each event (channel, client, duration, reason...), where the default
text log would flatten them into a sentence.
"""

from __future__ import annotations

import os
import sys

from twisted.logger import FileLogObserver, ILogObserver, eventAsJSON, textFileLogObserver

#: Set by ``json_stdout`` so that worker processes, started with this environment, log alike.
FORMAT_VARIABLE = "SSEBRIDGE_LOG_FORMAT"


def json_stdout() -> ILogObserver:
    """One JSON object a line, on stdout."""
    os.environ[FORMAT_VARIABLE] = "json"
    return FileLogObserver(sys.stdout, lambda event: eventAsJSON(event) + "\n")


def inherited_observer() -> ILogObserver:
    """For a worker process: the log format its parent was started with (text unless JSON)."""
    if os.environ.get(FORMAT_VARIABLE) == "json":
        return json_stdout()
    return textFileLogObserver(sys.stdout)
