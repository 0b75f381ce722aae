"""Several channels and patterns on one stream, the configuration side: TOML ``channels``/``patterns``
/``name_events``, ini repeated keys, the ``max_channels`` setting and its load-time check, ``--check``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ssebridge.address import DEFAULT_SERVER
from ssebridge.config.model import SETTINGS_BY_INI, ConfigError, check_config, load_config
from ssebridge.routing.rules import Action, Resolved, resolve_request


@pytest.fixture(autouse=True)
def no_leaked_delayed_calls() -> Iterator[None]:
    """Pure code: no reactor, so conftest's per-test reactor settle is not needed here."""
    yield


def request(path: str = "/") -> dict[str, str]:
    return {"PATH_INFO": path, "QUERY_STRING": "", "REQUEST_URI": path}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def test_toml_channels_patterns_and_name_events(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "c.toml",
            "max_channels = 4\n"
            "[[route]]\n"
            "match = '^/u/(\\d+)$'\n"
            'channels = ["user-${1}", "news"]\n'
            'patterns = ["room.*"]\n'
            "name_events = true\n"
            "[[route]]\n"
            "match = '^/one/(\\w+)$'\n"
            'channel = "first-$1"\n'
            'channels = [" second "]\n'
            'mode = "sseraw"\n'
            "[[route]]\n"
            "match = '^/rooms/(.+)$'\n"
            'patterns = ["room.${1}.*"]\n',
        )
    )
    assert config.max_channels == 4
    first, second, third = config.rules
    assert first.action == Action(
        "sse", "user-${1}", templated=True, more_channels=("news",), patterns=("room.*",), name_events=True
    )
    resolved = resolve_request(
        config.rules, request("/u/7"), DEFAULT_SERVER, max_channels=config.max_channels
    )
    assert resolved == Resolved("sse", b"user-7", DEFAULT_SERVER, None, (b"news",), (b"room.*",), True)
    assert second.action == Action("sseraw", "first-$1", templated=True, more_channels=("second",))
    resolved = resolve_request(config.rules, request("/one/x"), DEFAULT_SERVER)
    assert resolved is not None and resolved.channels == (b"first-x", b"second")
    resolved = resolve_request(config.rules, request("/rooms/a*"), DEFAULT_SERVER)
    assert resolved is not None and (resolved.channel, resolved.patterns) == (b"", (b"room.a\\*.*",))
    assert config.warnings == ()


def test_ini_repeated_keys_and_max_channels(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "c.ini",
            "[uwsgi]\nmax-channels = 3\n"
            "route = ^/u/(\\d+)$ sse:subscribe=user-$1,subscribe=news,psubscribe=room.*,name_events=1\n",
        )
    )
    assert config.max_channels == 3
    assert SETTINGS_BY_INI["max-channels"].field == "max_channels"
    assert config.rules[0].action.patterns == ("room.*",) and config.rules[0].action.name_events
    assert config.rules[0].text.endswith(
        "sse:subscribe=user-$1,subscribe=news,psubscribe=room.*,name_events=1"
    )


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (
            '[[route]]\nmatch = "^/"\nchannels = "a"\n',
            3,
            "channels must be an array of strings, not a string",
        ),
        ('[[route]]\nmatch = "^/"\nchannels = ["a", 1]\n', 3, "channels must be an array of strings"),
        ('[[route]]\nmatch = "^/"\npatterns = ["a", " "]\n', 3, "route: empty pattern in patterns"),
        ('[[route]]\nmatch = "^/"\nchannels = [""]\n', 3, "route: empty channel in channels"),
        ('[[route]]\nmatch = "^/"\nchannels = []\npatterns = []\n', 3, "no channel and no pattern"),
        (
            '[[route]]\nmatch = "^/"\nchannels = ["a"]\nname_events = 1\n',
            4,
            "name_events must be true or false",
        ),
        ('[[route]]\nmatch = "^/"\naction = "sse:x"\npatterns = ["y"]\n', 4, "has both action and patterns"),
        (
            '[[route]]\nmatch = "^/"\nname_events = true\n',
            1,
            "has no action (or channel, channels, patterns)",
        ),
        ('[[route]]\nmatch = "^/"\npatterns = ["${"]\n', 3, "route: unclosed"),
        ('[[route]]\nmatch = "^/"\npatterns = ["$2"]\n', 2, "group $2"),
        ('[[route]]\nmatch = "^/(a)"\npatterns = ["a.*"]\nallow = "[a-z]+"\n', 2, "own pattern 'a.*'"),
        ("max_channels = 0\n", 1, "max_channels: must be at least 1"),
        ("max_channels = 2000\n", 1, "max_channels: must be at most 1,024"),
        (
            'max_channels = 2\n[[route]]\nmatch = "^/"\nchannels = ["a", "b"]\npatterns = ["c*"]\n',
            2,
            "route: 3 channels and patterns, more than max_channels = 2 on line 1",
        ),
    ],
)
def test_toml_errors(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path, "bad.toml", text)
    error = error_of(path)
    assert error.line == line, str(error)
    assert problem in error.problem


def test_ini_cap_error_names_the_rule_and_the_default(tmp_path: Path) -> None:
    names = ",".join(f"subscribe=c{i}" for i in range(17))
    path = write(tmp_path, "big.ini", f"[uwsgi]\nheartbeat = 1\nroute = ^/ sse:{names}\n")
    error = error_of(path)
    assert error.line == 3
    assert "17 channels and patterns, more than max_channels = 16 (the default)" in error.problem
    # Raising the cap (after the rule, even) makes the same rule fine.
    assert load_config(write(tmp_path, "ok.ini", f"[uwsgi]\nroute = ^/ sse:{names}\nmax-channels = 17\n"))


def test_check_reports_cap_and_pattern_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.ini",
        "[uwsgi]\nroute = ^/a sse:subscribe=a,psubscribe=\nroute = ^/b sseraw:psubscribe=room.*\n",
    )
    config, problems = check_config(path)
    assert config is None and len(problems) == 1
    assert problems[0].line == 2 and "empty psubscribe= pattern" in problems[0].problem
    # A pattern with sseraw is fine.
    config, problems = check_config(
        write(tmp_path, "ok.ini", "[uwsgi]\nroute = ^/b sseraw:psubscribe=room.*\n")
    )
    assert problems == [] and config is not None and config.rules[0].action.mode == "sseraw"


def test_service_passes_max_channels_to_the_bridge(tmp_path: Path) -> None:
    from ssebridge.runtime.service import BridgeService

    config = load_config(write(tmp_path, "c.toml", "max_channels = 5\n"))
    service = BridgeService(config, run_mules=False)
    assert service.bridge.max_channels == 5
