"""The uWSGI ini syntax of the seed plugin: the seed README's examples load unchanged.

Only the ``[uwsgi]`` section is read, as ``uwsgi --ini file`` does. Lines are ``key = value``; lines
starting with ``;`` or ``#`` are comments (there are no inline comments: ``;`` is an argument
separator in conditions such as ``equal:${A};b``). Keys may repeat and keep their order, which is what
makes ``route`` rules an ordered list. ``_`` and ``-`` in key names are the same, as in uWSGI options.

The uWSGI magic variables ``%d`` (the config file's directory, with a trailing ``/``), ``%p`` (the
file's absolute path), ``%n`` (its name without extension) and ``%%`` are expanded in values.

A key this bridge does not implement (``master``, ``processes``, ``socket``...) is not an
error, since the seed's files are full of them, but it is never dropped silently: each one becomes a
warning with its file and line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

from ssebridge.config.builder import ConfigBuilder, mule_from_script, static_map
from ssebridge.config.endpoint import listen_endpoint
from ssebridge.config.exposure import check_open_routes
from ssebridge.config.settings import SETTINGS_BY_INI, setting_from_text
from ssebridge.routing.rules import RULE_KINDS, RuleError, RuleKind, with_allow

__all__ = ["IGNORED_KEYS", "LISTEN_KEYS", "parse"]

#: Keys that name an HTTP listener (``http`` is uWSGI's router; here it is the same listener).
LISTEN_KEYS = frozenset(["http-socket", "http", "listen"])
#: Keys accepted and ignored without a warning: loading the plugin is implicit here.
IGNORED_KEYS = frozenset(["plugin", "plugins"])

_KINDS: dict[str, RuleKind] = {kind: kind for kind in RULE_KINDS}
#: ``route-public`` values, spelled as uWSGI spells its booleans.
_PUBLIC = {
    **dict.fromkeys(("true", "1", "yes", "on"), True),
    **dict.fromkeys(("false", "0", "no", "off"), False),
}
_MAGIC = re.compile(r"%([dpn%])")
_SHOWN = 80


def _magic(value: str, config: Path) -> str:
    if "%" not in value:
        return value
    table = {"d": str(config.parent) + "/", "p": str(config), "n": config.stem, "%": "%"}
    return _MAGIC.sub(lambda m: table[m.group(1)], value)


def _shorten(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def parse(text: str, builder: ConfigBuilder, config: Path) -> None:
    """Read an ini file's text into ``builder``; raise ``ConfigError`` with the file and line."""
    section: str | None = None
    found = False
    noted_sections: set[str] = set()
    handlers = _handlers(builder)
    builder.known_keys = [*handlers, *IGNORED_KEYS]
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                # Checking goes on (with the keys below it ignored), so the rest is still reported.
                builder.attempt(_refuse, builder.error(number, f"bad section header {_shorten(line)!r}"))
                section = "?"
                noted_sections.add(section)  # the error says it; no warning about its keys too
                continue
            section = line[1:-1].strip()
            found = found or section == "uwsgi"
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            error = builder.error(number, f"expected 'key = value', got {_shorten(line)!r}")
            if not builder.collecting:
                raise error
            builder.problems.append(error)
            continue
        if section != "uwsgi":
            where = "outside any section" if section is None else f"in section [{section}]"
            noted = section or ""
            if noted not in noted_sections:
                noted_sections.add(noted)
                builder.warn(number, f"keys {where} ignored (only [uwsgi] is read)")
            continue
        name = key.replace("_", "-")
        handler = handlers.get(name)
        if handler is not None:
            builder.attempt(handler, name, _magic(value, config), number)
        elif name in IGNORED_KEYS:
            continue
        else:
            builder.unknown(number, key)
    if not found:
        builder.attempt(_refuse, builder.error(None, "no [uwsgi] section"))
    check_open_routes(builder, "ini")


def _refuse(error: Exception) -> None:
    raise error


def _handlers(builder: ConfigBuilder) -> dict[str, Callable[[str, str, int], None]]:
    """Key name to handler(key, value, line); a handler raises ``ConfigError`` for a bad value."""

    def listen(key: str, value: str, line: int) -> None:
        try:
            builder.add_listen(listen_endpoint(value), line, key)
        except ValueError as e:
            raise builder.error(line, f"{key}: {e}") from None

    def rule(key: str, value: str, line: int) -> None:
        builder.add_rule(_KINDS[key], value, line)

    def route_allow(key: str, value: str, line: int) -> None:
        if not builder.rules:
            raise builder.error(line, f"{key} must follow the rule it applies to")
        try:
            builder.rules[-1] = with_allow(builder.rules[-1], value)
        except RuleError as e:
            raise builder.error(line, f"{key}: {e}") from None

    def route_public(key: str, value: str, line: int) -> None:
        if not builder.rules:
            raise builder.error(line, f"{key} must follow the rule it applies to")
        flag = _PUBLIC.get(value.strip().lower())
        if flag is None:
            raise builder.error(line, f"{key}: expected true or false, not {_shorten(value)!r}")
        builder.rules[-1] = dataclasses.replace(builder.rules[-1], public=flag)

    def static(key: str, value: str, line: int) -> None:
        prefix, eq, path = value.partition("=")
        if not eq:
            raise builder.error(line, f"{key}: expected /PREFIX=PATH, got {_shorten(value)!r}")
        try:
            builder.static_maps.append(static_map(prefix, path, builder.base))
        except ValueError as e:
            raise builder.error(line, f"{key}: {e}") from None
        if not builder.static_maps[-1].path.exists():
            builder.warn(line, f"{key}: {str(builder.static_maps[-1].path)!r} does not exist (yet)")

    def mule(key: str, value: str, line: int) -> None:
        try:
            builder.mules.append(mule_from_script(value, builder.base))
        except ValueError as e:
            raise builder.error(line, f"{key}: {e}") from None

    def setting(key: str, value: str, line: int) -> None:
        spec = SETTINGS_BY_INI[key]
        try:
            builder.set(spec, setting_from_text(spec, value), line, key)
        except ValueError as e:
            raise builder.error(line, f"{key}: {e}") from None

    handlers: dict[str, Callable[[str, str, int], None]] = {}
    for name in LISTEN_KEYS:
        handlers[name] = listen
    for kind in _KINDS:
        handlers[kind] = rule
    for name in SETTINGS_BY_INI:
        handlers[name] = setting

    def wsgi_file(key: str, value: str, line: int) -> None:
        builder.add_wsgi_file(value, line, key)

    def header(key: str, value: str, line: int) -> None:
        builder.add_header_mapping(key == "pull-header", value, line, key)

    handlers["wsgi-file"] = wsgi_file
    handlers["collect-header"] = header
    handlers["pull-header"] = header
    handlers["route-allow"] = route_allow
    handlers["route-public"] = route_public
    handlers["static-map"] = static
    handlers["mule"] = mule
    return handlers
