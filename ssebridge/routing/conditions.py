"""Conditions of the routing language (``route-if``, ``final-route-if``): ``empty:${X}``,
``equal:${A};b``, ``regexp:...`` and uWSGI's aliases. Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ssebridge.routing.errors import RuleError
from ssebridge.routing.templates import Template, _Context, compile_regex

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
            regex = compile_regex(self.args[1], "condition regex")
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


