"""The seed's routing language as pure functions: rules, conditions, actions and ``${VAR}`` substitution.

No Twisted here. A request is described by a mapping of variables (``PATH_INFO``, ``QUERY_STRING``,
``HTTP_*`` headers, and any the upstream app added); the functions decide whether a rule takes it and
which channel it streams from.

The language is uWSGI's internal routing, cut down to what the sse-offload plugin used:

- ``route = REGEX ACTION`` (regex searched in ``PATH_INFO``), and the ``route-uri`` (``REQUEST_URI``),
  ``route-qs`` (``QUERY_STRING``) and ``route-host`` (``HTTP_HOST``) variants;
- ``route-if = COND:ARGS ACTION`` and ``route-if-not``, evaluated when the request arrives;
- ``final-route-if`` and ``final-route-if-not``, evaluated on the upstream app's response, when the
  variables the app set (``uwsgi.add_var``, collected headers) are known;
- actions ``sse:CHANNEL``, ``sseraw:CHANNEL`` or ``sse:server=ADDR,subscribe=CHANNEL,buffer_size=N``;
  ``subscribe=`` may repeat and ``psubscribe=PATTERN`` adds Redis glob patterns, so one stream can carry
  several channels (at most ``max_channels`` channels and patterns together).

Everything that can be decided when the config is read is decided then: regexes are compiled and
templates are split into literal and variable parts, so a request costs one regex search per rule
and a join, never a re-parse.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from ssebridge.address import RedisServer, parse_server
from ssebridge.routing.actions import Action, Mode, action_text, offload_action, parse_action
from ssebridge.routing.channels import Resolved, check_channel, check_pattern, subscriptions
from ssebridge.routing.conditions import CONDITIONS, Condition, parse_condition
from ssebridge.routing.errors import RefusedChannel, RuleError
from ssebridge.routing.limits import MAX_CHANNEL_LENGTH, MAX_CHANNELS
from ssebridge.routing.templates import Template, _Context, compile_regex, glob_escape

__all__ = [
    "CONDITIONS",
    "MAX_CHANNELS",
    "MAX_CHANNEL_LENGTH",
    "REQUEST_KINDS",
    "RESPONSE_KINDS",
    "RULE_KINDS",
    "Action",
    "Condition",
    "Mode",
    "RefusedChannel",
    "Resolved",
    "Rule",
    "RuleError",
    "RuleKind",
    "Template",
    "action_text",
    "check_channel",
    "check_pattern",
    "declared_servers",
    "glob_escape",
    "make_rule",
    "offload_action",
    "parse_action",
    "parse_condition",
    "parse_rule",
    "resolve_action",
    "resolve_request",
    "resolve_response",
    "with_allow",
]

RuleKind = Literal[
    "route",
    "route-uri",
    "route-qs",
    "route-host",
    "route-if",
    "route-if-not",
    "final-route-if",
    "final-route-if-not",
]

#: Every rule kind, in the order the documentation lists them.
RULE_KINDS: tuple[RuleKind, ...] = get_args(RuleKind)
#: Kinds evaluated when a request arrives (``resolve_request``).
REQUEST_KINDS: frozenset[str] = frozenset(RULE_KINDS[:6])
#: Kinds evaluated on the upstream app's response (``resolve_response``).
RESPONSE_KINDS: frozenset[str] = frozenset(RULE_KINDS[6:])

#: The variable each regex rule kind searches, as in uWSGI.
_SUBJECTS: Mapping[str, str] = {
    "route": "PATH_INFO",
    "route-uri": "REQUEST_URI",
    "route-qs": "QUERY_STRING",
    "route-host": "HTTP_HOST",
}
_CONDITION_KINDS = frozenset(["route-if", "route-if-not", "final-route-if", "final-route-if-not"])
_NEGATED_KINDS = frozenset(["route-if-not", "final-route-if-not"])


# Rules.


@dataclass(frozen=True)
class Rule:
    """One routing rule. ``pattern`` is set for the ``route*`` kinds; ``condition`` for the ``*-if*`` kinds.

    ``allow``, when set, is a regex the substituted channel must match in full: the last word on what a
    client may subscribe to when the channel comes from the request. ``public`` says that every channel
    the rule can name is meant for anyone: without it (or ``allow``), a rule whose channel comes from the
    request is a config error beside an upstream app (``ssebridge.config.exposure``).
    """

    kind: RuleKind
    action: Action
    pattern: re.Pattern[str] | None = None
    condition: Condition | None = None
    text: str = ""
    allow: re.Pattern[str] | None = None
    public: bool = False


def _check_kind(kind: str) -> RuleKind:
    for known in RULE_KINDS:
        if kind == known:
            return known
    raise RuleError(f"unknown rule kind {kind!r}")


def make_rule(
    kind: str,
    matcher: str,
    action: Action,
    *,
    allow: str | re.Pattern[str] | None = None,
    text: str = "",
) -> Rule:
    """Build a rule from its parts: ``matcher`` is the regex (``route*``) or ``COND:ARGS`` (``*-if*``).

    Checks that the action references no regex group the rule cannot supply, so a ``$2`` typo fails
    when the config is read rather than streaming from a wrong channel.
    """
    checked = _check_kind(kind)
    pattern: re.Pattern[str] | None = None
    condition: Condition | None = None
    if checked in _CONDITION_KINDS:
        condition = parse_condition(matcher)
        available = condition.groups
    else:
        if not matcher:
            raise RuleError(f"{checked} has no regex")
        pattern = compile_regex(matcher, "regex")
        available = pattern.groups
    for number in action.groups:
        if number > available:
            raise RuleError(f"action references group ${number} but the rule's regex has {available}")
    rule = Rule(checked, action, pattern, condition, text or f"{matcher} {action_text(action)}")
    return with_allow(rule, allow) if allow is not None else rule


def with_allow(rule: Rule, allow: str | re.Pattern[str] | None) -> Rule:
    """``rule`` with its allow pattern replaced (``None`` removes it).

    A channel or pattern the rule writes literally must pass its own allow regex: one that does not
    would refuse every request, so it is a ``RuleError`` when the config is read instead.
    """
    pattern = allow if allow is None or isinstance(allow, re.Pattern) else compile_regex(allow, "allow regex")
    if pattern is not None:
        action = rule.action
        for what, templates in (
            ("channel", (action._channel, *action._more)),
            ("pattern", action._patterns),
        ):
            for template in templates:
                literal = template.literal
                if literal and pattern.fullmatch(literal) is None:
                    raise RuleError(f"the allow regex refuses the rule's own {what} {literal!r}")
    return dataclasses.replace(rule, allow=pattern)


# Only spaces and tabs separate, as in uWSGI: other (Unicode) whitespace may be part of a regex.
_BLANKS = " \t\r\n"
_RULE_SPLIT = re.compile(r"([^ \t]+)[ \t]+(.+)", re.DOTALL)


def parse_rule(kind: RuleKind, text: str, *, allow: str | re.Pattern[str] | None = None) -> Rule:
    """Parse the value of a ``route``/``route-if``/... key; raise ``RuleError``.

    The value is ``REGEX ACTION`` or ``COND:ARGS ACTION``, split at the first whitespace as uWSGI
    splits it: the regex or condition cannot hold a space (use ``\\s`` or ``\\x20`` in a regex).
    """
    stripped = text.strip(_BLANKS)
    if not stripped:
        raise RuleError(f"empty {kind} rule")
    parts = _RULE_SPLIT.fullmatch(stripped)
    if parts is None:
        raise RuleError(f"{kind} rule {stripped!r} has no action (expected '{_usage(kind)}')")
    matcher, action_part = parts.groups()
    return make_rule(kind, matcher, parse_action(action_part), allow=allow, text=stripped)


def _usage(kind: str) -> str:
    return "COND:ARGS ACTION" if kind in _CONDITION_KINDS else "REGEX ACTION"


# Resolution.


def declared_servers(default_server: RedisServer, rules: Iterable[Rule] = ()) -> frozenset[RedisServer]:
    """The servers the config declares: the default (the ``redis`` setting) and every literal
    ``server=`` of the rules. A server that comes from the request must be one of them."""
    servers = {default_server}
    for rule in rules:
        if rule.action._fixed_server is not None:
            servers.add(rule.action._fixed_server)
    return frozenset(servers)


def _declared(server: RedisServer, servers: Collection[RedisServer]) -> RedisServer:
    """``server`` as the config declares it; raise ``RefusedChannel`` when it declares no such server.

    A request may name a declared server exactly, or by its address alone (no credentials, no
    database) when one declared server has that address: it then gets that server's credentials and
    database, which the config gave it anyway. Anything else is refused before any connection is made:
    a server taken from the request would otherwise let a client make the bridge connect anywhere.
    """
    if server in servers:
        return server
    if server.username is None and server.password is None and server.db is None:
        same = [
            s
            for s in servers
            if (s.kind, s.host, s.port, s.path) == (server.kind, server.host, server.port, server.path)
        ]
        if len(same) == 1:
            return same[0]
    raise RefusedChannel(f"server {server.describe()} is not one the configuration declares")


def _resolve(
    action: Action,
    context: _Context,
    default_server: RedisServer,
    allow: re.Pattern[str] | None,
    servers: Collection[RedisServer] | None,
    max_channels: int,
) -> Resolved:
    if not action.more_channels and not action.patterns:
        # The one-channel case, as it always was: no lists built per request.
        channels = [check_channel(context.render(action._channel), allow)]
        if max_channels < 1:
            raise RefusedChannel(f"more than {max_channels} channels")
        patterns: list[bytes] = []
    else:
        channels, patterns = subscriptions(action, context, allow, max_channels)
    server = default_server
    if action._fixed_server is not None:
        server = action._fixed_server
    elif action._server is not None:
        text = context.render(action._server)
        try:
            server = parse_server(text)
        except ValueError as e:
            raise RefusedChannel(f"bad server {text!r}: {e}") from None
        if servers is not None:
            server = _declared(server, servers)
    return Resolved(
        action.mode,
        channels[0] if channels else b"",
        server,
        action.buffer_size,
        tuple(channels[1:]),
        tuple(patterns),
        action.name_events,
    )


def resolve_action(
    action: Action,
    variables: Mapping[str, str],
    default_server: RedisServer,
    match: re.Match[str] | None = None,
    allow: re.Pattern[str] | None = None,
    servers: Collection[RedisServer] | None = None,
    *,
    max_channels: int = MAX_CHANNELS,
) -> Resolved:
    """Substitute one action for a request; raise ``RefusedChannel`` when the result must not stream.

    A templated server must be one of ``servers`` when given (see ``resolve_request``). More than
    ``max_channels`` channels and patterns together are refused ("more than N channels").
    """
    return _resolve(action, _Context(variables, match), default_server, allow, servers, max_channels)


def _apply(
    rules: Sequence[Rule],
    kinds: frozenset[str],
    variables: Mapping[str, str],
    default_server: RedisServer,
    servers: Collection[RedisServer] | None,
    max_channels: int,
) -> Resolved | None:
    for rule in rules:
        kind = rule.kind
        if kind not in kinds:
            continue
        pattern = rule.pattern
        if pattern is not None:
            match = pattern.search(variables.get(_SUBJECTS[kind], ""))
            if match is None:
                continue
        else:
            condition = rule.condition
            if condition is None:
                continue
            holds, match = condition.test(variables)
            if kind in _NEGATED_KINDS:
                # A negated regexp condition matched nothing, so there are no groups to offer.
                holds, match = not holds, None
            if not holds:
                continue
        return _resolve(
            rule.action, _Context(variables, match), default_server, rule.allow, servers, max_channels
        )
    return None


def resolve_request(
    rules: Sequence[Rule],
    variables: Mapping[str, str],
    default_server: RedisServer,
    servers: Collection[RedisServer] | None = None,
    *,
    max_channels: int = MAX_CHANNELS,
) -> Resolved | None:
    """Apply the request-phase rules (``route*``, ``route-if``, ``route-if-not``) in order.

    The first rule whose regex matches or whose condition holds decides: later rules are not tried
    even when its channel is refused. Raises ``RefusedChannel`` when that rule substitutes to a
    channel (or server) that must not be subscribed. With ``servers`` (what the bridge always passes:
    ``declared_servers(default_server, rules)``, computed once), a templated server must be one of
    them; without, any server substitutes, as the routing language itself defines. A rule naming
    more than ``max_channels`` channels and patterns (after substitution, repeats counted once) is
    refused: ``RefusedChannel("more than N channels")``.
    """
    return _apply(rules, REQUEST_KINDS, variables, default_server, servers, max_channels)


def resolve_response(
    rules: Sequence[Rule],
    variables: Mapping[str, str],
    default_server: RedisServer,
    servers: Collection[RedisServer] | None = None,
    *,
    max_channels: int = MAX_CHANNELS,
) -> Resolved | None:
    """Apply the response-phase rules (``final-route-if``, ``final-route-if-not``) in order; refuse
    past ``max_channels`` as ``resolve_request`` does."""
    return _apply(rules, RESPONSE_KINDS, variables, default_server, servers, max_channels)
