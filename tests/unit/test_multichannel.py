"""Several channels and patterns on one stream, the routing side: the repeated ``subscribe=``/
``psubscribe=`` keys, ``name_events``, ``Resolved.channels``, refused and escaped patterns, the app's
``X-SSE-Offload: a, b`` list and the ``max_channels`` cap (the config side: test_multichannel_config)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssebridge.address import DEFAULT_SERVER
from ssebridge.config import defaults
from ssebridge.config.model import Config
from ssebridge.routing.rules import (
    MAX_CHANNEL_LENGTH,
    MAX_CHANNELS,
    Action,
    RefusedChannel,
    Resolved,
    RuleError,
    action_text,
    check_pattern,
    glob_escape,
    offload_action,
    parse_action,
    parse_rule,
    resolve_action,
    resolve_request,
    resolve_response,
)


@pytest.fixture(autouse=True)
def no_leaked_delayed_calls() -> Iterator[None]:
    """Pure code: no reactor, so conftest's per-test reactor settle is not needed here."""
    yield


def request(path: str = "/", query: str = "", **extra: str) -> dict[str, str]:
    return {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_URI": path, **extra}


def resolve(rule_text: str, path: str = "/", *, allow: str | None = None, **kw: int) -> Resolved:
    resolved = resolve_request(
        [parse_rule("route", rule_text, allow=allow)], request(path), DEFAULT_SERVER, **kw
    )
    assert resolved is not None
    return resolved


# Resolved.


def test_resolved_keeps_its_four_positional_fields() -> None:
    resolved = Resolved("sse", b"clock", DEFAULT_SERVER, None)
    assert (resolved.more_channels, resolved.patterns, resolved.name_events) == ((), (), False)
    assert resolved.channels == (b"clock",)


def test_resolved_channels_in_order_without_empties_or_repeats() -> None:
    resolved = Resolved("sse", b"a", DEFAULT_SERVER, None, (b"b", b"a", b"", b"c", b"b"))
    assert resolved.channels == (b"a", b"b", b"c")
    assert Resolved("sse", b"", DEFAULT_SERVER, None, patterns=(b"room.*",)).channels == ()


# The ini action.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "sse:subscribe=a,subscribe=b,psubscribe=room.*",
            Action("sse", "a", templated=True, more_channels=("b",), patterns=("room.*",)),
        ),
        ("sse:psubscribe=room.*", Action("sse", "", templated=True, patterns=("room.*",))),
        (
            "sseraw:psubscribe=a.*,psubscribe=b.?",
            Action("sseraw", "", templated=True, patterns=("a.*", "b.?")),
        ),
        ("sse:subscribe=a,name_events=1", Action("sse", "a", templated=True, name_events=True)),
        ("sse:subscribe=a,name_events=TRUE", Action("sse", "a", templated=True, name_events=True)),
        ("sse:subscribe=a,name_events=0", Action("sse", "a", templated=True)),
        (
            "sse:server=h:1, subscribe=user-$1 ,subscribe=news,buffer_size=9,name_events=true",
            Action("sse", "user-$1", "h:1", 9, templated=True, more_channels=("news",), name_events=True),
        ),
        # The short form is unchanged: a comma there is part of the one channel's name.
        ("sse:a,b", Action("sse", "a,b", templated=True)),
    ],
)
def test_key_value_action_repeats_its_keys(text: str, expected: Action) -> None:
    assert parse_action(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("sse:server=h:1", "no subscribe= channel (or psubscribe= pattern)"),
        ("sse:subscribe=a,psubscribe=", "empty psubscribe= pattern"),
        ("sse:subscribe=a,subscribe=", "empty subscribe= channel"),
        ("sse:subscribe=a,name_events=maybe", "name_events 'maybe'"),
        ("sse:subscribe=a,name_events=1,name_events=0", "'name_events' given twice"),
        ("sse:subscribe=a,server=h:1,server=h:2", "'server' given twice"),
        ("sse:subscribe=a,pattern=x", "known: server, subscribe, psubscribe, buffer_size, name_events"),
    ],
)
def test_key_value_action_errors(text: str, problem: str) -> None:
    with pytest.raises(RuleError, match=re.escape(problem)):
        parse_action(text)


@pytest.mark.parametrize(
    "action",
    [
        Action("sse", "clock", templated=True),
        Action("sseraw", "a", "h:1", 4096, templated=True, more_channels=("b", "c")),
        Action("sse", "", templated=True, patterns=("room.*",), name_events=True),
        Action("sse", "user-${1}", templated=True, more_channels=("news",), patterns=("x.[ab]",)),
        Action("sse", "a", templated=True, name_events=True),
    ],
)
def test_action_text_reads_back(action: Action) -> None:
    assert parse_action(action_text(action)) == action


def test_action_text_examples() -> None:
    action = parse_action("sse:subscribe=a,subscribe=b,psubscribe=room.*,name_events=1")
    assert action_text(action) == "sse:subscribe=a,subscribe=b,psubscribe=room.*,name_events=1"
    assert action_text(parse_action("sse:clock")) == "sse:clock"


_NAME = (
    st.text(
        st.characters(blacklist_characters=",=$\r\n\x00", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=12,
    )
    .map(str.strip)
    .filter(bool)
)


@given(
    mode=st.sampled_from(["sse", "sseraw"]),
    channels=st.lists(_NAME, max_size=4),
    patterns=st.lists(_NAME, max_size=3),
    buffer_size=st.none() | st.integers(1, 10**9),
    name_events=st.booleans(),
)
def test_action_text_round_trip(
    mode: str, channels: list[str], patterns: list[str], buffer_size: int | None, name_events: bool
) -> None:
    if not channels and not patterns:
        channels = ["c"]
    action = Action(
        "sse" if mode == "sse" else "sseraw",
        channels[0] if channels else "",
        None,
        buffer_size,
        templated=True,
        more_channels=tuple(channels[1:]),
        patterns=tuple(patterns),
        name_events=name_events,
    )
    text = action_text(action)
    assert parse_action(text) == action


# Resolution.


def test_several_channels_and_patterns_resolve_in_order() -> None:
    rule = parse_rule(
        "route", r"^/u/(\d+)$ sse:subscribe=user-$1,subscribe=news,psubscribe=room.*,name_events=1"
    )
    resolved = resolve_request([rule], request("/u/42"), DEFAULT_SERVER)
    assert resolved == Resolved(
        "sse", b"user-42", DEFAULT_SERVER, None, (b"news",), (b"room.*",), name_events=True
    )
    assert resolved.channels == (b"user-42", b"news")


def test_repeats_after_substitution_count_once() -> None:
    resolved = resolve(
        r"^/(\w+)$ sse:subscribe=$1,subscribe=news,subscribe=$1,psubscribe=p*,psubscribe=p*", "/news"
    )
    assert (resolved.channel, resolved.more_channels, resolved.patterns) == (b"news", (), (b"p*",))
    # Three distinct names with a cap of two would be refused: repeats do not count.
    assert resolve(r"^/(\w+)$ sse:subscribe=$1,subscribe=news,psubscribe=p*", "/news", max_channels=2)


def test_patterns_only_route_has_an_empty_channel() -> None:
    resolved = resolve("^/rooms$ sseraw:psubscribe=room.*", "/rooms")
    assert (resolved.mode, resolved.channel, resolved.patterns, resolved.channels) == (
        "sseraw",
        b"",
        (b"room.*",),
        (),
    )


def test_substituted_values_cannot_widen_a_pattern() -> None:
    resolved = resolve(r"^/r/(.+)$ sse:psubscribe=room.$1.*", "/r/a*[b]?\\")
    assert resolved.patterns == (b"room.a\\*\\[b\\]\\?\\\\.*",)
    assert glob_escape("plain-name") == "plain-name"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/r/a%0D", "pattern contains CR"),
        ("/r/a\nb", "pattern contains LF"),
        ("/r/a\x00", "pattern contains NUL"),
        ("/r/" + "x" * (MAX_CHANNEL_LENGTH + 1), f"pattern is longer than {MAX_CHANNEL_LENGTH} bytes"),
        ("/r/\udce9", "pattern is not valid Unicode"),
    ],
)
def test_refused_patterns(path: str, problem: str) -> None:
    path = path.replace("%0D", "\r")
    with pytest.raises(RefusedChannel, match=re.escape(problem)):
        resolve(r"^/r/([\s\S]+) sse:subscribe=ok,psubscribe=$1", path)


def test_check_pattern_and_allow_apply_to_every_channel_and_pattern() -> None:
    with pytest.raises(RefusedChannel, match="empty pattern"):
        check_pattern("")
    allow = r"[a-z.*]{1,16}"
    assert resolve(r"^/(\w+)/(\w+)$ sse:subscribe=$1,psubscribe=$2.*", "/ab/cd", allow=allow).patterns == (
        b"cd.*",
    )
    with pytest.raises(RefusedChannel, match="channel not allowed"):
        resolve(r"^/(\w+)/(\w+)$ sse:subscribe=$1,subscribe=$2", "/ab/CD", allow=allow)
    with pytest.raises(RefusedChannel, match="pattern not allowed"):
        resolve(r"^/(\w+)/(\w+)$ sse:subscribe=$1,psubscribe=$2.*", "/ab/CD", allow=allow)
    with pytest.raises(RefusedChannel, match="empty channel"):
        resolve(r"^/(\w*)$ sse:subscribe=a,subscribe=$1", "/")


def test_allow_must_accept_the_rules_own_literal_names() -> None:
    with pytest.raises(RuleError, match="refuses the rule's own pattern 'room.*'"):
        parse_rule("route", r"^/(\w+)$ sse:subscribe=$1,psubscribe=room.*", allow=r"[a-z]+")
    with pytest.raises(RuleError, match="refuses the rule's own channel 'NEWS'"):
        parse_rule("route", r"^/(\w+)$ sse:subscribe=$1,subscribe=NEWS", allow=r"[a-z]+")


def test_the_cap_counts_channels_and_patterns() -> None:
    assert MAX_CHANNELS == defaults.MAX_CHANNELS == Config().max_channels == 16
    names = ",".join(f"subscribe=c{i}" for i in range(16))
    assert len(resolve(f"^/ sse:{names}").channels) == 16
    with pytest.raises(RefusedChannel, match=r"^more than 16 channels$"):
        resolve(f"^/ sse:{names},psubscribe=p*")
    with pytest.raises(RefusedChannel, match=r"^more than 2 channels$"):
        resolve("^/ sse:subscribe=a,subscribe=b,psubscribe=c*", max_channels=2)
    assert resolve("^/ sse:subscribe=a,psubscribe=c*", max_channels=2).patterns == (b"c*",)
    # The single-channel form too (a cap of 0 is not a setting anyone can make, but the rule holds).
    with pytest.raises(RefusedChannel, match="more than 0 channels"):
        resolve("^/ sse:a", max_channels=0)


def test_the_cap_reaches_every_resolving_function() -> None:
    action = parse_action("sse:subscribe=a,subscribe=b")
    with pytest.raises(RefusedChannel, match="more than 1 channels"):
        resolve_action(action, {}, DEFAULT_SERVER, max_channels=1)
    rule = parse_rule("final-route-if", "empty:${X} sse:subscribe=a,subscribe=b")
    with pytest.raises(RefusedChannel, match="more than 1 channels"):
        resolve_response([rule], request(), DEFAULT_SERVER, max_channels=1)
    resolved = resolve_response([rule], request(), DEFAULT_SERVER)
    assert resolved is not None and resolved.channels == (b"a", b"b")


# The app's offload list.


@pytest.mark.parametrize(
    ("value", "channels"),
    [
        ("clock", (b"clock",)),
        ("user-42, news", (b"user-42", b"news")),
        (" , user-42,, news ,user-42,", (b"user-42", b"news")),
        ("caf\u00e9,$1,${X}", ("caf\u00e9".encode(), b"$1", b"${X}")),
    ],
)
def test_offload_list(value: str, channels: tuple[bytes, ...]) -> None:
    variables = {"X": "substituted?"}
    resolved = resolve_action(offload_action(value), variables, DEFAULT_SERVER)
    assert resolved.mode == "sse" and resolved.channels == channels and resolved.patterns == ()


@pytest.mark.parametrize("value", ["", " ", " , ,"])
def test_offload_list_with_no_channel_is_refused_as_before(value: str) -> None:
    with pytest.raises(RefusedChannel, match="empty channel"):
        resolve_action(offload_action(value), {}, DEFAULT_SERVER)


def test_offload_list_is_capped_and_checked() -> None:
    with pytest.raises(RefusedChannel, match="more than 2 channels"):
        resolve_action(offload_action("a,b,c"), {}, DEFAULT_SERVER, max_channels=2)
    with pytest.raises(RefusedChannel, match="channel contains LF"):
        resolve_action(offload_action("a, b\nc"), {}, DEFAULT_SERVER)
