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


#: Longest text ``printable`` returns (a hostile path may be kilobytes long).
PRINTABLE_LIMIT = 300


def printable(value: bytes | str, limit: int = PRINTABLE_LIMIT) -> str:
    """``value`` made safe for one log line: every control or invisible character escaped.

    Channel names, paths and header values come from clients. Written raw, an ESC sequence would
    repaint an operator's terminal and a CR or LF would forge log lines. Bytes are read as UTF-8;
    printable characters, ASCII or not, are kept; a byte that is not UTF-8, C0/C1 controls, DEL and
    invisible format characters (bidi overrides...) become ``\\xNN``/``\\uNNNN`` escapes, and a
    backslash is doubled, so an escape in the log always means the character, never the text.
    Past ``limit`` characters the text is cut and ends with ``...``.
    """
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if text.isprintable() and "\\" not in text:
        return text + "..." if cut else text
    out = []
    for char in text:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")  # a byte surrogateescape kept: not UTF-8
        elif char.isprintable():
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out) + ("..." if cut else "")
