"""The demos in a real browser: the seed's clock page and the chat example, in headless Chromium.

Chromium is driven through ``chromedriver`` with the W3C WebDriver protocol spoken over ``urllib``
(no Selenium). The bridge runs as ``twistd -n ssebridge`` on a copy of an example directory whose
ini has only its listener and Redis changed (a free port, the test's own ``redis-server``), plus a
short ``shutdown-window`` so that stopping it is quick. The tests are plain synchronous tests:
nothing here runs on the test process's reactor.

They skip, saying why, when ``chromium`` or ``chromedriver`` (Debian: ``chromium``,
``chromium-driver``) is missing; the test of the chat's refusals needs neither and always runs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ssebridge.testing import RedisProcess, free_port
from tests.helpers import EXAMPLES, stop_process, twistd, wait_port

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--disable-breakpad",
    "--no-first-run",
    "--window-size=1000,800",
]
#: The W3C key for an element reference in WebDriver replies.
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
TIMEOUT = 10.0

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None],
    what: str,
    timeout: float = TIMEOUT,
    describe: Callable[[], object] | None = None,
) -> T:
    """Poll ``check`` until it returns something true, and return that; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            state = f"; last: {describe()!r}" if describe is not None else ""
            raise AssertionError(f"{what}: not within {timeout}s{state}")
        time.sleep(0.05)


# --- WebDriver over urllib --------------------------------------------------------------------------


class WebDriverError(Exception):
    pass


class ChromeDriver:
    """A ``chromedriver`` process of our own, on a free port, in a process group of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.log = open(directory / "chromedriver.log", "wb")  # closed in stop()
        self.process = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}", "--log-level=WARNING"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.sessions: list[Browser] = []
        try:
            wait_for(self._ready, "chromedriver ready", describe=self.process.poll)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"chromedriver exited with {self.process.returncode}")
        try:
            return bool(self.call("GET", "/status", timeout=1.0)["ready"])
        except (OSError, WebDriverError):
            return False

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as e:
            try:
                value = json.loads(e.read())["value"]
                reason = f"{value.get('error')}: {value.get('message', '')[:500]}"
            except (ValueError, KeyError, AttributeError):
                reason = str(e)
            raise WebDriverError(f"{method} {path}: {reason}") from None

    def browser(self) -> Browser:
        profile = self.directory / f"profile-{len(self.sessions)}"
        options = {"binary": CHROMIUM, "args": [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]}
        capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        value = self.call("POST", "/session", {"capabilities": capabilities}, timeout=60.0)
        browser = Browser(self, value["sessionId"])
        self.sessions.append(browser)
        browser.call(
            "POST", "/timeouts", {"pageLoad": TIMEOUT * 1000, "script": TIMEOUT * 1000, "implicit": 0}
        )
        return browser

    def stop(self) -> None:
        """Close every browser, then chromedriver; whatever is left of the group is killed."""
        for browser in self.sessions:
            browser.quit()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        try:
            # The browsers chromedriver started are in its process group (start_new_session).
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.log.close()


class Browser:
    """One WebDriver session: a Chromium of its own (two of them are two users)."""

    def __init__(self, driver: ChromeDriver, session: str) -> None:
        self.driver = driver
        self.session = session
        self.closed = False

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.driver.call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def element(self, css: str) -> str:
        found = self.call("POST", "/elements", {"using": "css selector", "value": css})
        assert len(found) == 1, f"{len(found)} elements match {css!r}"
        ref: str = found[0][ELEMENT]
        return ref

    def text(self, css: str) -> str:
        """The element's rendered text, as WebDriver sees it (line breaks as the page shows them)."""
        text: str = self.call("GET", f"/element/{self.element(css)}/text")
        return text

    def type(self, css: str, keys: str) -> None:
        self.call("POST", f"/element/{self.element(css)}/value", {"text": keys})

    def click(self, css: str) -> None:
        self.call("POST", f"/element/{self.element(css)}/click", {})

    def script(self, source: str, *args: Any) -> Any:
        return self.call("POST", "/execute/sync", {"script": source, "args": list(args)})

    def script_async(self, source: str, *args: Any) -> Any:
        """``source`` gets a callback as its last argument and calls it with the result."""
        return self.call("POST", "/execute/async", {"script": source, "args": list(args)})

    def quit(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.call("DELETE", "")
            except (OSError, WebDriverError):
                pass


# --- the bridge on a copy of an example ------------------------------------------------------------


class Bridge:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


StartBridge = Callable[..., Bridge]


@pytest.fixture
def bridges(tmp_path: Path, redis: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[StartBridge]:
    """``start(example, ini, mule=None)``: copy ``examples/EXAMPLE`` and run the bridge on its ini.

    The ini keeps every line but its listener and Redis (the test's own); ``mule`` replaces its mule
    line. The chat app reads its Redis from ``SSEBRIDGE_REDIS``, set to the same server.
    """
    started: list[Bridge] = []
    monkeypatch.setenv("SSEBRIDGE_REDIS", f"127.0.0.1:{redis.port}")

    def start(example: str, ini: str, mule: str | None = None) -> Bridge:
        directory = tmp_path / f"{example}-{len(started)}"
        shutil.copytree(EXAMPLES / example, directory, ignore=shutil.ignore_patterns("__pycache__"))
        port = free_port()
        lines = []
        for line in (directory / ini).read_text().splitlines():
            key = line.partition("=")[0].strip().replace("_", "-")
            if key in ("http-socket", "http", "listen", "redis", "redis-server", "shutdown-window"):
                continue
            if key == "mule" and mule is not None:
                line = f"mule = {mule}"
            lines.append(line)
            if line.strip() == "[uwsgi]":
                lines += [
                    f"http-socket = 127.0.0.1:{port}",
                    f"redis = 127.0.0.1:{redis.port}",
                    "shutdown-window = 0.2",
                ]
        (directory / ini).write_text("\n".join(lines) + "\n")
        log = directory / "twistd.log"
        with log.open("wb") as out:
            process = twistd(
                "-n",
                "ssebridge",
                "--config",
                str(directory / ini),
                cwd=directory,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        bridge = Bridge(process, port, log)
        started.append(bridge)
        try:
            wait_port(port, proc=process)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{bridge.output()}") from None
        return bridge

    try:
        yield start
    finally:
        for bridge in started:
            stop_process(bridge.process)
        for bridge in started:
            assert "Traceback" not in bridge.output(), bridge.output()


@pytest.fixture
def browsers(chromedriver: ChromeDriver, bridges: StartBridge) -> Iterator[Callable[[], Browser]]:
    """New browser sessions, closed before the bridge stops (this fixture depends on ``bridges``)."""
    opened: list[Browser] = []

    def open_browser() -> Browser:
        browser = chromedriver.browser()
        opened.append(browser)
        return browser

    try:
        yield open_browser
    finally:
        for browser in opened:
            browser.quit()


# --- the clock -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ini", ["clock-routing.ini", "clock-app.ini"])
def test_clock_page_shows_the_published_time(
    ini: str, bridges: StartBridge, browsers: Callable[[], Browser], redis: RedisProcess, tmp_path: Path
) -> None:
    # The seed's mule is clock_publisher.py; it publishes to the Redis named on its command line.
    wrapper = tmp_path / "mule.sh"
    wrapper.write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} clock_publisher.py 127.0.0.1:{redis.port}\n"
    )
    bridge = bridges("clock", ini, mule=str(wrapper))
    browser = browsers()
    browser.open(bridge.url("/clock"))

    def page() -> dict[str, str]:
        return {
            "clock": browser.text("#clock"),
            "human": browser.text("#human"),
            "state": browser.text("#state"),
        }

    def timestamp() -> int | None:
        shown = browser.text("#clock")
        return int(shown) if shown.isdigit() else None

    first = wait_for(timestamp, "a unix time on the page", describe=page)
    assert abs(first - time.time()) < 30
    assert browser.text("#state") == "connected"
    assert browser.text("#human"), "the time in words is shown too"

    # Every value the page shows from now on is recorded, however briefly it is shown: values
    # published from here must all appear, in order, between the mule's ticks.
    browser.script(
        "var clock = document.getElementById('clock'); window.seen = [];"
        "new MutationObserver(() => window.seen.push(clock.textContent))"
        ".observe(clock, {childList: true, characterData: true, subtree: true});"
    )
    markers = ["1700000000", "1700000001", "4102444800"]
    for marker in markers:
        assert redis.publish("clock", marker) == 1  # one subscriber: the bridge
    seen = wait_for(
        lambda: (
            (s := browser.script("return window.seen;")) and [v for v in s if v in markers] == markers and s
        ),
        "the published values on the page",
        describe=lambda: browser.script("return window.seen;"),
    )
    # And it keeps ticking: the mule's next value replaces them.
    second = wait_for(
        lambda: (t := timestamp()) is not None and t > first and t < 4102444800 and t, "a tick", describe=page
    )
    assert 0 < second - first <= 5, (first, second, seen)


# --- the chat --------------------------------------------------------------------------------------

MESSAGES = (
    "return Array.from(document.querySelectorAll('#messages .message')).map(e => [e.id, e.textContent]);"
)


def lines_as_shown(message: str) -> str:
    """What EventSource hands the page: every CRLF, lone CR and LF is a line break (LF)."""
    return message.replace("\r\n", "\n").replace("\r", "\n")


def open_chat(browser: Browser, bridge: Bridge) -> None:
    browser.open(bridge.url("/chat/"))
    wait_for(
        lambda: browser.text("#state") == "connected",
        "the chat stream open",
        describe=lambda: browser.text("#state"),
    )


def wait_messages(browser: Browser, expected: list[str]) -> list[list[str]]:
    def shown() -> list[list[str]] | None:
        messages: list[list[str]] = browser.script(MESSAGES)
        return messages if [text for _, text in messages] == expected else None

    return wait_for(shown, f"{len(expected)} messages on the page", describe=lambda: browser.script(MESSAGES))


def test_chat_two_pages_receive_every_message_with_its_lines(
    bridges: StartBridge, browsers: Callable[[], Browser], redis: RedisProcess
) -> None:
    bridge = bridges("chat", "chat.ini")
    alice, bob = browsers(), browsers()
    for browser in (alice, bob):
        open_chat(browser, bridge)
    # Both pages' streams are subscribed: Redis counts one subscription for the bridge's connection.
    assert redis.numsub("chat") == 1

    # Typed and sent with the button, as a person would: both pages show it, the sender's box empties.
    alice.type("#text", "hello from alice, héllo ✓")
    alice.click("#send")
    expected = ["hello from alice, héllo ✓"]
    for browser in (alice, bob):
        wait_messages(browser, expected)
    wait_for(lambda: alice.script("return document.getElementById('text').value;") == "", "the box emptied")

    # Several lines typed (Enter is a new line in the box), sent with Ctrl+Enter.
    bob.type("#text", "first line\nsecond line\nthird")
    bob.type("#text", "\ue009\ue007\ue009")  # Control down, Enter, Control up
    expected.append("first line\nsecond line\nthird")
    for browser in (alice, bob):
        wait_messages(browser, expected)

    # A box cannot hold a CR (the browser turns line breaks into LF), so these go through the page's
    # own path, fetch to /chat/say, as raw text: CRLF and lone CRs reach Redis as they are.
    posted = ["first line\nsecond line\r\nthird", "one\rtwo\r\rfour\r", "cr\r\nlf\n\ncrlf\r\n\r\nend"]
    for message in posted:
        status = alice.script_async(
            "var done = arguments[arguments.length - 1];"
            "fetch('/chat/say', {method: 'POST', headers: {'Content-Type': 'text/plain;charset=UTF-8'},"
            " body: arguments[0]}).then(r => done(r.status), e => done(String(e)));",
            message,
        )
        assert status == 204, status
        expected.append(lines_as_shown(message))
    # And straight from a publisher on the server side, markup included: it must stay text.
    published = "<b>not bold</b> & <script>window.owned = 1</script>\r\nline two"
    assert redis.publish("chat", published) == 1
    expected.append(lines_as_shown(published))

    for browser in (alice, bob):
        messages = wait_messages(browser, expected)
        ids = [id_ for id_, _ in messages]
        assert ids == [f"message-{n}" for n in range(1, len(expected) + 1)]
        # The page shows the lines: WebDriver's rendered text keeps every line break (pre-wrap),
        # blank lines included, in order.
        for n, text in enumerate(expected, start=1):
            assert browser.text(f"#message-{n}") == text.rstrip("\n"), n
        assert (
            browser.script("return document.querySelectorAll('#messages b, #messages script').length;") == 0
        )
        assert browser.script("return window.owned === undefined;") is True
        assert browser.text("#error") == ""
    # Rendered on three lines, not run into one: the three-line message is more than twice as tall.
    heights = bob.script(
        "return [1, 3].map(n => document.getElementById('message-' + n).getBoundingClientRect().height);"
    )
    assert heights[1] > 2 * heights[0], heights


def test_chat_refuses_bad_posts(bridges: StartBridge, redis: RedisProcess) -> None:
    """No browser needed: hostile posts get 4xx (never a traceback), an unreachable Redis 503."""
    bridge = bridges("chat", "chat.ini")

    def post(body: bytes, content_type: str = "text/plain", **headers: str) -> tuple[int, bytes]:
        request = urllib.request.Request(
            bridge.url("/chat/say"),
            data=body,
            method="POST",
            headers={"Content-Type": content_type, **headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(bridge.url(path), timeout=TIMEOUT) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    status, page = get("/chat/")
    assert status == 200 and b"new EventSource('/chat/stream')" in page
    assert post(b"hi")[0] == 204
    assert post(b"text=hi+from+a+form", "application/x-www-form-urlencoded")[0] == 200  # 303, followed
    for body, content_type, code in [
        (b"", "text/plain", 400),
        (b" \r\n\t", "text/plain", 400),
        (b"\xff\xfe not UTF-8", "text/plain", 400),
        (b"a\x00b", "text/plain", 400),
        (b"a\x1b[31mred", "text/plain", 400),
        (b"text=%ff", "application/x-www-form-urlencoded", 400),
        (b"&".join([b"a=1"] * 100), "application/x-www-form-urlencoded", 400),
        (b"x" * 5000, "text/plain", 413),  # the app's limit
        (b"x" * 200_000, "text/plain", 413),  # the bridge's max-body, before the app
        (b'{"text": "hi"}', "application/json", 415),
    ]:
        status, answer = post(body, content_type)
        assert status == code, (body[:40], status, answer)
        assert b"Traceback" not in answer
    assert post(b"hi", Origin="http://elsewhere.example")[0] == 403
    assert post(b"hi", Origin=f"http://127.0.0.1:{bridge.port}")[0] == 204
    assert get("/chat/say")[0] == 405
    redis.kill()
    status, answer = post(b"anyone there?")
    assert status == 503, answer
    assert "cannot publish to Redis" in bridge.output()
