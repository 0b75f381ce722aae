"""A real browser ``EventSource`` resumes where it stopped: across a bridge restart, and from an embedded id.

The bridge runs as ``twistd -n ssebridge`` (a subprocess, as in production), serving a small page of
the test's own (``static-map``) and an ``sse`` route; events are published with ids by
``ssebridge.publish.Publisher`` over redis-py into the test's own ``redis-server``, the way a Django
view would. Chromium is driven as in ``test_browser.py`` (chromedriver over ``urllib``). The page
records, in globals the test reads back, every message's data and ``lastEventId``, every
``ssebridge.gap`` event, every ``open`` and every ``error`` (with the ``readyState`` it left).

What is proved is the promise a browser relies on: the ``EventSource`` reconnects by itself (no page
code) after the bridge it was connected to stops, sends ``Last-Event-ID`` on its own, and gets every
event published while it was away, then the live ones, none twice, no gap. Every wait is bounded
(``WAIT``): a broken bridge fails the test with what the page holds, never hangs it.

Skipped, saying why, when ``chromium`` or ``chromedriver`` (Debian: ``chromium``, ``chromium-driver``)
is missing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from ssebridge.publish import Publisher
from ssebridge.publish.envelope import envelope_channel
from ssebridge.testing import RedisProcess, free_port
from tests.helpers import stop_process, twistd, wait_port
from tests.system.test_browser import Browser, ChromeDriver, wait_for

#: Seconds any one wait may take before the test fails (a healthy run needs a fraction of it).
WAIT = 30.0
CHANNEL = "feed"
GAP = "ssebridge.gap"

# A short shutdown window and retry hint bring the browser back within about a second of a restart
# (the browser waits ``retry`` ms, plus the bridge's random share of the window, before reconnecting).
CONFIG = """[uwsgi]
http-socket = 127.0.0.1:{port}
redis = 127.0.0.1:{redis}
static-map = /resume.html=resume.html
route = ^/events/(.+)$ sse:$1
shutdown-window = 0.2
retry-ms = 500
"""

# ``ID`` stands for what a server-side render would embed (``Publisher.current_id``); ``null``: none.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>resume</title>
<script>
var ID = {id};
var url = '/events/{channel}' + (ID === null ? '' : '?last_event_id=' + encodeURIComponent(ID));
window.got = [];
window.gaps = [];
window.errors = [];
window.states = [];
window.opens = 0;
var source = new EventSource(url);
source.onmessage = function (e) {{ window.got.push({{data: e.data, id: e.lastEventId}}); }};
source.addEventListener('{gap}', function (e) {{ window.gaps.push({{data: e.data, id: e.lastEventId}}); }});
source.onopen = function () {{ window.opens += 1; window.states.push(source.readyState); }};
source.onerror = function () {{
  window.errors.push(source.readyState);
  window.states.push(source.readyState);
}};
</script>
"""

# What the page knows, in one round trip.
STATE = (
    "var n = window.got.length;"
    "return {count: n, last: n ? window.got[n - 1].id : null, gaps: window.gaps, errors: window.errors,"
    " states: window.states, opens: window.opens, readyState: source.readyState};"
)


@pytest.fixture
def publisher(redis: RedisProcess) -> Iterator[Publisher]:
    client = redis_py.Redis(port=redis.port, socket_timeout=5)
    yield Publisher(client, history=1000)
    client.close()


class Bridges:
    """``twistd -n ssebridge`` processes on one port and one config, started and stopped by the test."""

    def __init__(self, directory: Path, redis: RedisProcess) -> None:
        self.directory = directory
        self.port = free_port()
        self.config = directory / "bridge.ini"
        self.config.write_text(CONFIG.format(port=self.port, redis=redis.port))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def write_page(self, position: str | None) -> None:
        (self.directory / "resume.html").write_text(
            PAGE.format(id=json.dumps(position), channel=CHANNEL, gap=GAP)
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> subprocess.Popen[bytes]:
        log = self.directory / f"twistd-{len(self.processes)}.log"
        with log.open("wb") as out:
            process = twistd(
                "-n",
                "--pidfile=",
                "ssebridge",
                "--config",
                str(self.config),
                cwd=self.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        self.logs.append(log)
        try:
            wait_port(self.port, timeout=WAIT, proc=process)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.output()}") from None
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM: the bridge closes its streams with a ``retry:`` hint and exits cleanly."""
        stop_process(process, timeout=WAIT)
        # twistd ends a clean shutdown by re-raising the signal on itself: -SIGTERM is a clean exit.
        clean = process.returncode in (0, -signal.SIGTERM) and "Server Shut Down." in self.output()
        assert clean, f"the bridge exited with {process.returncode}\n{self.output()}"

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in self.logs)


@pytest.fixture
def bridges(tmp_path: Path, redis: RedisProcess) -> Iterator[Bridges]:
    started = Bridges(tmp_path, redis)
    try:
        yield started
    finally:
        for process in started.processes:
            stop_process(process)
        assert "Traceback" not in started.output(), started.output()


@pytest.fixture
def browser(chromedriver: ChromeDriver, bridges: Bridges) -> Iterator[Browser]:
    """A browser session of its own, closed before the bridges stop (it depends on ``bridges``)."""
    session = chromedriver.browser()
    try:
        yield session
    finally:
        session.quit()


def page_state(browser: Browser) -> dict[str, Any]:
    state: dict[str, Any] = browser.script(STATE)
    return state


def wait_page(browser: Browser, what: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the page until ``check(state)``; fail after ``WAIT`` s showing the page's last state."""

    def ready() -> dict[str, Any] | None:
        state = page_state(browser)
        return state if check(state) else None

    return wait_for(
        ready,
        what,
        timeout=WAIT,
        describe=lambda: page_state(browser),
    )


def received(browser: Browser) -> list[tuple[str, str]]:
    """Every message the page got: (data, lastEventId), in order."""
    return [(data, id_) for data, id_ in browser.script("return window.got.map(e => [e.data, e.id]);")]


def wait_subscribed(redis: RedisProcess) -> None:
    """The bridge listens for ``CHANNEL``'s events with ids (the page's stream is its only reader)."""
    wait_for(
        lambda: redis.numsub(envelope_channel(CHANNEL.encode())) == 1,
        "the bridge subscribed to the envelope channel",
        timeout=WAIT,
    )


class Steady:
    """Publishes bursts of events from a thread of its own until ``stop()``: they keep coming while
    the bridge stops, while it is down, and while the new one reads the browser's replay.

    At about 2,000 events a second, the milliseconds between the new bridge's subscription and its
    history read see events too: some both held live and in the read, some only held. (That race is
    made deterministic in tests/integration/test_resume.py; here it is the real thing, in a real
    browser.) Not faster: a backlog past the bridge's replay cap (10 reads of 1,000 events) is a
    legitimate ``truncated`` gap, and the second or so the browser is away must stay well under it.
    """

    BURST = 20
    PAUSE = 0.01
    #: Well under the history kept (``HISTORY``), so that nothing is evicted.
    MOST = 30_000
    HISTORY = 100_000

    def __init__(self, redis: RedisProcess) -> None:
        self.client = redis_py.Redis(port=redis.port, socket_timeout=5)
        self.publisher = Publisher(self.client, history=self.HISTORY)
        self.published: list[tuple[str, str]] = []
        self.failure: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="steady-publisher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopping.wait(self.PAUSE) and len(self.published) < self.MOST:
                for _ in range(self.BURST):
                    data = f"steady {len(self.published) + 1}"
                    self.published.append((data, self.publisher.publish(CHANNEL, data)))
        except BaseException as e:  # reported by stop(), in the test's thread
            self.failure = e

    def stop(self) -> list[tuple[str, str]]:
        self.stopping.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the publishing thread did not stop"
        self.client.close()
        if self.failure is not None:
            raise AssertionError(f"publishing failed: {self.failure!r}") from self.failure
        return self.published


def test_event_source_resumes_after_a_bridge_restart_without_loss_or_duplicate(
    bridges: Bridges, browser: Browser, redis: RedisProcess, publisher: Publisher
) -> None:
    bridges.write_page(None)
    first = bridges.start()
    browser.open(bridges.url("/resume.html"))
    wait_page(browser, "the stream open", lambda s: s["opens"] == 1)
    wait_subscribed(redis)

    expected: list[tuple[str, str]] = []

    def publish(n: int) -> None:
        for _ in range(n):
            data = f"event {len(expected) + 1}"
            expected.append((data, publisher.publish(CHANNEL, data)))

    publish(5)
    wait_page(browser, "the first 5 events", lambda s: s["count"] >= 5)

    bridges.stop(first)
    # The browser saw its stream end and is reconnecting by itself (CONNECTING, not CLOSED).
    wait_page(browser, "the browser noticed the restart", lambda s: len(s["errors"]) >= 1)
    assert redis.numsub(envelope_channel(CHANNEL.encode())) == 0, "no bridge listens: the page is away"
    publish(5)  # while no bridge runs: only history has these
    # A real outage, not a quick swap: the browser tried again at least once and was refused.
    wait_page(browser, "a refused reconnect", lambda s: len(s["errors"]) >= 2 and s["readyState"] == 0)

    bridges.start()
    # These race the browser's reconnect: replayed or live, each must arrive once.
    publish(2)
    wait_page(browser, "the browser's own reconnect", lambda s: s["opens"] == 2)
    publish(3)  # live, after the reconnect
    # Events arrive in order: once the last one is there, every one before it had its chance.
    state = wait_page(browser, "the last live event", lambda s: s["last"] == expected[-1][1])

    got = received(browser)
    assert got == expected, "every event once, in order, with its id"
    assert len({id_ for _, id_ in got}) == 15
    assert state["gaps"] == [], f"history held everything, yet: {state['gaps']}"
    # One EventSource, one reconnect of its own making; it never gave up (readyState 2, CLOSED).
    assert state["opens"] == 2 and state["readyState"] == 1
    assert 2 not in state["errors"], state
    # Nothing after the last event: no late replay, no duplicate trailing in.
    publish(1)
    state = wait_page(browser, "one more live event", lambda s: s["last"] == expected[-1][1])
    assert received(browser) == expected and state["gaps"] == []


def test_event_source_starts_from_an_id_embedded_in_the_page(
    bridges: Bridges, browser: Browser, redis: RedisProcess, publisher: Publisher
) -> None:
    rendered = [publisher.publish(CHANNEL, f"rendered {i}") for i in range(3)]
    # What a server-side render embeds: where its data stops.
    position = publisher.current_id([CHANNEL])
    assert position == rendered[-1]
    expected = [(f"after {i}", publisher.publish(CHANNEL, f"after {i}")) for i in range(2)]
    bridges.write_page(position)
    bridges.start()
    browser.open(bridges.url("/resume.html"))

    wait_page(browser, "the stream open", lambda s: s["opens"] == 1)
    wait_subscribed(redis)
    live = ("live", publisher.publish(CHANNEL, "live"))
    expected.append(live)
    state = wait_page(browser, "the live event", lambda s: s["last"] == live[1])
    assert received(browser) == expected, "exactly the events after the embedded id, then live ones"
    assert state["gaps"] == [] and state["opens"] == 1 and state["errors"] == []


def test_event_source_resumes_while_publishing_never_pauses(
    bridges: Bridges, browser: Browser, redis: RedisProcess, publisher: Publisher
) -> None:
    """A quick restart under a flow that never pauses: events are published while the old bridge
    closes its streams, while none runs, and while the new one subscribes and reads the replay."""
    bridges.write_page(None)
    first = bridges.start()
    browser.open(bridges.url("/resume.html"))
    wait_page(browser, "the stream open", lambda s: s["opens"] == 1)
    wait_subscribed(redis)
    steady = Steady(redis)
    try:
        wait_page(browser, "the flow reaching the page", lambda s: s["count"] >= 20)
        bridges.stop(first)
        wait_page(browser, "the browser noticed the restart", lambda s: len(s["errors"]) >= 1)
        bridges.start()
        before = page_state(browser)["count"]
        wait_page(
            browser,
            "the reconnect, with the flow live again",
            lambda s: s["opens"] == 2 and s["count"] >= before + 500,
        )
    finally:
        expected = steady.stop()
    expected.append(("last", publisher.publish(CHANNEL, "last")))
    state = wait_page(browser, "the last event", lambda s: s["last"] == expected[-1][1])

    got = received(browser)
    counts = Counter(got)
    twice = [(i, data) for i, (data, id_) in enumerate(got) if counts[data, id_] > 1]
    assert not twice, f"events twice (index, data), after a reconnect at about {before}: {twice[:20]}"
    assert got == expected, "every event once, in order, with its id"
    assert state["gaps"] == [] and state["opens"] == 2 and state["readyState"] == 1
