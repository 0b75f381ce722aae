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
- actions ``sse:CHANNEL``, ``sseraw:CHANNEL`` or ``sse:server=ADDR,subscribe=CHANNEL,buffer_size=N``.

Everything that can be decided when the config is read is decided then: regexes are compiled and
templates are split into literal and variable parts, so a request costs one regex search per rule
and a join, never a re-parse.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args
from urllib.parse import parse_qsl

from ssebridge.redis.address import RedisServer, parse_server

__all__ = [
    "CONDITIONS",
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
    "declared_servers",
    "make_rule",
    "parse_action",
    "parse_condition",
    "parse_rule",
    "resolve_action",
    "resolve_request",
    "resolve_response",
    "with_allow",
]

Mode = Literal["sse", "sseraw"]
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

#: Longest channel name a request may resolve to, in bytes.
MAX_CHANNEL_LENGTH = 256

_MODES: tuple[Mode, ...] = ("sse", "sseraw")
_ACTION_KEYS = ("server", "subscribe", "buffer_size")


class RuleError(ValueError):
    """A rule, condition or action that does not parse; the message says why in one line."""


class RefusedChannel(ValueError):
    """A substituted channel name that must not be subscribed (empty, CR/LF/NUL, too long)."""


# Templates.
#
# A part is a literal ``str``, an ``int`` (a regex group: ``$1``, ``${1}``), or a pair naming where a
# value comes from: ("var", NAME) a request variable, or the group NAME when the matching regex has
# one; ("qs", KEY) a query-string parameter; ("cookie", NAME) a cookie.
_Source = Literal["var", "qs", "cookie"]
_Part = str | int | tuple[_Source, str]

_TOKEN = re.compile(r"\$(?:(\d)|\{([^{}]*)\})")
_ACCESSOR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\[(.*)\]", re.DOTALL)


@dataclass(frozen=True)
class Template:
    """A string with ``$N``/``${...}`` references, split once into parts so that substituting is a join.

    ``$0``-``$9`` and ``${N}`` are groups of the regex that matched; ``${name}`` is the named group
    ``name`` of that regex if it has one, else the request variable ``name`` (names may hold ``-``,
    as in ``${X-SSE-OFFLOAD}``); ``${qs[key]}`` is a query-string parameter, percent-decoded;
    ``${cookie[name]}`` a cookie of the ``Cookie`` header. Anything missing substitutes to ``""``.
    A ``$`` that starts none of these is kept as it is.
    """

    text: str
    parts: tuple[_Part, ...] = field(init=False, compare=False, repr=False)
    #: The whole value when the template references nothing: substituting it is free.
    literal: str | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts = _tokenise(self.text)
        object.__setattr__(self, "parts", parts)
        literal = "".join(p for p in parts if isinstance(p, str)) if _all_literal(parts) else None
        object.__setattr__(self, "literal", literal)

    @property
    def groups(self) -> tuple[int, ...]:
        """The regex group numbers this template references."""
        return tuple(p for p in self.parts if isinstance(p, int))

    def substitute(self, variables: Mapping[str, str], match: re.Match[str] | None = None) -> str:
        """The template with every reference replaced from ``variables`` and ``match``."""
        if self.literal is not None:
            return self.literal
        return _Context(variables, match).render(self)


def _all_literal(parts: tuple[_Part, ...]) -> bool:
    return all(isinstance(p, str) for p in parts)


def _tokenise(text: str) -> tuple[_Part, ...]:
    parts: list[_Part] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        pos = m.end()
        digit, name = m.group(1), m.group(2)
        if digit is not None:
            parts.append(int(digit))
        else:
            parts.append(_reference(name))
    if "${" in text[pos:]:
        raise RuleError(f"unclosed '${{' in {text!r}")
    if pos < len(text):
        parts.append(text[pos:])
    # Adjacent literals (left by a lone "$") are merged so rendering does fewer joins.
    merged: list[_Part] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] = merged[-1] + part
        else:
            merged.append(part)
    return tuple(merged)


def _reference(name: str) -> _Part:
    if not name:
        raise RuleError("empty reference '${}'")
    if name.isascii() and name.isdigit():
        number = int(name)
        if number > 99:
            raise RuleError(f"group ${{{name}}} is out of range")
        return number
    accessor = _ACCESSOR.fullmatch(name)
    if accessor is not None:
        source, key = accessor.group(1), accessor.group(2)
        if source not in ("qs", "cookie"):
            raise RuleError(f"unknown reference '${{{name}}}' (only ${{qs[...]}} and ${{cookie[...]}})")
        if not key:
            raise RuleError(f"empty key in '${{{name}}}'")
        return ("qs", key) if source == "qs" else ("cookie", key)
    if any(c.isspace() for c in name):
        raise RuleError(f"whitespace in reference '${{{name}}}'")
    return ("var", name)


class _Context:
    """One request's view for substitution; the query string and cookies are parsed once, if used."""

    __slots__ = ("variables", "match", "_qs", "_cookies")

    def __init__(self, variables: Mapping[str, str], match: re.Match[str] | None) -> None:
        self.variables = variables
        self.match = match
        self._qs: dict[str, str] | None = None
        self._cookies: dict[str, str] | None = None

    def render(self, template: Template) -> str:
        if template.literal is not None:
            return template.literal
        out: list[str] = []
        for part in template.parts:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, int):
                out.append(self._group(part))
            else:
                out.append(self._lookup(part))
        return "".join(out)

    def _group(self, number: int) -> str:
        match = self.match
        if match is None or number > (match.re.groups or 0):
            return ""
        return match.group(number) or ""

    def _lookup(self, part: tuple[_Source, str]) -> str:
        source, key = part
        if source == "var":
            match = self.match
            if match is not None and key in match.re.groupindex:
                return match.group(key) or ""
            return self.variables.get(key, "")
        if source == "qs":
            if self._qs is None:
                self._qs = _parse_query(self.variables.get("QUERY_STRING", ""))
            return self._qs.get(key, "")
        if self._cookies is None:
            self._cookies = _parse_cookies(self.variables.get("HTTP_COOKIE", ""))
        return self._cookies.get(key, "")


def _parse_query(query: str) -> dict[str, str]:
    """Query parameters, percent-decoded; the first of repeated keys wins (as uWSGI's ``qs`` does)."""
    params: dict[str, str] = {}
    # surrogateescape, not "replace": %E9 and %EB must stay distinct (see ssebridge.routing.wire).
    for key, value in parse_qsl(query, keep_blank_values=True, errors="surrogateescape"):
        params.setdefault(key, value)
    return params


def _parse_cookies(header: str) -> dict[str, str]:
    """Cookies of a ``Cookie`` header; the first of repeated names wins. Not ``http.cookies``: it
    rejects a whole header over one odd cookie, and browsers send odd cookies."""
    cookies: dict[str, str] = {}
    for item in header.split(";"):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies.setdefault(name, value)
    return cookies


# Actions.


@dataclass(frozen=True)
class Action:
    """An ``sse``/``sseraw`` action: the channel and server still as written.

    With ``templated`` (what ``parse_action`` makes), ``channel`` and ``server`` are templates holding
    ``$1``/``${VAR}`` references, substituted per request. Without it (the default, for an action built
    in code from a value that was already substituted, such as a response header), they are taken
    literally: a ``$`` in a channel name an app chose must not be expanded a second time.
    """

    mode: Mode
    channel: str
    server: str | None = None
    buffer_size: int | None = None
    templated: bool = False
    _channel: Template = field(init=False, compare=False, repr=False)
    _server: Template | None = field(init=False, compare=False, repr=False)
    #: The server, parsed once, when it references nothing.
    _fixed_server: RedisServer | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise RuleError(f"unknown action mode {self.mode!r}")
        if self.templated:
            channel = Template(self.channel)
            server = Template(self.server) if self.server is not None else None
        else:
            channel = _literal_template(self.channel)
            server = _literal_template(self.server) if self.server is not None else None
        fixed: RedisServer | None = None
        if server is not None and server.literal is not None:
            try:
                fixed = parse_server(server.literal)
            except ValueError as e:
                raise RuleError(f"bad server {server.literal!r}: {e}") from None
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_server", server)
        object.__setattr__(self, "_fixed_server", fixed)

    @property
    def groups(self) -> tuple[int, ...]:
        """Regex group numbers the channel and server reference."""
        groups = self._channel.groups
        return groups + self._server.groups if self._server is not None else groups


def _literal_template(text: str) -> Template:
    template = Template.__new__(Template)
    object.__setattr__(template, "text", text)
    object.__setattr__(template, "parts", (text,))
    object.__setattr__(template, "literal", text)
    return template


def parse_action(text: str) -> Action:
    """Parse ``sse:CHANNEL``, ``sseraw:CHANNEL`` or ``sse:server=..,subscribe=..,buffer_size=..``.

    As in the seed plugin, an argument holding ``=`` is a key-value list; anything else is the channel.
    """
    text = text.strip()
    name, colon, args = text.partition(":")
    name = name.strip()
    if name not in _MODES:
        if not name:
            raise RuleError("missing action")
        raise RuleError(f"unknown action {name!r} (only sse and sseraw are supported)")
    mode: Mode = "sse" if name == "sse" else "sseraw"
    args = args.strip()
    if not colon or not args:
        raise RuleError(f"action {name} has no channel ({name}:CHANNEL)")
    if "=" not in args:
        return Action(mode, args, templated=True)
    values: dict[str, str] = {}
    for item in args.split(","):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise RuleError(f"{name} argument {item.strip()!r} is not key=value")
        if key not in _ACTION_KEYS:
            raise RuleError(f"unknown {name} key {key!r} (known: {', '.join(_ACTION_KEYS)})")
        if key in values:
            raise RuleError(f"{name} key {key!r} given twice")
        values[key] = value
    channel = values.get("subscribe")
    if channel is None:
        raise RuleError(f"action {name} has no subscribe= channel")
    if not channel:
        raise RuleError(f"action {name} has an empty subscribe= channel")
    buffer_size: int | None = None
    if "buffer_size" in values:
        raw = values["buffer_size"]
        if not (raw.isascii() and raw.isdigit()) or int(raw) <= 0:
            raise RuleError(f"buffer_size {raw!r} is not a positive integer")
        buffer_size = int(raw)
    server = values.get("server")
    if server is not None and not server:
        raise RuleError(f"action {name} has an empty server=")
    return Action(mode, channel, server, buffer_size, templated=True)


# Conditions.


def _empty(a: str) -> bool:
    return not a


def _equal(a: str, b: str) -> bool:
    return a == b


def _not_equal(a: str, b: str) -> bool:
    return a != b


def _startswith(a: str, b: str) -> bool:
    return a.startswith(b)


def _endswith(a: str, b: str) -> bool:
    return a.endswith(b)


def _contains(a: str, b: str) -> bool:
    return b in a


def _icontains(a: str, b: str) -> bool:
    return b.lower() in a.lower()


#: Condition names (uWSGI's, with its aliases) to (canonical name, number of arguments).
CONDITIONS: Mapping[str, tuple[str, int]] = {
    "empty": ("empty", 1),
    "equal": ("equal", 2),
    "isequal": ("equal", 2),
    "eq": ("equal", 2),
    "==": ("equal", 2),
    "isnotequal": ("isnotequal", 2),
    "ne": ("isnotequal", 2),
    "!=": ("isnotequal", 2),
    "startswith": ("startswith", 2),
    "endswith": ("endswith", 2),
    "contains": ("contains", 2),
    "contain": ("contains", 2),
    "icontains": ("icontains", 2),
    "regexp": ("regexp", 2),
    "re": ("regexp", 2),
}
_PREDICATES: Mapping[str, Callable[..., bool]] = {
    "empty": _empty,
    "equal": _equal,
    "isnotequal": _not_equal,
    "startswith": _startswith,
    "endswith": _endswith,
    "contains": _contains,
    "icontains": _icontains,
}


@dataclass(frozen=True)
class Condition:
    """A uWSGI routing condition such as ``empty:${X}`` or ``equal:${A};b``.

    ``args`` are as written. Every argument is a template substituted when the condition is tested,
    except the regex of ``regexp``, which is compiled once: substituting into a regex would make every
    request compile one, and a ``$`` anchor would be taken for a reference.
    """

    name: str
    args: tuple[str, ...]
    _templates: tuple[Template, ...] = field(init=False, compare=False, repr=False)
    _regex: re.Pattern[str] | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        known = CONDITIONS.get(self.name)
        if known is None:
            raise RuleError(f"unknown condition {self.name!r} (known: {', '.join(sorted(CONDITIONS))})")
        canonical, arity = known
        if len(self.args) != arity:
            raise RuleError(f"condition {self.name} takes {arity} argument(s), got {len(self.args)}")
        object.__setattr__(self, "name", canonical)
        regex: re.Pattern[str] | None = None
        templates: tuple[Template, ...]
        if canonical == "regexp":
            regex = _compile(self.args[1], "condition regex")
            templates = (Template(self.args[0]),)
        else:
            templates = tuple(Template(a) for a in self.args)
        object.__setattr__(self, "_templates", templates)
        object.__setattr__(self, "_regex", regex)

    @property
    def groups(self) -> int:
        """How many groups a ``regexp`` condition's match offers the action (0 for other conditions)."""
        return self._regex.groups if self._regex is not None else 0

    @property
    def regex(self) -> re.Pattern[str] | None:
        """The compiled regex of a ``regexp`` condition."""
        return self._regex

    def holds(self, variables: Mapping[str, str]) -> bool:
        """Whether the condition is true for a request with these variables."""
        return self.test(variables)[0]

    def test(self, variables: Mapping[str, str]) -> tuple[bool, re.Match[str] | None]:
        """Whether the condition holds, and for ``regexp`` the match (its groups feed ``$1``...)."""
        context = _Context(variables, None)
        values = [context.render(t) for t in self._templates]
        if self._regex is not None:
            match = self._regex.search(values[0])
            return match is not None, match
        return bool(_PREDICATES[self.name](*values)), None


def parse_condition(text: str) -> Condition:
    """Parse ``NAME:ARGS``; two-argument conditions split ``ARGS`` at the first ``;``, as uWSGI does
    (so the second argument, a regex for instance, may itself hold ``;``)."""
    name, colon, args = text.partition(":")
    if not colon:
        raise RuleError(f"condition {text!r} is not NAME:ARGS")
    known = CONDITIONS.get(name)
    if known is None:
        raise RuleError(f"unknown condition {name!r} (known: {', '.join(sorted(CONDITIONS))})")
    if known[1] == 1:
        return Condition(name, (args,))
    first, semicolon, second = args.partition(";")
    if not semicolon:
        raise RuleError(f"condition {name} takes two arguments separated by ';'")
    return Condition(name, (first, second))


# Rules.


@dataclass(frozen=True)
class Rule:
    """One routing rule. ``pattern`` is set for the ``route*`` kinds; ``condition`` for the ``*-if*`` kinds.

    ``allow``, when set, is a regex the substituted channel must match in full: the last word on what a
    client may subscribe to when the channel comes from the request.
    """

    kind: RuleKind
    action: Action
    pattern: re.Pattern[str] | None = None
    condition: Condition | None = None
    text: str = ""
    allow: re.Pattern[str] | None = None


def _compile(regex: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except (re.error, RecursionError, OverflowError) as e:
        raise RuleError(f"invalid {what} {regex!r}: {e}") from None


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
        pattern = _compile(matcher, "regex")
        available = pattern.groups
    for number in action.groups:
        if number > available:
            raise RuleError(f"action references group ${number} but the rule's regex has {available}")
    rule = Rule(checked, action, pattern, condition, text or f"{matcher} {action_text(action)}")
    return with_allow(rule, allow) if allow is not None else rule


def with_allow(rule: Rule, allow: str | re.Pattern[str] | None) -> Rule:
    """``rule`` with its allow pattern replaced (``None`` removes it)."""
    pattern = allow if allow is None or isinstance(allow, re.Pattern) else _compile(allow, "allow regex")
    return dataclasses.replace(rule, allow=pattern)


def action_text(action: Action) -> str:
    """The action written back in the seed's syntax (for logs and ``Rule.text``)."""
    if action.server is None and action.buffer_size is None:
        return f"{action.mode}:{action.channel}"
    items = []
    if action.server is not None:
        items.append(f"server={action.server}")
    items.append(f"subscribe={action.channel}")
    if action.buffer_size is not None:
        items.append(f"buffer_size={action.buffer_size}")
    return f"{action.mode}:{','.join(items)}"


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


@dataclass(frozen=True)
class Resolved:
    """What a matching rule resolved to for one request: ready for the hub."""

    mode: Mode
    channel: bytes
    server: RedisServer
    buffer_size: int | None


def check_channel(channel: str, allow: re.Pattern[str] | None = None) -> bytes:
    """The channel as the bytes to subscribe to; raise ``RefusedChannel`` when it must not be.

    CR, LF and NUL are refused although Redis bulk strings could carry them: they would let a channel
    name forge log lines and protocol text wherever it is echoed. Other bytes (spaces, any Unicode)
    are ordinary channel names.
    """
    if not channel:
        raise RefusedChannel("empty channel")
    for char, name in (("\r", "CR"), ("\n", "LF"), ("\x00", "NUL")):
        if char in channel:
            raise RefusedChannel(f"channel contains {name}")
    try:
        data = channel.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: bytes that were not UTF-8 on the wire (ssebridge.routing.wire).
        raise RefusedChannel("channel is not valid Unicode (not UTF-8 on the wire)") from None
    if len(data) > MAX_CHANNEL_LENGTH:
        raise RefusedChannel(f"channel is longer than {MAX_CHANNEL_LENGTH} bytes ({len(data)})")
    if allow is not None and allow.fullmatch(channel) is None:
        raise RefusedChannel("channel not allowed by the rule's allow pattern")
    return data


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
) -> Resolved:
    channel = check_channel(context.render(action._channel), allow)
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
    return Resolved(action.mode, channel, server, action.buffer_size)


def resolve_action(
    action: Action,
    variables: Mapping[str, str],
    default_server: RedisServer,
    match: re.Match[str] | None = None,
    allow: re.Pattern[str] | None = None,
    servers: Collection[RedisServer] | None = None,
) -> Resolved:
    """Substitute one action for a request; raise ``RefusedChannel`` when the result must not stream.

    A templated server must be one of ``servers`` when given (see ``resolve_request``).
    """
    return _resolve(action, _Context(variables, match), default_server, allow, servers)


def _apply(
    rules: Sequence[Rule],
    kinds: frozenset[str],
    variables: Mapping[str, str],
    default_server: RedisServer,
    servers: Collection[RedisServer] | None,
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
        return _resolve(rule.action, _Context(variables, match), default_server, rule.allow, servers)
    return None


def resolve_request(
    rules: Sequence[Rule],
    variables: Mapping[str, str],
    default_server: RedisServer,
    servers: Collection[RedisServer] | None = None,
) -> Resolved | None:
    """Apply the request-phase rules (``route*``, ``route-if``, ``route-if-not``) in order.

    The first rule whose regex matches or whose condition holds decides: later rules are not tried
    even when its channel is refused. Raises ``RefusedChannel`` when that rule substitutes to a
    channel (or server) that must not be subscribed. With ``servers`` (what the bridge always passes:
    ``declared_servers(default_server, rules)``, computed once), a templated server must be one of
    them; without, any server substitutes, as the routing language itself defines.
    """
    return _apply(rules, REQUEST_KINDS, variables, default_server, servers)


def resolve_response(
    rules: Sequence[Rule],
    variables: Mapping[str, str],
    default_server: RedisServer,
    servers: Collection[RedisServer] | None = None,
) -> Resolved | None:
    """Apply the response-phase rules (``final-route-if``, ``final-route-if-not``) in order."""
    return _apply(rules, RESPONSE_KINDS, variables, default_server, servers)
