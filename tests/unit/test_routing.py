"""The routing language: templates, conditions, actions, every rule kind, and refused channels."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssebridge.address import DEFAULT_SERVER, RedisServer, parse_server
from ssebridge.routing import actions
from ssebridge.routing.rules import (
    MAX_CHANNEL_LENGTH,
    Action,
    Condition,
    RefusedChannel,
    Resolved,
    Rule,
    RuleError,
    Template,
    check_channel,
    make_rule,
    parse_action,
    parse_condition,
    parse_rule,
    resolve_action,
    resolve_request,
    resolve_response,
    with_allow,
)


@pytest.fixture(autouse=True)
def no_leaked_delayed_calls() -> Iterator[None]:
    """Pure functions: no reactor, so conftest's per-test reactor settle is not needed here."""
    yield


def request(path: str = "/", **extra: str) -> dict[str, str]:
    return {"PATH_INFO": path, "QUERY_STRING": "", "REQUEST_URI": path, **extra}


def channel_of(rules: list[Rule], variables: dict[str, str]) -> bytes | None:
    resolved = resolve_request(rules, variables, DEFAULT_SERVER)
    return None if resolved is None else resolved.channel


# Templates.


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("clock", ("clock",)),
        ("", ()),
        ("$1", (1,)),
        ("a$0b", ("a", 0, "b")),
        ("${12}", (12,)),
        ("$12", (1, "2")),
        ("${name}", (("var", "name"),)),
        ("${X-SSE-OFFLOAD}", (("var", "X-SSE-OFFLOAD"),)),
        ("room.${qs[id]}", ("room.", ("qs", "id"))),
        ("${cookie[session]}", (("cookie", "session"),)),
        ("cost: $x $", ("cost: $x $",)),
        ("$$1", ("$", 1)),
    ],
)
def test_template_parts(text: str, parts: tuple[object, ...]) -> None:
    assert Template(text).parts == parts


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("${", "unclosed"),
        ("a${b", "unclosed"),
        ("${}", "empty reference"),
        ("${env[HOME]}", "unknown reference"),
        ("${qs[]}", "empty key"),
        ("${a b}", "whitespace"),
    ],
)
def test_template_errors(text: str, problem: str) -> None:
    with pytest.raises(RuleError, match=problem):
        Template(text)


def test_substitution_sources() -> None:
    match = re.search(r"/(\w+)/(?P<tail>\w+)", "/a/b")
    variables = {
        "PATH_INFO": "/a/b",
        "tail": "not used: the group wins",
        "X-SSE-OFFLOAD": "offload",
        "QUERY_STRING": "c=room%201&c=second&e=&plus=a+b",
        "HTTP_COOKIE": 'sid=abc; name="quoted"; broken; =x; sid=second',
    }
    t = Template(
        "$0|$1|$2|${tail}|${X-SSE-OFFLOAD}|${qs[c]}|${qs[e]}|${qs[plus]}|${cookie[sid]}|${cookie[name]}"
    )
    assert t.substitute(variables, match) == "/a/b|a|b|b|offload|room 1||a b|abc|quoted"


def test_missing_references_are_empty() -> None:
    t = Template("[$1][${nope}][${qs[x]}][${cookie[y]}][$9]")
    assert t.substitute({}) == "[][][][][]"
    unmatched_group = re.search(r"(a)|(b)", "b")
    assert Template("[$1][$2]").substitute({}, unmatched_group) == "[][b]"


def test_literal_template_is_precomputed() -> None:
    assert Template("clock").literal == "clock"
    assert Template("${X}").literal is None


# Actions.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sse:clock", Action("sse", "clock", templated=True)),
        ("sseraw:clock", Action("sseraw", "clock", templated=True)),
        ("sse:${X-SSE-OFFLOAD}", Action("sse", "${X-SSE-OFFLOAD}", templated=True)),
        ("sse:a channel with spaces", Action("sse", "a channel with spaces", templated=True)),
        (
            "sse:server=127.0.0.1:4040,subscribe=foobar",
            Action("sse", "foobar", "127.0.0.1:4040", templated=True),
        ),
        (
            "sseraw:server=127.0.0.1:4040,subscribe=foobar",
            Action("sseraw", "foobar", "127.0.0.1:4040", templated=True),
        ),
        ("sse:subscribe=x, buffer_size=8192", Action("sse", "x", None, 8192, templated=True)),
        ("sse:subscribe=$1,server=${qs[s]}", Action("sse", "$1", "${qs[s]}", templated=True)),
    ],
)
def test_actions(text: str, expected: Action) -> None:
    assert parse_action(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("redirect:/x", "unknown action 'redirect'"),
        ("static:/x", "unknown action 'static'"),
        ("sse", "has no channel"),
        ("sse:", "has no channel"),
        ("sseraw:  ", "has no channel"),
        ("sse:server=h:1", "no subscribe= channel"),
        ("sse:subscribe=", "empty subscribe"),
        ("sse:subscribe=a,color=red", "unknown sse key 'color'"),
        ("sse:subscribe=a,server=h:1,server=h:2", "given twice"),
        ("sse:subscribe=a,buffer_size=1,buffer_size=2", "given twice"),
        ("sse:subscribe=a,buffer_size=0", "buffer_size '0'"),
        ("sse:subscribe=a,buffer_size=-5", "buffer_size '-5'"),
        ("sse:subscribe=a,buffer_size=4k", "buffer_size '4k'"),
        ("sse:subscribe=a,server=", "empty server"),
        ("sse:subscribe=a,server=h:0", "bad server 'h:0'"),
        ("sse:subscribe=a,server=ftp://x", "unknown scheme"),
        ("sse:subscribe=a,junk", "not key=value"),
        ("sse:${", "unclosed"),
    ],
)
def test_action_errors(text: str, problem: str) -> None:
    with pytest.raises(RuleError, match=re.escape(problem)):
        parse_action(text)


def test_literal_server_is_parsed_once() -> None:
    action = parse_action("sse:server=redis://h:1/2,subscribe=x")
    resolved = resolve_action(action, {}, DEFAULT_SERVER)
    assert resolved.server == RedisServer(host="h", port=1, db=2)


def test_action_built_in_code_is_literal() -> None:
    """A channel an app already chose (a response header) is not substituted a second time."""
    resolved = resolve_action(Action("sse", "price:$1:${HTTP_COOKIE}"), {"HTTP_COOKIE": "x"}, DEFAULT_SERVER)
    assert resolved.channel == b"price:$1:${HTTP_COOKIE}"


# Conditions.


@pytest.mark.parametrize(
    ("text", "variables", "holds"),
    [
        ("empty:${X}", {}, True),
        ("empty:${X}", {"X": ""}, True),
        ("empty:${X}", {"X": "a"}, False),
        ("equal:${A};b", {"A": "b"}, True),
        ("equal:${A};b", {"A": "c"}, False),
        ("isequal:${A};b;c", {"A": "b;c"}, True),
        ("equal:${A};${B}", {"A": "x", "B": "x"}, True),
        ("eq:${A};", {}, True),
        ("isnotequal:${A};b", {"A": "c"}, True),
        ("startswith:${PATH_INFO};/api/", {"PATH_INFO": "/api/x"}, True),
        ("startswith:${PATH_INFO};/api/", {"PATH_INFO": "/x/api/"}, False),
        ("endswith:${PATH_INFO};.sse", {"PATH_INFO": "/a.sse"}, True),
        ("endswith:${PATH_INFO};.sse", {"PATH_INFO": "/a.html"}, False),
        ("contains:${HTTP_ACCEPT};event-stream", {"HTTP_ACCEPT": "text/event-stream"}, True),
        ("contains:${HTTP_ACCEPT};event-stream", {"HTTP_ACCEPT": "text/html"}, False),
        ("icontains:${HTTP_ACCEPT};EVENT", {"HTTP_ACCEPT": "text/event-stream"}, True),
        ("regexp:${PATH_INFO};^/r/\\d+$", {"PATH_INFO": "/r/12"}, True),
        ("re:${PATH_INFO};^/r/\\d+$", {"PATH_INFO": "/r/x"}, False),
        ("regexp:${A};a;b", {"A": "a;b"}, True),
    ],
)
def test_conditions(text: str, variables: dict[str, str], holds: bool) -> None:
    assert parse_condition(text).holds(variables) is holds


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nonsense:${A}", "unknown condition 'nonsense'"),
        ("exists:/etc/passwd", "unknown condition 'exists'"),
        ("empty", "not NAME:ARGS"),
        ("equal:${A}", "two arguments"),
        ("regexp:${A};(unclosed", "invalid condition regex"),
        ("startswith:${A", "two arguments"),
        ("empty:${A", "unclosed"),
    ],
)
def test_condition_errors(text: str, problem: str) -> None:
    with pytest.raises(RuleError, match=re.escape(problem)):
        parse_condition(text)


def test_condition_aliases_are_canonical() -> None:
    assert Condition("isequal", ("a", "b")) == Condition("equal", ("a", "b"))
    assert parse_condition("re:${A};x").name == "regexp"


def test_regexp_condition_groups_feed_the_action() -> None:
    rule = parse_rule("route-if", r"regexp:${HTTP_HOST};^(\w+)\.example$ sse:tenant-$1")
    assert channel_of([rule], request(HTTP_HOST="acme.example")) == b"tenant-acme"
    negated = parse_rule("route-if-not", r"regexp:${HTTP_HOST};^(\w+)\.example$ sse:other-$1")
    assert channel_of([negated], request(HTTP_HOST="elsewhere")) == b"other-"


# Rules.


def test_route_searches_path_info() -> None:
    rules = [parse_rule("route", "^/whattimeisit sse:clock")]
    assert channel_of(rules, request("/whattimeisit")) == b"clock"
    assert channel_of(rules, request("/whattimeisit/more")) == b"clock"
    assert channel_of(rules, request("/clock")) is None
    unanchored = [parse_rule("route", "time sse:clock")]
    assert channel_of(unanchored, request("/what/time/")) == b"clock"


def test_each_regex_kind_tests_its_variable() -> None:
    variables = request("/p", REQUEST_URI="/p?room=7", QUERY_STRING="room=7", HTTP_HOST="chat.example")
    assert channel_of([parse_rule("route", r"^/p$ sse:path")], variables) == b"path"
    assert channel_of([parse_rule("route-uri", r"room=(\d+) sse:uri-$1")], variables) == b"uri-7"
    assert channel_of([parse_rule("route-qs", r"^room=(\d+)$ sse:qs-$1")], variables) == b"qs-7"
    assert channel_of([parse_rule("route-host", r"^(\w+)\. sse:host-$1")], variables) == b"host-chat"
    assert channel_of([parse_rule("route-qs", r"^/p$ sse:x")], variables) is None
    assert channel_of([parse_rule("route-host", "x sse:x")], request("/")) is None


def test_groups_named_and_numbered() -> None:
    rule = parse_rule("route", r"^/events/(?P<channel>[a-z]+)/(\d+)$ sse:${channel}.$2.${1}")
    assert channel_of([rule], request("/events/news/42")) == b"news.42.news"


def test_named_group_else_variable() -> None:
    rule = parse_rule("route", r"^/u/(?P<user>\w+) sse:${user}:${HTTP_X_TEAM}")
    assert channel_of([rule], request("/u/ann", HTTP_X_TEAM="red")) == b"ann:red"


def test_route_if_and_if_not() -> None:
    if_rule = parse_rule("route-if", "equal:${qs[mode]};live sse:live")
    if_not = parse_rule("route-if-not", "empty:${qs[c]} sse:${qs[c]}")
    assert channel_of([if_rule, if_not], request(QUERY_STRING="mode=live&c=x")) == b"live"
    assert channel_of([if_rule, if_not], request(QUERY_STRING="mode=dead&c=x")) == b"x"
    assert channel_of([if_rule, if_not], request(QUERY_STRING="mode=dead")) is None


def test_first_matching_rule_wins() -> None:
    rules = [
        parse_rule("route", "^/a sse:first"),
        parse_rule("route", "^/a sse:second"),
        parse_rule("route", "^/b sse:third"),
    ]
    assert channel_of(rules, request("/a")) == b"first"
    assert channel_of(rules, request("/b")) == b"third"


def test_first_match_decides_even_when_refused() -> None:
    rules = [parse_rule("route", "^/e/ sse:${qs[c]}"), parse_rule("route", "^/e/ sse:fallback")]
    with pytest.raises(RefusedChannel):
        resolve_request(rules, request("/e/"), DEFAULT_SERVER)


def test_final_rules_only_on_the_response() -> None:
    seed = parse_rule("final-route-if-not", "empty:${X-SSE-OFFLOAD} sse:${X-SSE-OFFLOAD}")
    by_type = parse_rule("final-route-if", "equal:${RESPONSE_TYPE};event/stream sse:${X_SSE_CHANNEL}")
    early = parse_rule("route", "^/ sse:early")
    variables = request("/whattimeisit", **{"X-SSE-OFFLOAD": "clock"})
    assert resolve_request([seed, by_type], variables, DEFAULT_SERVER) is None
    assert resolve_response([early], variables, DEFAULT_SERVER) is None
    resolved = resolve_response([early, seed, by_type], variables, DEFAULT_SERVER)
    assert resolved == Resolved("sse", b"clock", DEFAULT_SERVER, None)
    assert resolve_response([seed], request(), DEFAULT_SERVER) is None
    typed = request(RESPONSE_TYPE="event/stream", X_SSE_CHANNEL="foobar")
    assert resolve_response([seed, by_type], typed, DEFAULT_SERVER) == Resolved(
        "sse", b"foobar", DEFAULT_SERVER, None
    )


def test_resolved_server_and_buffer() -> None:
    rule = parse_rule("route", "^/foobar sseraw:server=127.0.0.1:4040,subscribe=foobar,buffer_size=65536")
    resolved = resolve_request([rule], request("/foobar"), DEFAULT_SERVER)
    assert resolved == Resolved("sseraw", b"foobar", RedisServer(port=4040), 65536)


def test_default_server_used_when_action_has_none() -> None:
    other = parse_server("/run/redis.sock")
    resolved = resolve_request([parse_rule("route", "^/ sse:x")], request("/"), other)
    assert resolved is not None and resolved.server is other


def test_substituted_server() -> None:
    rule = parse_rule("route", "^/s/([a-z0-9.]+)/(\\w+) sse:server=$1:7000,subscribe=$2")
    resolved = resolve_request([rule], request("/s/cache.local/news"), DEFAULT_SERVER)
    assert resolved is not None and resolved.server == RedisServer(host="cache.local", port=7000)
    bad = parse_rule("route", "^/ sse:server=${qs[s]},subscribe=x")
    with pytest.raises(RefusedChannel, match="bad server"):
        resolve_request([bad], request("/", QUERY_STRING="s=h:0"), DEFAULT_SERVER)
    with pytest.raises(RefusedChannel, match="bad server"):
        resolve_request([bad], request("/"), DEFAULT_SERVER)


@pytest.mark.parametrize(
    ("kind", "text", "problem"),
    [
        ("route", "", "empty route rule"),
        ("route", "^/x", "has no action"),
        ("route-if", "empty:${X}", "has no action"),
        ("route", "^/x( sse:x", "invalid regex"),
        ("route", "^/x sse:", "has no channel"),
        ("route", "^/x bogus:x", "unknown action 'bogus'"),
        ("route", "^/(x) sse:$2", "group $2"),
        ("route", "^/x sse:${3}", "group $3"),
        ("route-if", "empty:${X} sse:$1", "group $1"),
        ("route-if", "bogus:${X} sse:x", "unknown condition 'bogus'"),
        ("route-if", "regexp:${X};[ sse:x", "invalid condition regex"),
        ("final-route-if", "equal:${X} sse:x", "two arguments"),
        ("route-everything", "^/ sse:x", "unknown rule kind"),
    ],
)
def test_rule_errors(kind: str, text: str, problem: str) -> None:
    with pytest.raises(RuleError, match=re.escape(problem)):
        parse_rule(kind, text)  # type: ignore[arg-type]


def test_rule_splits_at_first_whitespace() -> None:
    rule = parse_rule("route", "  ^/x\t sse:a channel  ")
    assert rule.pattern is not None and rule.pattern.pattern == "^/x"
    assert rule.action.channel == "a channel"
    assert rule.text == "^/x\t sse:a channel"


def test_make_rule_from_parts() -> None:
    rule = make_rule("route-if", "empty:${X}", Action("sse", "c", templated=True))
    assert rule.condition == Condition("empty", ("${X}",))
    assert rule.text == "empty:${X} sse:c"


# Refused channels.


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "empty channel"),
        ("a\rb", "CR"),
        ("a\nb", "LF"),
        ("a\x00b", "NUL"),
        ("x" * (MAX_CHANNEL_LENGTH + 1), f"longer than {MAX_CHANNEL_LENGTH}"),
        ("é" * (MAX_CHANNEL_LENGTH // 2 + 1), f"longer than {MAX_CHANNEL_LENGTH}"),
        ("\ud800", "not valid Unicode"),
    ],
)
def test_refused_channels(value: str, problem: str) -> None:
    rules = [parse_rule("route", "^/ sse:${C}")]
    with pytest.raises(RefusedChannel, match=problem):
        resolve_request(rules, request("/", C=value), DEFAULT_SERVER)


@pytest.mark.parametrize("value", ["x" * MAX_CHANNEL_LENGTH, "with space", "ünïcødé ✓", "a:b/c?d=e", "$1"])
def test_accepted_channels(value: str) -> None:
    rules = [parse_rule("route", "^/ sse:${C}")]
    assert channel_of(rules, request("/", C=value)) == value.encode("utf-8")


def test_allow_pattern() -> None:
    rule = parse_rule("route", "^/e/(.+)$ sse:$1", allow=r"[a-z]{1,8}")
    assert channel_of([rule], request("/e/news")) == b"news"
    with pytest.raises(RefusedChannel, match="allow"):
        resolve_request([rule], request("/e/news!"), DEFAULT_SERVER)
    with pytest.raises(RefusedChannel, match="allow"):
        resolve_request([rule], request("/e/toolongname"), DEFAULT_SERVER)
    assert with_allow(rule, None).allow is None
    with pytest.raises(RuleError, match="invalid allow regex"):
        parse_rule("route", "^/ sse:x", allow="(")


def test_check_channel_returns_utf8() -> None:
    assert check_channel("é") == "é".encode()


# Properties.

_channels = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n\x00"), min_size=1, max_size=MAX_CHANNEL_LENGTH
).filter(lambda c: len(c.encode("utf-8")) <= MAX_CHANNEL_LENGTH)


@given(_channels)
def test_any_valid_channel_round_trips_through_the_query_string(channel: str) -> None:
    rules = [parse_rule("route", "^/events$ sse:${qs[c]}")]
    variables = request("/events", QUERY_STRING=urlencode({"c": channel}))
    assert channel_of(rules, variables) == channel.encode("utf-8")


@given(st.text(max_size=300))
def test_refused_exactly_when_invalid(value: str) -> None:
    rules = [parse_rule("route", "^/ sse:${V}")]
    try:
        data = value.encode("utf-8")
        valid = bool(value) and not set(value) & {"\r", "\n", "\x00"} and len(data) <= MAX_CHANNEL_LENGTH
    except UnicodeEncodeError:
        valid = False
    try:
        got = channel_of(rules, request("/", V=value))
    except RefusedChannel:
        assert not valid
    else:
        assert valid and got == value.encode("utf-8")


@given(st.sampled_from(["route", "route-uri", "route-if", "final-route-if-not"]), st.text(max_size=60))
def test_any_rule_text_parses_or_raises_rule_error(kind: str, text: str) -> None:
    try:
        rule = parse_rule(kind, text)  # type: ignore[arg-type]
    except RuleError as e:
        assert "\n" not in str(e)
    else:
        try:
            resolve_request([rule], request("/x", QUERY_STRING="a=1"), DEFAULT_SERVER)
            resolve_response([rule], request("/x"), DEFAULT_SERVER)
        except RefusedChannel:
            pass


@given(st.text(st.sampled_from("$}{[]1a:q cos-"), max_size=20))
def test_any_template_tokenises_or_raises_rule_error(text: str) -> None:
    try:
        template = Template(text)
    except RuleError:
        return
    assert isinstance(template.substitute({"a": "A"}), str)


def test_a_deployment_address_keeps_its_commas_in_a_server_argument() -> None:
    """``sentinel://h1,h2/NAME`` and ``cluster://h1,h2`` list hosts with commas, the argument separator."""
    action = parse_action("sse:server=sentinel://a:1,b:2/m?db=1,subscribe=$1,buffer_size=3")
    assert action.server == "sentinel://a:1,b:2/m?db=1"
    assert action.channel == "$1" and action.buffer_size == 3
    assert action._fixed_server == parse_server("sentinel://a:1,b:2/m?db=1")
    assert parse_action(actions.action_text(action)) == action
    assert parse_action("sse:server=cluster://a:1,b:2,subscribe=x").server == "cluster://a:1,b:2"
    # Elsewhere a bare comma still separates arguments: a typo is reported, not swallowed.
    with pytest.raises(RuleError, match="not key=value"):
        parse_action("sse:server=a:1,b:2,subscribe=x")
