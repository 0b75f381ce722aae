"""Log observers for ``twistd --logger``: structured output for journald and log shippers.

``twistd --logger=ssebridge.logs.json_stdout ssebridge ...`` writes one flat JSON object a line to
stdout: ``time`` (ISO 8601, UTC), ``level``, ``logger`` (the event's namespace), ``message`` (the
text the default log would show), ``worker`` (the worker's index in a ``workers = N`` pool, else
absent), then every structured field of the event (channel, client, duration, reason...). Twisted's
own ``log_*`` keys are left out, and a value JSON cannot carry is written as its ``repr``, so a line
always parses.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent, textFileLogObserver

#: Set by ``json_stdout`` so that worker processes, started with this environment, log alike.
FORMAT_VARIABLE = "SSEBRIDGE_LOG_FORMAT"

#: The keys every JSON line starts with; an event's own field of one of these names is written as
#: ``field_NAME`` rather than lost.
CONVENTIONAL = ("time", "level", "logger", "message", "worker")
#: Keys of events bridged from the legacy ``twisted.python.log`` that repeat what the conventional
#: keys say (or carry Twisted internals).
_LEGACY = frozenset(["message", "time", "system", "isError", "format", "printed", "why", "failure"])
#: How deep a nested value is followed before it is written as its ``repr``.
_DEPTH = 8


def _plain(value: object, depth: int = 0) -> Any:
    """``value`` as something ``json.dumps`` writes faithfully: JSON's own types as they are, bytes as
    text, containers item by item, anything else (and non-finite numbers) as its ``repr``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if depth < _DEPTH:
        if isinstance(value, list | tuple | set | frozenset):
            return [_plain(v, depth + 1) for v in value]
        if isinstance(value, Mapping):
            return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def _iso(timestamp: object) -> str | None:
    if not isinstance(timestamp, int | float):
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def flat_event(event: LogEvent, worker: int | None = None) -> dict[str, Any]:
    """One log event as a flat, JSON-ready dict: the conventional keys first, then the event's own
    fields (Twisted's ``log_*`` keys and the legacy bridge's left out)."""
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": _iso(event.get("log_time")),
        "level": getattr(level, "name", "info"),
        "logger": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    if worker is not None:
        out["worker"] = worker
    legacy = "log_legacy" in event or "isError" in event
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in _LEGACY):
            continue
        out[f"field_{key}" if key in CONVENTIONAL else key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["traceback"] = failure.getTraceback()
        except Exception:
            out["traceback"] = _plain(failure)
    return out


def event_as_json(event: LogEvent, worker: int | None = None) -> str:
    """``flat_event`` as one line of JSON."""
    return json.dumps(flat_event(event, worker), ensure_ascii=False, separators=(",", ":"))


def json_stdout(worker: int | None = None) -> ILogObserver:
    """One JSON object a line, on stdout (``worker``: this process's index in a pool)."""
    os.environ[FORMAT_VARIABLE] = "json"
    return FileLogObserver(sys.stdout, lambda event: event_as_json(event, worker) + "\n")


def inherited_observer(worker: int | None = None) -> ILogObserver:
    """For a worker process: the log format its parent was started with (text unless JSON); JSON
    lines carry the worker's index."""
    if os.environ.get(FORMAT_VARIABLE) == "json":
        return json_stdout(worker)
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
