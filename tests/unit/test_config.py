"""Loading configs: the seed's uWSGI ini examples unchanged, their TOML equivalents, and every error
reported as one ``file:line: problem`` line."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ssebridge
from ssebridge.address import DEFAULT_SERVER, RedisServer
from ssebridge.config.model import (
    SETTINGS,
    Config,
    ConfigError,
    MuleSpec,
    StaticMap,
    default_config,
    listen_endpoint,
    load_config,
)
from ssebridge.routing.rules import Resolved, parse_rule, resolve_request, resolve_response
from tests.helpers import REPO


@pytest.fixture(autouse=True)
def no_leaked_delayed_calls() -> Iterator[None]:
    """No reactor here, so conftest's per-test reactor settle is not needed."""
    yield


# The seed README's two complete examples, verbatim.
SEED_ROUTING = """\
[uwsgi]
; eventually use absolue path for the plugin if it is not in the current directory
plugin = sse_offload
; bind on http port 9090
http-socket = :9090
; run clock.pl as a mule
mule = clock.pl
; map requests to /clock to the html file
static-map = /clock=clock.html
; route requests to ^/whattimeisit to the sse engine subscribed to the 'clock' redis channel
route = ^/whattimeisit sse:clock
; enable 1 offload thread
offload-threads = 1
"""

SEED_APP_GOVERNED = """\
[uwsgi]
plugin = python
; eventually use absolue path for the plugin if it is not in the current directory
plugin = sse_offload
; bind on http port 9090
http-socket = :9090
; run clock.pl as a mule
mule = clock.pl
; map requests to /clock to the html file
static-map = /clock=clock.html

; load the wsgi app
wsgi-file = clock.py

; tell the routing engine to check for X-SSE-OFFLOAD variable
final-route-if-not = empty:${X-SSE-OFFLOAD} sse:${X-SSE-OFFLOAD}
; enable 1 offload thread
offload-threads = 1
"""

# The seed's --pull-header example, without its "..." placeholder line.
SEED_PULL_HEADER = """\
[uwsgi]
; this will place the value of Content-Type in RESPONSE_TYPE variable
collect-header = Content-Type RESPONSE_TYPE
pull-header = X-SSE-Channel X_SSE_CHANNEL
; route to sse offload engine if RESPONSE_TYPE is event/stream
final-route-if = equal:${RESPONSE_TYPE};event/stream sse:${X_SSE_CHANNEL}
"""


@pytest.fixture
def seed_dir(tmp_path: Path) -> Path:
    """A directory with the seed's side files: clock.pl (with a shebang) and clock.html."""
    (tmp_path / "clock.pl").write_text("#!/usr/bin/env perl\nuse Redis;\n")
    (tmp_path / "clock.html").write_text("<div id='clock'></div>\n")
    (tmp_path / "clock.py").write_text("def application(environ, start_response):\n    return []\n")
    return tmp_path


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    assert "\n" not in str(error)
    return error


# The seed's examples.


def test_seed_routing_example(seed_dir: Path) -> None:
    config = load_config(write(seed_dir, "clock.ini", SEED_ROUTING))
    assert config.source == str(seed_dir / "clock.ini")
    assert config.listen == ("tcp:9090",)
    assert config.redis == DEFAULT_SERVER
    assert [r.text for r in config.rules] == ["^/whattimeisit sse:clock"]
    assert config.static_maps == (StaticMap("/clock", seed_dir / "clock.html"),)
    assert config.mules == (MuleSpec(("/usr/bin/env", "perl", str(seed_dir / "clock.pl")), seed_dir),)
    assert config.offload_threads == 1
    assert config.warnings == ()
    resolved = resolve_request(config.rules, {"PATH_INFO": "/whattimeisit"}, config.redis)
    assert resolved == Resolved("sse", b"clock", DEFAULT_SERVER, None)


def test_seed_app_governed_example(seed_dir: Path) -> None:
    path = write(seed_dir, "app.ini", SEED_APP_GOVERNED)
    config = load_config(path)
    assert config.listen == ("tcp:9090",)
    assert [r.kind for r in config.rules] == ["final-route-if-not"]
    assert config.warnings == ()
    assert config.wsgi_file == seed_dir / "clock.py"
    variables = {"PATH_INFO": "/whattimeisit", "X-SSE-OFFLOAD": "clock"}
    assert resolve_request(config.rules, variables, config.redis) is None
    resolved = resolve_response(config.rules, variables, config.redis)
    assert resolved is not None and resolved.channel == b"clock"
    assert resolve_response(config.rules, {"PATH_INFO": "/"}, config.redis) is None


def test_seed_pull_header_example(tmp_path: Path) -> None:
    path = write(tmp_path, "pull.ini", SEED_PULL_HEADER)
    config = load_config(path)
    assert config.warnings == ()
    assert config.collect_headers == (("Content-Type", "RESPONSE_TYPE"),)
    assert config.pull_headers == (("X-SSE-Channel", "X_SSE_CHANNEL"),)
    variables = {"RESPONSE_TYPE": "event/stream", "X_SSE_CHANNEL": "foobar"}
    resolved = resolve_response(config.rules, variables, config.redis)
    assert resolved is not None and resolved.channel == b"foobar"


def test_seed_action_parameters(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "p.ini",
            "[uwsgi]\n"
            "route = ^/foobar sse:server=127.0.0.1:4040,subscribe=foobar\n"
            "route = ^/raw sseraw:server=127.0.0.1:4040,subscribe=foobar\n",
        )
    )
    first = resolve_request(config.rules, {"PATH_INFO": "/foobar"}, config.redis)
    raw = resolve_request(config.rules, {"PATH_INFO": "/raw"}, config.redis)
    assert first == Resolved("sse", b"foobar", RedisServer(port=4040), None)
    assert raw == Resolved("sseraw", b"foobar", RedisServer(port=4040), None)


# TOML equivalents.

TOML_ROUTING = """\
listen = ":9090"
offload_threads = 1

[[route]]
match = "^/whattimeisit"
action = "sse:clock"

[[static]]
prefix = "/clock"
path = "clock.html"

[[mule]]
script = "clock.pl"
"""

TOML_APP_GOVERNED = """\
listen = ["tcp:9090"]
wsgi_file = "clock.py"

[[route]]
final_if_not = "empty:${X-SSE-OFFLOAD}"
action = "sse:${X-SSE-OFFLOAD}"

[[static]]
prefix = "/clock"
path = "clock.html"

[[mule]]
command = ["/usr/bin/env", "perl", "clock.pl"]
"""


def _comparable(config: Config) -> tuple[object, ...]:
    return (
        config.listen,
        config.redis,
        [(r.kind, r.pattern, r.condition, r.action) for r in config.rules],
        config.static_maps,
        config.offload_threads,
        config.wsgi_file,
    )


def test_toml_equivalent_of_routing_example(seed_dir: Path) -> None:
    ini = load_config(write(seed_dir, "a.ini", SEED_ROUTING))
    toml = load_config(write(seed_dir, "a.toml", TOML_ROUTING))
    assert _comparable(toml) == _comparable(ini)
    assert toml.mules == ini.mules
    assert toml.warnings == ()


def test_toml_equivalent_of_app_governed_example(seed_dir: Path) -> None:
    ini = load_config(write(seed_dir, "b.ini", SEED_APP_GOVERNED))
    toml = load_config(write(seed_dir, "b.toml", TOML_APP_GOVERNED))
    assert _comparable(toml) == _comparable(ini)
    assert toml.mules == (MuleSpec(("/usr/bin/env", "perl", "clock.pl"), seed_dir),)


def test_toml_full_schema(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "full.toml",
        """\
listen = ["tcp:9090:interface=127.0.0.1", "[::1]:9091", "unix:/tmp/sse.sock"]
redis = "redis://:pw@cache:6380/2"
offload_threads = 0
heartbeat = 20
max_streams = 5000
client_buffer = 65536
max_message_size = 0
confirm_timeout = 1.5
header_timeout = 5.0
shutdown_window = 2
retry_ms = 1000

[[route]]
match = '^/events/(?P<channel>[a-z0-9]+)$'
action = "sse:${channel}"
allow = '[a-z0-9]{1,16}'

[[route]]
match_uri = 'raw=(\\w+)'
channel = "$1"
mode = "sseraw"
server = "/run/redis.sock"
buffer_size = 8192

[[route]]
match_qs = '^room=(\\d+)$'
action = "sse:room-$1"

[[route]]
match_host = '^(\\w+)\\.example$'
action = "sse:host-$1"

[[route]]
if = "startswith:${PATH_INFO};/if/"
action = "sse:if"

[[route]]
if_not = "empty:${qs[c]}"
action = "sse:${qs[c]}"

[[route]]
final_if = "equal:${RESPONSE_TYPE};event/stream"
action = "sse:${X_SSE_CHANNEL}"

[[mule]]
command = ["python3", "-c", "pass"]
cwd = "sub"
""",
    )
    config = load_config(path)
    assert config.listen == (
        "tcp:9090:interface=127.0.0.1",
        "tcp6:9091:interface=\\:\\:1",
        "unix:/tmp/sse.sock",
    )
    assert config.redis == RedisServer(host="cache", port=6380, password="pw", db=2)
    assert (config.offload_threads, config.heartbeat, config.max_streams) == (0, 20.0, 5000)
    assert (config.client_buffer, config.max_message_size, config.confirm_timeout) == (65536, 0, 1.5)
    assert (config.header_timeout, config.shutdown_window, config.retry_ms) == (5.0, 2.0, 1000)
    assert [r.kind for r in config.rules] == [
        "route",
        "route-uri",
        "route-qs",
        "route-host",
        "route-if",
        "route-if-not",
        "final-route-if",
    ]
    assert config.rules[0].allow is not None
    raw = resolve_request(config.rules, {"PATH_INFO": "/", "REQUEST_URI": "/?raw=x"}, config.redis)
    assert raw == Resolved("sseraw", b"x", RedisServer("unix", path="/run/redis.sock"), 8192)
    assert config.mules == (MuleSpec(("python3", "-c", "pass"), tmp_path / "sub"),)
    assert config.warnings == ()


# ini details.


@pytest.mark.parametrize(
    ("value", "endpoint"),
    [
        (":9090", "tcp:9090"),
        ("127.0.0.1:9090", "tcp:9090:interface=127.0.0.1"),
        ("0.0.0.0:80", "tcp:80:interface=0.0.0.0"),
        ("localhost:9090", "tcp:9090:interface=localhost"),
        ("[::1]:9090", "tcp6:9090:interface=\\:\\:1"),
        ("[::]:9090", "tcp6:9090:interface=\\:\\:"),
        ("/run/sse.sock", "unix:/run/sse.sock"),
        ("tcp:9090:interface=127.0.0.1", "tcp:9090:interface=127.0.0.1"),
        ("tcp6:port=9090:interface=\\:\\:1", "tcp6:port=9090:interface=\\:\\:1"),
        ("unix:/path", "unix:/path"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ("ssl:443:privateKey=k.pem", "ssl:443:privateKey=k.pem"),
    ],
)
def test_listen_forms(value: str, endpoint: str) -> None:
    assert listen_endpoint(value) == endpoint


def test_ipv6_endpoint_is_what_twisted_reads() -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    endpoint: Any = serverFromString(reactor, listen_endpoint("[::1]:9090"))  # type: ignore[no-untyped-call]
    assert (endpoint._interface, endpoint._port) == ("::1", 9090)


def test_ini_listen_keys_keep_order(tmp_path: Path) -> None:
    path = write(tmp_path, "l.ini", "[uwsgi]\nhttp-socket = :1\nhttp = 127.0.0.1:2\nlisten = unix:/tmp/s\n")
    assert load_config(path).listen == ("tcp:1", "tcp:2:interface=127.0.0.1", "unix:/tmp/s")


def test_ini_rules_keep_order_across_kinds(tmp_path: Path) -> None:
    text = (
        "[uwsgi]\n"
        "route-host = ^admin\\. sse:admin\n"
        "route = ^/a sse:a\n"
        "route-if = equal:${qs[x]};1 sse:x\n"
        "route-if-not = empty:${HTTP_X} sse:h\n"
        "route-uri = \\?u= sse:u\n"
        "route-qs = q= sse:q\n"
        "final-route-if = empty:${X} sse:f\n"
        "final_route_if_not = empty:${X} sse:g\n"
    )
    config = load_config(write(tmp_path, "r.ini", text))
    assert [r.action.channel for r in config.rules] == ["admin", "a", "x", "h", "u", "q", "f", "g"]


def test_ini_comments_sections_and_extensions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.ini",
        "; leading comment\n"
        "stray = 1\n"
        "[other]\n"
        "route = ignored\n"
        "route = also ignored\n"
        "[uwsgi]\n"
        "# hash comment\n"
        "  redis = redis://cache:7000/1  \n"
        "redis-server = cache:7001\n"
        "route = ^/e/(.+) sse:$1\n"
        "route-allow = [a-z]+\n"
        "heartbeat = 2.5\n"
        "max-streams = 10\n"
        "master = true\n"
        "processes = 4\n",
    )
    config = load_config(path)
    assert config.redis == RedisServer(host="cache", port=7001)
    assert config.heartbeat == 2.5 and config.max_streams == 10
    assert config.rules[0].allow is not None and config.rules[0].allow.pattern == "[a-z]+"
    assert config.warnings == (
        f"{path}:2: keys outside any section ignored (only [uwsgi] is read)",
        f"{path}:4: keys in section [other] ignored (only [uwsgi] is read)",
        f"{path}:9: 'redis-server' set again: replaces the value on line 8",
        f"{path}:14: unknown key 'master' ignored",
        f"{path}:15: unknown key 'processes' ignored",
    )


def test_ini_magic_variables(tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text("hi")
    path = write(tmp_path, "magic.ini", "[uwsgi]\nstatic-map = /p=%dpage.html\nroute = ^/100%% sse:%n\n")
    config = load_config(path)
    assert config.static_maps == (StaticMap("/p", tmp_path / "page.html"),)
    assert config.rules[0].pattern is not None and config.rules[0].pattern.pattern == "^/100%"
    assert config.rules[0].action.channel == "magic"


def test_mule_forms(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("print('no shebang')\n")
    (tmp_path / "b.py").write_text("#!/usr/bin/python3 -u\n")
    (tmp_path / "c.pl").write_text("use Redis;\n")
    tool = tmp_path / "tool"
    tool.write_text("\x7fELF")
    tool.chmod(0o755)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.sh").write_text("#!/bin/sh\necho\n")
    path = write(
        tmp_path, "m.ini", "[uwsgi]\nmule = a.py\nmule = b.py\nmule = c.pl\nmule = tool\nmule = sub/d.sh\n"
    )
    assert [m.argv for m in load_config(path).mules] == [
        (sys.executable, str(tmp_path / "a.py")),
        ("/usr/bin/python3", "-u", str(tmp_path / "b.py")),
        ("perl", str(tmp_path / "c.pl")),
        (str(tool),),
        ("/bin/sh", str(tmp_path / "sub" / "d.sh")),
    ]


def test_relative_config_path_gives_absolute_paths(seed_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(seed_dir, "clock.ini", SEED_ROUTING)
    monkeypatch.chdir(seed_dir)
    config = load_config("clock.ini")
    assert config.source == "clock.ini"
    assert config.static_maps[0].path == seed_dir / "clock.html"
    assert config.mules[0].cwd == seed_dir


def test_sniffing_by_first_section(seed_dir: Path) -> None:
    assert load_config(write(seed_dir, "app.conf", SEED_ROUTING)).listen == ("tcp:9090",)
    assert load_config(write(seed_dir, "app.cfg", TOML_ROUTING)).listen == ("tcp:9090",)


def test_uwsgi_ini_named_toml_gets_a_hint(seed_dir: Path) -> None:
    error = error_of(write(seed_dir, "wrong.toml", SEED_ROUTING))
    assert "looks like a uWSGI ini file" in error.problem


def test_static_map_missing_path_is_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "s.ini", "[uwsgi]\nstatic-map = /x=nowhere.html\n")
    config = load_config(path)
    assert config.static_maps == (StaticMap("/x", tmp_path / "nowhere.html"),)
    assert config.warnings == (
        f"{path}:2: static-map: {str(tmp_path / 'nowhere.html')!r} does not exist (yet)",
    )


def test_empty_uwsgi_section_is_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "e.ini", "[uwsgi]\n"))
    assert config == Config(source=str(tmp_path / "e.ini"))


def test_toml_unknown_keys_are_warnings_with_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "u.toml",
        'redis = "h:1"\nprocesses = 4\n\n[[route]]\nmatch = "^/"\naction = "sse:x"\ncolour = "red"\n',
    )
    config = load_config(path)
    assert config.warnings == (
        f"{path}:2: unknown key 'processes' ignored",
        f"{path}:7: unknown key 'colour' in [[route]] ignored",
    )


def test_toml_inline_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path, "i.toml", 'route = [{match = "^/a", action = "sse:a"}, {match = "^/b", action = "sse:b"}]\n'
    )
    assert [r.action.channel for r in load_config(path).rules] == ["a", "b"]


# Errors: one line each, with the file and the line.


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("[uwsgi]\nroute = ^/x( sse:x\n", 2, "route: invalid regex '^/x('"),
        ("[uwsgi]\n\nroute = ^/x redirect:/y\n", 3, "route: unknown action 'redirect'"),
        ("[uwsgi]\nroute = ^/x sse:\n", 2, "route: action sse has no channel"),
        ("[uwsgi]\nroute = ^/x\n", 2, "has no action"),
        ("[uwsgi]\nroute = ^/x sse:server=h:1\n", 2, "no subscribe= channel"),
        ("[uwsgi]\nroute = ^/x sse:subscribe=a,buffer_size=0\n", 2, "buffer_size '0'"),
        ("[uwsgi]\nroute-if = nope:${X} sse:x\n", 2, "route-if: unknown condition 'nope'"),
        ("[uwsgi]\nfinal-route-if = regexp:${X};( sse:x\n", 2, "invalid condition regex"),
        ("[uwsgi]\nredis = h:0\n", 2, "redis: port 0 is not in 1-65535"),
        ("[uwsgi]\nredis-server = ftp://h\n", 2, "unknown scheme 'ftp'"),
        ("[uwsgi]\nhttp-socket = 9090\n", 2, "http-socket: listen address '9090' is neither"),
        ("[uwsgi]\nhttp-socket = tcp:http\n", 2, "port 'http' is not a number"),
        ("[uwsgi]\nhttp-socket = :70000\n", 2, "port '70000'"),
        ("[uwsgi]\nlisten = systemd:domain=INET\n", 2, "needs index=N"),
        ("[uwsgi]\nmaster\n", 2, "expected 'key = value', got 'master'"),
        ("[uwsgi]\n= value\n", 2, "expected 'key = value'"),
        ("[uwsgi\n", 1, "bad section header"),
        ("[uwsgi]\noffload-threads = -1\n", 2, "offload-threads: must be at least 0"),
        ("[uwsgi]\noffload-threads = many\n", 2, "'many' is not an integer"),
        ("[uwsgi]\nclient-buffer = -" + "9" * 400 + "\n", 2, "client-buffer: must be greater than 0"),
        ("[uwsgi]\nmax-streams = -" + "9" * 400 + "\n", 2, "max-streams: must be at least 0"),
        ("[uwsgi]\nheartbeat = soon\n", 2, "heartbeat: 'soon' is not a number"),
        ("[uwsgi]\nclient-buffer = 0\n", 2, "client-buffer: must be greater than 0"),
        ("[uwsgi]\nmule = missing.pl\n", 2, "mule: mule script"),
        ("[uwsgi]\nmule =\n", 2, "mule needs a script"),
        ("[uwsgi]\nstatic-map = /clock\n", 2, "static-map: expected /PREFIX=PATH"),
        ("[uwsgi]\nstatic-map = clock=clock.html\n", 2, "must start with '/'"),
        ("[uwsgi]\nroute-allow = [a-z]+\n", 2, "route-allow must follow the rule"),
        ("[uwsgi]\nroute = ^/ sse:x\nroute-allow = (\n", 3, "invalid allow regex"),
    ],
)
def test_ini_errors(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path, "bad.ini", text)
    error = error_of(path)
    assert (error.file, error.line) == (str(path), line)
    assert problem in error.problem
    assert str(error).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("listen = 9090\n", 1, "listen must be a string or an array of strings, not an integer"),
        ("listen = []\n", 1, "listen is empty"),
        ('\nlisten = ["tcp:x"]\n', 2, "listen: port 'x'"),
        ('redis = "h:99999"\n', 1, "redis: port 99999"),
        ("redis = 6379\n", 1, "redis: must be a string, not an integer"),
        ('offload_threads = "1"\n', 1, "offload_threads: must be an integer, not a string"),
        ("offload_threads = true\n", 1, "must be an integer, not a boolean"),
        ("heartbeat = nan\n", 1, "must be a finite number"),
        ("heartbeat = -1\n", 1, "must be at least 0"),
        ("max_streams = 1.5\n", 1, "must be an integer, not a float"),
        ('route = "^/ sse:x"\n', 1, "route must be an array of tables ([[route]]), not a string"),
        ('x = 1\n[[route]]\naction = "sse:x"\n', 2, "[[route]] needs one of match"),
        ('[[route]]\nmatch = "^/"\nif = "empty:${X}"\naction = "sse:x"\n', 3, "has both match and if"),
        ('[[route]]\nmatch = "^/"\n', 1, "[[route]] has no action"),
        ('[[route]]\nmatch = "^/("\naction = "sse:x"\n', 2, "route: invalid regex"),
        ('[[route]]\nmatch = "^/"\naction = "nope:x"\n', 3, "route: unknown action 'nope'"),
        ('[[route]]\nmatch = "^/"\naction = "sse:"\n', 3, "has no channel"),
        ('[[route]]\nmatch = 5\naction = "sse:x"\n', 2, "match must be a string, not an integer"),
        ('[[route]]\nmatch = "^/"\naction = "sse:x"\nchannel = "y"\n', 4, "has both action and channel"),
        ('[[route]]\nmatch = "^/"\nchannel = "x"\nmode = "raw"\n', 4, "mode must be sse or sseraw"),
        ('[[route]]\nmatch = "^/"\nchannel = "x"\nbuffer_size = 0\n', 4, "buffer_size must be a positive"),
        ('[[route]]\nmatch = "^/"\nchannel = "x"\nserver = "h:0"\n', 3, "bad server"),
        ('[[route]]\nmatch = "^/"\nchannel = ""\n', 3, "empty channel"),
        ('[[route]]\nmatch = "^/"\naction = "sse:x"\nallow = "("\n', 2, "invalid allow regex"),
        ('[[route]]\nmatch = "^/(a)"\naction = "sse:$2"\n', 2, "group $2"),
        ('[[static]]\nprefix = "/x"\n', 1, "[[static]] has no path"),
        ('[[static]]\nprefix = "x"\npath = "y"\n', 1, "must start with '/'"),
        ("[[mule]]\n", 1, "needs exactly one of command and script"),
        ('[[mule]]\nscript = "nope.py"\n', 2, "mule: mule script"),
        ("[[mule]]\ncommand = []\n", 2, "mule: mule command is empty"),
        ('[[mule]]\ncommand = "python3 x.py"\n', 2, "command must be an array of strings"),
        ('a = 1\nb = "unclosed\n', 2, "TOML: "),
        ("a = 1\na = 2\n", 2, "TOML: "),
        ("[[route]\n", 1, "TOML: "),
    ],
)
def test_toml_errors(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path, "bad.toml", text)
    error = error_of(path)
    assert (error.file, error.line) == (str(path), line)
    assert problem in error.problem


def test_missing_file(tmp_path: Path) -> None:
    error = error_of(tmp_path / "nope.toml")
    assert error.line is None
    assert str(error) == f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    assert "cannot read" in error_of(tmp_path).problem


def test_no_uwsgi_section(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "n.ini", "[app]\nx = 1\n"))
    assert (error.line, error.problem) == (None, "no [uwsgi] section")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "b.ini"
    path.write_bytes(b"[uwsgi]\nroute = ^/ sse:\xff\n")
    error = error_of(path)
    assert (error.line, error.problem) == (2, "not valid UTF-8")


def test_config_error_is_one_line() -> None:
    assert str(ConfigError("f.ini", 3, "two\nlines")) == "f.ini:3: two lines"
    assert str(ConfigError("f.ini", None, "x")) == "f.ini: x"


# The built-in config.


def test_default_config() -> None:
    config = default_config()
    assert config.listen == ("tcp:9090:interface=127.0.0.1",)
    assert config.redis == DEFAULT_SERVER
    assert [r.text for r in config.rules] == [
        r"^/events/(?P<channel>[A-Za-z0-9._:-]+)$ sse:${channel}",
        "^/whattimeisit$ sse:clock",
    ]
    assert config.static_maps == (
        StaticMap("/clock", Path(ssebridge.__file__).parent / "assets" / "clock.html"),
    )
    assert config.mules == (MuleSpec((sys.executable, "-m", "ssebridge.clock", "--channel", "clock")),)
    assert resolve_request(config.rules, {"PATH_INFO": "/events/a.b:c-d_e"}, DEFAULT_SERVER) == Resolved(
        "sse", b"a.b:c-d_e", DEFAULT_SERVER, None
    )
    assert resolve_request(config.rules, {"PATH_INFO": "/events/a/b"}, DEFAULT_SERVER) is None
    assert resolve_request(config.rules, {"PATH_INFO": "/whattimeisit"}, DEFAULT_SERVER) is not None


def test_every_setting_is_a_config_field() -> None:
    fields = set(Config.__dataclass_fields__)
    for setting in SETTINGS:
        assert setting.field in fields


def test_example_config_file_loads() -> None:
    """etc/ssebridge.toml documents the defaults: loading it gives the default settings."""
    path = REPO / "etc" / "ssebridge.toml"
    config = load_config(path)
    defaults = Config()
    for setting in SETTINGS:
        assert getattr(config, setting.field) == getattr(defaults, setting.field), setting.field
    assert config.warnings == ()
    assert config.listen == default_config().listen
    rules = default_config().rules
    assert [(r.kind, r.pattern, r.action) for r in config.rules] == [
        (r.kind, r.pattern, r.action) for r in rules
    ]


# Fuzzing: anything at all is a Config or a ConfigError.

_INI_KEYS = [
    "http-socket",
    "route",
    "route-if",
    "route-if-not",
    "final-route-if",
    "final-route-if-not",
    "route-uri",
    "route-qs",
    "route-host",
    "route-allow",
    "static-map",
    "mule",
    "plugin",
    "offload-threads",
    "redis",
    "listen",
    "heartbeat",
    "master",
]
_value_text = st.text(st.sampled_from(list("^/$(){}[]:;=,. \t-_%\\aZ19sequlrid#\"'")), max_size=40)
_ini_line = st.one_of(
    st.tuples(st.sampled_from(_INI_KEYS), _value_text).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.sampled_from(["[uwsgi]", "[other]", "; c", "# c", "", "junk", "[", "=x"]),
    st.sampled_from(
        [
            "route = ^/x sse:clock",
            "route = ^/(a) sse:server=h:1,subscribe=$1,buffer_size=8",
            "final-route-if-not = empty:${X} sse:${X}",
            "route-if = regexp:${PATH_INFO};^/(x) sseraw:$1",
            "http-socket = [::1]:9090",
            "static-map = /a=b",
        ]
    ),
)
_toml_line = st.one_of(
    st.sampled_from(
        [
            "[[route]]",
            "[[static]]",
            "[[mule]]",
            "[route]",
            'match = "^/x"',
            'if = "empty:${X}"',
            'action = "sse:x"',
            "action = 5",
            'channel = "$1"',
            'prefix = "/x"',
            'path = "p"',
            'command = ["true"]',
            'listen = ":1"',
            'redis = "h"',
            "heartbeat = 1.0",
            "offload_threads = -1",
            "x = [1, [2]]",
            'allow = "("',
            "",
            "# c",
        ]
    ),
    st.tuples(
        st.sampled_from(
            ["match", "action", "listen", "redis", "channel", "mode", "server", "script", "if_not"]
        ),
        _value_text,
    ).map(lambda kv: f"{kv[0]} = {kv[1]!r}".replace("\\\\", "\\")),
)


def _load_text(text: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"fuzz{suffix}"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            config = load_config(path)
        except ConfigError as e:
            assert "\n" not in str(e)
            assert str(e).startswith(str(path))
        else:
            assert isinstance(config, Config)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ini_line, max_size=12).map("\n".join), st.sampled_from([".ini", ".conf"]))
def test_fuzz_ini_lines(text: str, suffix: str) -> None:
    _load_text(text, suffix)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_toml_line, max_size=12).map("\n".join))
def test_fuzz_toml_lines(text: str) -> None:
    _load_text(text, ".toml")


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300), st.sampled_from([".ini", ".toml", ".cfg"]))
def test_fuzz_arbitrary_text(text: str, suffix: str) -> None:
    _load_text(text, suffix)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from([".ini", ".toml"]))
def test_fuzz_arbitrary_bytes(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"fuzz{suffix}"
        path.write_bytes(b"[uwsgi]\n" + data if suffix == ".ini" else data)
        try:
            load_config(path)
        except ConfigError as e:
            assert "\n" not in str(e)


def test_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = write(tmp_path, "secret.ini", "[uwsgi]\n")
    path.chmod(0)
    assert "Permission denied" in error_of(path).problem


def test_rule_text_is_kept_for_logs(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "t.ini", "[uwsgi]\nroute =   ^/a    sse:a  \n"))
    assert config.rules[0].text == "^/a    sse:a"
    assert config.rules[0] == parse_rule("route", "^/a    sse:a")


def test_error_messages_name_the_key(tmp_path: Path) -> None:
    error = error_of(write(tmp_path, "k.ini", "[uwsgi]\nroute-qs = x( sse:x\n"))
    assert re.match(r"route-qs: invalid regex", error.problem)


def test_check_lists_every_problem_with_its_line(tmp_path: Path) -> None:
    from ssebridge.config.model import check_config

    ini = tmp_path / "many.ini"
    ini.write_text(
        "[uwsgi]\nroute = ^/(x sse:a\nroute = ^/y nosuch:b\nheartbeat = soon\nthis is not a key\n"
        "route = ^/ok sse:fine\n"
    )
    config, problems = check_config(ini)
    assert config is None
    assert [p.line for p in problems] == [2, 3, 4, 5]
    toml = tmp_path / "many.toml"
    toml.write_text('heartbeat = "x"\nredis = "h:0"\n[[route]]\nmatch = "("\naction = "sse:a"\n')
    config, problems = check_config(toml)
    assert config is None and len(problems) == 3
    good = tmp_path / "good.toml"
    good.write_text('[[route]]\nmatch = "^/a"\naction = "sse:a"\n')
    config, problems = check_config(good)
    assert config is not None and problems == []


def test_upstream_keys_in_both_syntaxes(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("application = None\n")
    ini = load_config(
        write(
            tmp_path,
            "u.ini",
            "[uwsgi]\nproxy = http://127.0.0.1:5000/\ncollect-header = Content-Type RESPONSE_TYPE\n"
            "pull-header = X-SSE-Channel X_SSE_CHANNEL\nthreads = 4\nupstream-timeout = 2.5\n"
            "forwarded = yes\noffload-header = X-Stream\n",
        )
    )
    toml = load_config(
        write(
            tmp_path,
            "u.toml",
            'proxy = "http://127.0.0.1:5000/"\ncollect_header = ["Content-Type RESPONSE_TYPE"]\n'
            'pull_header = "X-SSE-Channel X_SSE_CHANNEL"\nthreads = 4\nupstream_timeout = 2.5\n'
            'forwarded = true\noffload_header = "X-Stream"\n',
        )
    )
    for config in (ini, toml):
        assert config.proxy == "http://127.0.0.1:5000"
        assert config.collect_headers == (("Content-Type", "RESPONSE_TYPE"),)
        assert config.pull_headers == (("X-SSE-Channel", "X_SSE_CHANNEL"),)
        assert (config.threads, config.upstream_timeout, config.forwarded) == (4, 2.5, True)
        assert config.offload_header == "X-Stream"
    module = load_config(write(tmp_path, "m.ini", "[uwsgi]\nmodule = pkg.mod:app\n"))
    assert module.wsgi_module == "pkg.mod:app"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[uwsgi]\nwsgi-file = missing.py\n", "2: wsgi-file"),
        ("[uwsgi]\nproxy = ftp://x\n", "2: proxy"),
        ("[uwsgi]\ncollect-header = Content-Type\n", "2: collect-header"),
        ("[uwsgi]\nproxy = http://a\nmodule = x:y\n", "choose one upstream"),
        ("[uwsgi]\nforwarded = maybe\n", "2: forwarded"),
        ("[uwsgi]\nmodule = not a module\n", "2: module"),
    ],
)
def test_bad_upstream_keys(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "bad.ini", text))
    assert problem in str(info.value)


def test_auto_is_one_worker_per_core(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "w.toml", "workers = 3\n")).workers == 3
    cores = len(os.sched_getaffinity(0))
    assert load_config(write(tmp_path, "a.toml", 'workers = "auto"\n')).workers == cores
    assert load_config(write(tmp_path, "a.ini", "[uwsgi]\nworkers = auto\n")).workers == cores


def test_docs_key_table_is_rendered_from_the_settings() -> None:
    """docs/configuration.md's key table is ``Setting.doc`` and the defaults, rendered; refresh it with
    ``python -m ssebridge.config.reference --write docs/configuration.md``."""
    from ssebridge.config.reference import settings_table, with_table

    page = (REPO / "docs" / "configuration.md").read_text()
    assert with_table(page) == page
    for setting in SETTINGS:
        assert f"| `{setting.toml}` |" in settings_table()
        assert setting.doc and setting.accepts


# Defect 9: what used to pass --check and fail at run time is a file:line error at load time.


@pytest.mark.parametrize(
    ("name", "text", "line", "problem"),
    [
        (
            "m.toml",
            'workers = 2\nmetrics_listen = "tcp:65535"\n',
            2,
            "metrics_listen: port 65535 plus worker 1 is past 65535",
        ),
        (
            "m.ini",
            "[uwsgi]\nmetrics-listen = tcp:65534:interface=127.0.0.1\nworkers = 3\n",
            2,
            "port 65534 plus worker 2 is past 65535",
        ),
        ("s.toml", 'workers = 2\nmetrics_listen = "systemd:domain=INET:index=1"\n', 2, "metrics_listen: "),
        ("l.toml", 'workers = 2\nlisten = "ssl:9443:privateKey=k.pem"\n', 2, "cannot share a 'ssl' listener"),
        (
            "b.toml",
            '\nlisten = "tcp:9090:backlog=abc"\n',
            2,
            "listen: endpoint 'tcp:9090:backlog=abc': backlog 'abc'",
        ),
        ("b.ini", "[uwsgi]\nhttp-socket = unix:/run/s.sock:backlog=-5\n", 2, "backlog '-5'"),
        ("b2.toml", 'metrics_listen = "tcp:9091:backlog=x"\n', 1, "metrics_listen: endpoint"),
        ("w.toml", "workers = 100000\n", 1, "workers: must be a whole number from 1 to 1024"),
        ("w.ini", "[uwsgi]\nworkers = 100000\n", 2, "workers: must be a whole number from 1 to 1024"),
        ("x.toml", "max_streams = 100000000000000000000000\n", 1, "max_streams: must be at most 10,000,000"),
        ("x.ini", "[uwsgi]\nmax-streams = 1e23\n", 2, "max-streams: '1e23' is not an integer"),
        ("h.toml", "heartbeat = 1e23\n", 1, "heartbeat: must be at most 86,400"),
        ("c.toml", "client_buffer = 1e23\n", 1, "client_buffer: must be an integer"),
        ("r.ini", "[uwsgi]\nretry-ms = 99999999999\n", 2, "retry-ms: must be at most 86,400,000"),
        ("t.toml", "threads = 100000\n", 1, "threads: must be at most 1,024"),
        (
            "p.toml",
            'proxy = "http://127.0.0.1:99999"\n',
            1,
            "proxy: 'http://127.0.0.1:99999': the port is not",
        ),
        (
            "p.ini",
            "[uwsgi]\n\nproxy = https://app.internal:0/base\n",
            3,
            "needs a host and a port in 1-65535",
        ),
    ],
)
def test_run_time_failures_are_load_time_errors(
    tmp_path: Path, name: str, text: str, line: int, problem: str
) -> None:
    path = write(tmp_path, name, text)
    error = error_of(path)
    assert (error.file, error.line) == (str(path), line)
    assert problem in error.problem
    from ssebridge.config.model import check_config

    config, problems = check_config(path)
    assert config is None and [str(p) for p in problems] == [str(error)]


def test_the_same_values_pass_where_they_fit(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "ok.toml", 'workers = 2\nmetrics_listen = "tcp:65534"\n'))
    assert (config.workers, config.metrics_listen) == (2, "tcp:65534")
    config = load_config(write(tmp_path, "one.toml", 'metrics_listen = "tcp:65535:backlog=10"\n'))
    assert config.metrics_listen == "tcp:65535:backlog=10"
    assert load_config(write(tmp_path, "p.toml", 'proxy = "http://127.0.0.1:65535/"\n')).proxy == (
        "http://127.0.0.1:65535"
    )
    assert load_config(write(tmp_path, "u.toml", 'workers = 2\nlisten = "unix:/tmp/x.sock"\n')).workers == 2


def test_every_number_default_is_defined_once_in_defaults() -> None:
    """A scalar key's default is a name in ``ssebridge.config.defaults`` that ``Config`` uses, never a
    literal repeated beside a "same as" comment."""
    from ssebridge.config import defaults

    for setting in SETTINGS:
        if setting.type in ("int", "float", "count", "bool"):
            default = Config.__dataclass_fields__[setting.field].default
            assert getattr(defaults, setting.field.upper()) == default, setting.field


def test_the_config_package_is_pure() -> None:
    """Loading and checking a config imports no Twisted and nothing of the runtime, HTTP or hub."""
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ssebridge.config.model, ssebridge.config.reference\n"
            "above = ('ssebridge.runtime', 'ssebridge.http', 'ssebridge.hub', 'ssebridge.upstream')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'klein', 'txredisapi')\n"
            "  or m.startswith(above)))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
