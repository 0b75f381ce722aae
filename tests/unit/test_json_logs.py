"""The JSON log lines: flat, conventional keys, the event's own fields, never an unserialisable value."""

from __future__ import annotations

import io
import json
from datetime import datetime

import pytest
from twisted.logger import FileLogObserver, Logger, LogLevel, formatEvent, textFileLogObserver
from twisted.python.failure import Failure

from ssebridge.logs import event_as_json, flat_event, inherited_observer


def _events(emit: object) -> list[dict[str, object]]:
    lines: list[str] = []
    observer = FileLogObserver(io.StringIO(), lambda event: lines.append(event_as_json(event, 3)) or "")
    log = Logger(namespace="ssebridge.test", observer=observer)
    emit(log)  # type: ignore[operator]
    return [json.loads(line) for line in lines]


def test_a_line_is_flat_and_conventional() -> None:
    (line,) = _events(
        lambda log: log.info(
            "stream closed: channel={channel} bytes={bytes}", channel="news", bytes=12, duration=1.5
        )
    )
    assert list(line)[:5] == ["time", "level", "logger", "message", "worker"]
    assert line["level"] == "info" and line["logger"] == "ssebridge.test" and line["worker"] == 3
    assert line["message"] == "stream closed: channel=news bytes=12"
    assert line["channel"] == "news" and line["bytes"] == 12 and line["duration"] == 1.5
    assert not [key for key in line if key.startswith("log_")]
    assert str(line["time"]).endswith("Z")
    datetime.fromisoformat(str(line["time"]).replace("Z", "+00:00"))


def test_unserialisable_values_are_written_as_repr() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    (line,) = _events(
        lambda log: log.warn(
            "odd {thing}",
            thing=Thing(),
            raw=b"caf\xc3\xa9\xff",
            many={"a": (1, Thing())},
            nan=float("nan"),
            logger="mine",
        )
    )
    assert line["level"] == "warn"
    assert line["thing"] == "<thing>" and line["message"] == "odd <thing>"
    assert line["raw"] == "café\\xff"
    assert line["many"] == {"a": [1, "<thing>"]}
    assert line["nan"] == "nan"
    # An event's own field named like a conventional key is kept, renamed.
    assert line["field_logger"] == "mine" and line["logger"] == "ssebridge.test"


def test_a_failure_carries_its_traceback() -> None:
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        failure = Failure()
    (line,) = _events(lambda log: log.failure("it broke", failure))
    assert line["level"] == "critical" and line["message"] == "it broke"
    assert "ZeroDivisionError" in str(line["traceback"])


def test_no_worker_outside_a_pool() -> None:
    event = {"log_format": "hi", "log_level": LogLevel.info, "log_namespace": "x", "log_time": 0.0}
    flat = flat_event(event)
    assert "worker" not in flat and flat["time"] == "1970-01-01T00:00:00.000Z"


def test_the_text_output_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the JSON format, a worker logs Twisted's text lines, as before."""
    monkeypatch.delenv("SSEBRIDGE_LOG_FORMAT", raising=False)
    out = io.StringIO()
    event = {"log_format": "hello {who}", "who": "you", "log_level": LogLevel.info, "log_time": 0.0}
    textFileLogObserver(out)(event)
    assert out.getvalue().endswith("hello you\n")
    assert type(inherited_observer(worker=2)) is type(textFileLogObserver(io.StringIO()))
    assert formatEvent(event) == "hello you"


def test_legacy_events_lose_their_internals() -> None:
    """Events from ``twisted.python.log`` (twistd's own, old libraries') are flattened alike."""
    from twisted.logger import globalLogPublisher
    from twisted.python import log as legacy

    seen: list[dict[str, object]] = []

    def observer(event: dict[str, object]) -> None:
        seen.append(json.loads(event_as_json(event)))

    globalLogPublisher.addObserver(observer)
    try:
        legacy.msg("old style", detail=object())
    finally:
        globalLogPublisher.removeObserver(observer)
    (line,) = [e for e in seen if e["message"] == "old style"]
    assert not {"isError", "system", "format", "log_legacy"} & set(line)
    assert str(line["detail"]).startswith("<object object")
