"""The one endpoint-string parser (``ssebridge.config.endpoint``): what the config checks is what the
runtime opens, and both read a string the way Twisted does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssebridge.config.endpoint import Endpoint, listen_endpoint, parse_endpoint
from ssebridge.runtime.listeners import with_backlog


@pytest.mark.parametrize(
    ("text", "kind", "port", "path", "interface", "backlog"),
    [
        ("tcp:9090", "tcp", 9090, None, None, None),
        ("tcp:9090:interface=127.0.0.1:backlog=10", "tcp", 9090, None, "127.0.0.1", 10),
        ("tcp:interface=127.0.0.1:port=9100", "tcp", 9100, None, "127.0.0.1", None),
        (r"tcp6:9100:interface=\:\:1", "tcp6", 9100, None, "::1", None),
        ("ssl:443:privateKey=k.pem", "ssl", 443, None, None, None),
        ("unix:/run/s.sock:mode=660", "unix", None, "/run/s.sock", None, None),
        ("unix:address=/run/s.sock:backlog=0", "unix", None, "/run/s.sock", None, 0),
        (r"unix:/run/a\:b.sock", "unix", None, "/run/a:b.sock", None, None),
        ("systemd:domain=INET6:index=2", "systemd", None, None, None, None),
    ],
)
def test_parse(
    text: str, kind: str, port: int | None, path: str | None, interface: str | None, backlog: int | None
) -> None:
    endpoint = parse_endpoint(text)
    assert (endpoint.kind, endpoint.port, endpoint.path, endpoint.interface, endpoint.backlog) == (
        kind,
        port,
        path,
        interface,
        backlog,
    )


def test_systemd_fields() -> None:
    endpoint = parse_endpoint("systemd:domain=INET6:index=2")
    assert (endpoint.systemd_index, endpoint.systemd_domain) == (2, "INET6")
    assert parse_endpoint("systemd:index=0").systemd_domain == "INET"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tcp:http", "port 'http' is not a number"),
        ("tcp:70000", "port '70000'"),
        ("tcp:interface=127.0.0.1", "has no port"),
        ("tcp:9090:backlog=abc", "backlog 'abc' is not a whole number"),
        ("tcp:9090:backlog=-1", "backlog '-1'"),
        ("tcp:9090:backlog=99999999999", "backlog '99999999999'"),
        ("unix:mode=660", "has no path"),
        ("unix:/s:mode=999", "mode '999' is not an octal"),
        ("systemd:domain=INET", "needs index=N"),
        ("systemd:domain=IPX:index=0", "domain must be"),
        ("what:is:this", "unknown type 'what'"),
        ("port=1:tcp", "does not start with its type"),
    ],
)
def test_bad_endpoints(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_endpoint(text)


@pytest.mark.parametrize(
    ("text", "index", "expected"),
    [
        ("tcp:9100:interface=127.0.0.1", 3, "tcp:9103:interface=127.0.0.1"),
        ("tcp:0:interface=127.0.0.1", 3, "tcp:0:interface=127.0.0.1"),
        ("tcp:65534", 1, "tcp:65535"),
        ("unix:/run/m.sock:mode=660", 1, "unix:/run/m.sock.1:mode=660"),
    ],
)
def test_for_worker(text: str, index: int, expected: str) -> None:
    assert str(parse_endpoint(text).for_worker(index)) == expected


def test_for_worker_refuses_a_port_past_65535() -> None:
    with pytest.raises(ValueError, match="port 65535 plus worker 1 is past 65535"):
        parse_endpoint("tcp:65535").for_worker(1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp:9090", "tcp:9090:backlog=4096"),
        ("tcp:9090:backlog=10", "tcp:9090:backlog=10"),
        ("unix:/run/s.sock", "unix:/run/s.sock:backlog=4096"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        (r"unix:/run/a\:b.sock", r"unix:/run/a\:b.sock:backlog=4096"),
    ],
)
def test_with_backlog(text: str, expected: str) -> None:
    assert with_backlog(text) == expected


def test_uwsgi_forms_render_through_the_same_parser() -> None:
    for text in (":9090", "[::1]:9090", "/run/a:b.sock", "./s.sock"):
        rendered = listen_endpoint(text)
        assert str(parse_endpoint(rendered)) == rendered


def _twisted_reading(text: str) -> tuple[list[Any], dict[str, Any]]:
    from twisted.internet.endpoints import _parse  # type: ignore[attr-defined]

    args, kwargs = _parse(text)
    return list(args), dict(kwargs)


def _our_reading(endpoint: Endpoint) -> tuple[list[Any], dict[str, Any]]:
    return (
        [endpoint.kind, *(v for k, v in endpoint.args if k is None)],
        {k: v for k, v in endpoint.args if k is not None},
    )


_piece = st.text(alphabet=st.sampled_from("ab1:=\\/."), max_size=8)


@given(st.lists(_piece, max_size=5))
def test_tokenized_as_twisted_does(pieces: list[str]) -> None:
    """Any string, read by us and by Twisted's own tokenizer, gives the same arguments; and ``str()``
    of what we read reads back the same."""
    text = ":".join(["tcp", *pieces])
    try:
        from ssebridge.config.endpoint import _split

        kind, args = _split(text)
    except ValueError:
        return
    endpoint = Endpoint(kind, tuple(args))
    assert _our_reading(endpoint) == _twisted_reading(text)
    again = _split(str(endpoint))
    assert Endpoint(again[0], tuple(again[1])) == endpoint
