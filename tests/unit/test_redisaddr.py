"""parse_server: every address form the config and the rules accept, and the ones they refuse."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssebridge.address import DEFAULT_SERVER, RedisServer, parse_server


@pytest.fixture(autouse=True)
def no_leaked_delayed_calls() -> Iterator[None]:
    """Pure functions: no reactor, so conftest's per-test reactor settle is not needed here."""
    yield


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:6379", RedisServer()),
        ("redis.example:7000", RedisServer(host="redis.example", port=7000)),
        ("localhost", RedisServer(host="localhost")),
        ("  cache-1:1  ", RedisServer(host="cache-1", port=1)),
        ("[::1]:6380", RedisServer(host="::1", port=6380)),
        ("[::1]", RedisServer(host="::1")),
        ("/run/redis.sock", RedisServer("unix", path="/run/redis.sock")),
        ("./redis.sock", RedisServer("unix", path="./redis.sock")),
        ("../r", RedisServer("unix", path="../r")),
        ("redis.sock", RedisServer("unix", path="redis.sock")),
        ("unix:/tmp/r", RedisServer("unix", path="/tmp/r")),
        ("unix:///path/redis.sock", RedisServer("unix", path="/path/redis.sock")),
        (
            "unix:///path/redis.sock?db=2&password=x",
            RedisServer("unix", path="/path/redis.sock", password="x", db=2),
        ),
        ("unix://u:p@/s.sock", RedisServer("unix", path="/s.sock", username="u", password="p")),
        ("redis://h", RedisServer(host="h")),
        ("redis://h:1234/5", RedisServer(host="h", port=1234, db=5)),
        ("redis://h/", RedisServer(host="h")),
        ("redis://user:secret@h:1", RedisServer(host="h", port=1, username="user", password="secret")),
        ("redis://:secret@h", RedisServer(host="h", password="secret")),
        ("redis://us%40er:p%3Aw%2Fd@h", RedisServer(host="h", username="us@er", password="p:w/d")),
        ("redis://[::1]:7/0", RedisServer(host="::1", port=7, db=0)),
        ("redis://h?db=3", RedisServer(host="h", db=3)),
        ("redis://", RedisServer()),
        ("REDIS://h", RedisServer(host="h")),
        ("rediss://h:6380", RedisServer("tls", host="h", port=6380)),
        ("rediss://u:p@h/1", RedisServer("tls", host="h", username="u", password="p", db=1)),
    ],
)
def test_forms(text: str, expected: RedisServer) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty address"),
        ("   ", "empty address"),
        ("h:0", "not in 1-65535"),
        ("h:65536", "not in 1-65535"),
        ("h:-1", "not a number"),
        ("h:", "empty port"),
        (":6379", "empty host"),
        ("h:port", "not a number"),
        ("ftp://h", "unknown scheme 'ftp'"),
        ("http://h:80", "unknown scheme 'http'"),
        ("a b", "whitespace"),
        ("h\n:1", "whitespace"),
        ("::1", "needs brackets"),
        ("[::1", "unclosed"),
        ("[nope]:1", "bad IPv6"),
        ("[::1]x", "unexpected"),
        ("h!:1", "bad host"),
        ("redis://h/x", "not a number"),
        ("redis://h/1?db=2", "twice"),
        ("redis://h?timeout=3", "unknown parameter 'timeout'"),
        ("redis://h:99999", "not in 1-65535"),
        ("redis://h#frag", "fragment"),
        ("unix://host/p", "not a host"),
        ("unix://", "absolute path"),
        ("unix:", "empty unix socket path"),
    ],
)
def test_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse_server(text)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_default_server() -> None:
    assert DEFAULT_SERVER == RedisServer("tcp", "127.0.0.1", 6379)
    assert DEFAULT_SERVER.describe() == "127.0.0.1:6379"


@pytest.mark.parametrize(
    "text",
    [
        "redis://user:hunter2@h:1/2",
        "rediss://:hunter2@h",
        "unix:///s.sock?password=hunter2",
        "unix://u:hunter2@/s.sock?db=1",
    ],
)
def test_password_never_shown(text: str) -> None:
    server = parse_server(text)
    assert server.password == "hunter2"
    for shown in (server.describe(), str(server), repr(server)):
        assert "hunter2" not in shown


@pytest.mark.parametrize(
    ("text", "described"),
    [
        ("h:1", "h:1"),
        ("[::1]:2", "[::1]:2"),
        ("rediss://h", "rediss://h:6379"),
        ("redis://u:p@h/3", "redis://u@h:6379/3"),
        ("/run/r.sock", "unix:/run/r.sock"),
        ("unix:///r.sock?db=4", "unix:///r.sock?db=4"),
    ],
)
def test_describe(text: str, described: str) -> None:
    assert parse_server(text).describe() == described


def test_hashable_as_connection_key() -> None:
    assert len({parse_server("h:1"), parse_server("redis://h:1"), parse_server("h:2")}) == 2


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_hosts = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)


@st.composite
def _servers(draw: st.DrawFn) -> RedisServer:
    kind = draw(st.sampled_from(["tcp", "tls", "unix"]))
    username = draw(st.none() | _names)
    db = draw(st.none() | st.integers(0, 15))
    if kind == "unix":
        parts = draw(st.lists(st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True), min_size=1, max_size=4))
        return RedisServer("unix", path="/" + "/".join(parts), username=username, db=db)
    host = draw(_hosts)
    port = draw(st.integers(1, 65535))
    return RedisServer(kind, host=host, port=port, username=username, db=db)  # type: ignore[arg-type]


@given(_servers())
def test_describe_reads_back(server: RedisServer) -> None:
    """What the logs say is an address the config accepts, naming the same server."""
    assert parse_server(server.describe()) == server


@given(_servers(), _names)
def test_url_credentials_round_trip(server: RedisServer, password: str) -> None:
    from urllib.parse import quote

    if server.kind == "unix":
        return
    scheme = "rediss" if server.kind == "tls" else "redis"
    user = quote(server.username or "", safe="")
    host = f"[{server.host}]" if ":" in server.host else server.host
    db = f"/{server.db}" if server.db is not None else ""
    text = f"{scheme}://{user}:{quote(password, safe='')}@{host}:{server.port}{db}"
    assert parse_server(text) == dataclasses.replace(server, password=password)


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        server = parse_server(text)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert server.kind in ("tcp", "tls", "unix", "sentinel", "cluster")
        if server.kind != "unix":
            assert 1 <= server.port <= 65535 and server.host


@st.composite
def _deployments(draw: st.DrawFn) -> RedisServer:
    kind = draw(st.sampled_from(["sentinel", "cluster"]))
    nodes = tuple(
        draw(st.lists(st.tuples(_hosts, st.integers(1, 65535)), min_size=1, max_size=4, unique=True))
    )
    username = draw(st.none() | _names)
    if kind == "cluster":
        return RedisServer("cluster", *nodes[0], username=username, nodes=nodes)
    master = draw(st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True))
    db = draw(st.none() | st.integers(0, 15))
    sentinel_username = draw(st.none() | _names)
    return RedisServer(
        "sentinel",
        *nodes[0],
        username=username,
        db=db,
        nodes=nodes,
        master=master,
        sentinel_username=sentinel_username,
    )


@given(_deployments())
def test_deployment_describe_reads_back(server: RedisServer) -> None:
    """A Sentinel or Cluster address, as logged, is an address the config accepts naming the same nodes."""
    assert parse_server(server.describe()) == server


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "sentinel://s1:26379,s2:26380,[::1]/mymaster",
            RedisServer(
                "sentinel",
                "s1",
                26379,
                nodes=(("s1", 26379), ("s2", 26380), ("::1", 26379)),
                master="mymaster",
            ),
        ),
        (
            "sentinel://app:s%40cret@s1/cache.main?db=3&sentinel_password=sp&sentinel_username=sen",
            RedisServer(
                "sentinel",
                "s1",
                26379,
                username="app",
                password="s@cret",
                db=3,
                nodes=(("s1", 26379),),
                master="cache.main",
                sentinel_username="sen",
                sentinel_password="sp",
            ),
        ),
        (
            "cluster://n1:7000,n2:7001,n1:7000",
            RedisServer("cluster", "n1", 7000, nodes=(("n1", 7000), ("n2", 7001))),
        ),
        ("cluster://:pw@n1", RedisServer("cluster", "n1", 6379, password="pw", nodes=(("n1", 6379),))),
    ],
)
def test_deployment_forms(text: str, expected: RedisServer) -> None:
    server = parse_server(text)
    assert server == expected
    assert server.is_deployment
    assert "s@cret" not in repr(server) and "sp" not in repr(server).replace("sparse", "")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sentinel://s1:26379", "master's name"),
        ("sentinel:///mymaster", "at least one host"),
        ("sentinel://s1/bad/name", "bad master name"),
        ("sentinel://s1,,s2/m", "empty host"),
        ("sentinel://s1:0/m", "not in 1-65535"),
        ("cluster://n1/2", "database 0 only"),
        ("cluster://n1?db=1", "database 0 only"),
        ("cluster://n1?sentinel_password=x", "unknown parameter"),
        ("cluster://", "at least one host"),
    ],
)
def test_deployment_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_server(text)


def test_deployment_node_is_plain_tcp_with_the_credentials() -> None:
    server = parse_server("sentinel://app:pw@s1/m?db=2")
    node = server.at("10.0.0.5", 6380)
    assert node == RedisServer("tcp", "10.0.0.5", 6380, username="app", password="pw", db=2)
    assert not node.is_deployment
