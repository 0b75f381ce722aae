"""The open-route check: a rule that takes its channel from the request, with no ``allow`` pattern,
beside an upstream app, is a config error unless the rule says ``public``.

Why: with an upstream, the app is where requests are authenticated (it answers 401, or hands the
connection over to the channel of the user it knows). A request-phase rule such as
``^/events/(?P<channel>...)`` -> ``sse:${channel}`` is tried first and answers without asking the app,
so anyone may read ``/events/user-alice``. The built-in default has such a rule for its demo, and
adding ``proxy`` next to it is the natural next step: that must not silently publish every channel.
An ``allow`` pattern (the channels a client may name) or ``public = true`` (every channel it can name
is meant for anyone) says the rule is intended.

Response-phase rules (``final-route-if*``) are not concerned: they run on the app's answer.
"""

from __future__ import annotations

from typing import Literal

from ssebridge.config.builder import ConfigBuilder
from ssebridge.routing.rules import Rule

__all__ = ["check_open_routes", "is_open", "upstream_key"]

Syntax = Literal["toml", "ini"]

#: Rule kinds tried on the request, before the app sees it.
_REQUEST_KINDS = frozenset(["route", "route-uri", "route-qs", "route-host", "route-if", "route-if-not"])


def is_open(rule: Rule) -> bool:
    """Whether ``rule`` answers a request with a channel (or pattern) the request chose, unchecked."""
    if rule.kind not in _REQUEST_KINDS or rule.allow is not None or rule.public:
        return False
    action = rule.action
    templates = (action._channel, *action._more, *action._patterns)
    # An empty template (a patterns-only action's channel) names nothing.
    return any(t.literal is None for t in templates)


def upstream_key(builder: ConfigBuilder, syntax: Syntax) -> str | None:
    """The key that configured an upstream app, as written in ``syntax``; ``None`` without one."""
    if builder.wsgi_file is not None:
        return "wsgi_file" if syntax == "toml" else "wsgi-file"
    if builder.values.get("proxy"):
        return "proxy"
    if builder.values.get("wsgi_module"):
        return "wsgi" if syntax == "toml" else "module"
    return None


def check_open_routes(builder: ConfigBuilder, syntax: Syntax) -> None:
    """Raise ``ConfigError`` (or, while checking, note one per rule) for every open rule beside an
    upstream app. Called by a parser once the whole file is read: the upstream may come after the rule."""
    upstream = upstream_key(builder, syntax)
    if upstream is None:
        return
    allow, public = ("allow = 'REGEX'", "public = true") if syntax == "toml" else (
        "route-allow = REGEX after it",
        "route-public = true",
    )
    fix = f"add {allow} (the channels a client may name) or, if they are all meant for anyone, {public}"
    for rule, line in zip(builder.rules, builder.rule_lines, strict=True):
        if not is_open(rule):
            continue
        what = "[[route]]" if syntax == "toml" else rule.kind
        problem = (
            f"{what}: the channel comes from the request and is not checked, and {upstream} sets an app: "
            f"this rule answers before the app is asked, so any client may read any channel "
            f"(another user's too); {fix}"
        )

        def refuse(line: int | None = line, problem: str = problem) -> None:
            raise builder.error(line, problem)

        builder.attempt(refuse)
