"""Templates of the routing language: ``$1``, ``${VAR}``, ``${qs[key]}``, ``${cookie[name]}``.

A template is split into literal and variable parts once, when the config is read; substituting it
for a request is a join. Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl

from ssebridge.routing.errors import RuleError

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

    def render(self, template: Template, escape: Callable[[str], str] | None = None) -> str:
        """``template`` substituted; with ``escape``, every substituted value goes through it (the
        template's own literal text does not)."""
        if template.literal is not None:
            return template.literal
        out: list[str] = []
        for part in template.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = self._group(part) if isinstance(part, int) else self._lookup(part)
            out.append(escape(value) if escape is not None else value)
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


_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def glob_escape(text: str) -> str:
    """``text`` as a Redis glob pattern matching exactly itself: ``*``, ``?``, ``[``, ``]`` and ``\\``
    escaped with a backslash.

    A value substituted into a ``psubscribe`` pattern goes through this, so the request supplies only
    a literal piece of the pattern: a client sending ``*`` must not widen ``room.${1}`` to every
    channel on the server. The pattern's own text, written in the config, keeps its glob meaning.
    """
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def compile_regex(regex: str, what: str) -> re.Pattern[str]:
    """``regex`` compiled, or a ``RuleError`` naming ``what`` it was."""
    try:
        return re.compile(regex)
    except (re.error, RecursionError, OverflowError) as e:
        raise RuleError(f"invalid {what} {regex!r}: {e}") from None
