"""Which servers a request may name: the ones the config declares, found in one place."""

from __future__ import annotations

import re

import pytest

from ssebridge.address import RedisServer, parse_server
from ssebridge.routing.rules import (
    RefusedChannel,
    declared_servers,
    parse_action,
    parse_rule,
    resolve_action,
    resolve_request,
)

DEFAULT = parse_server("127.0.0.1:6379")
RULES = [
    parse_rule("route", "^/s/(.+)/([^/]+)$ sse:server=$1,subscribe=$2"),
    parse_rule("route", "^/b/(.+)$ sse:server=redis://:pw@10.0.0.2:6380/3,subscribe=$1"),
]


def resolve(path: str) -> RedisServer:
    resolved = resolve_request(RULES, {"PATH_INFO": path}, DEFAULT, declared_servers(DEFAULT, RULES))
    assert resolved is not None
    return resolved.server


def test_the_declared_servers_are_the_default_and_every_literal_server() -> None:
    assert declared_servers(DEFAULT, RULES) == {DEFAULT, parse_server("redis://:pw@10.0.0.2:6380/3")}
    assert declared_servers(DEFAULT) == {DEFAULT}


def test_a_request_may_name_a_declared_server_by_its_address() -> None:
    assert resolve("/s/127.0.0.1:6379/x") == DEFAULT
    # The address alone gets the declared credentials and database.
    assert resolve("/s/10.0.0.2:6380/x") == parse_server("redis://:pw@10.0.0.2:6380/3")


@pytest.mark.parametrize(
    "server",
    [
        "127.0.0.1:31001",
        "localhost:6379",
        "redis://10.0.0.2:6380/0",
        "redis://u:x@10.0.0.2:6380",
        "/tmp/r.sock",
        "rediss://127.0.0.1:6379",
    ],
)
def test_any_other_server_is_refused(server: str) -> None:
    with pytest.raises(RefusedChannel, match="not one the configuration declares|bad server"):
        resolve(f"/s/{server}/x")


def test_resolve_action_checks_the_servers_it_is_given() -> None:
    action = parse_action("sse:server=$1,subscribe=x")
    variables = {"PATH_INFO": "/"}
    match = re.search("(.+)", "127.0.0.1:7000")
    with pytest.raises(RefusedChannel):
        resolve_action(action, variables, DEFAULT, match, servers={DEFAULT})
    other = parse_server("127.0.0.1:7000")
    assert resolve_action(action, variables, DEFAULT, match, servers={other}).server == other
