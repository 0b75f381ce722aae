"""The native TOML syntax (read with ``tomllib``).

Schema (every key optional; docs/configuration.md has the full reference)::

    listen = ["tcp:9090:interface=127.0.0.1"]   # or one string; http-socket forms work too
    redis = "127.0.0.1:6379"                     # plus the other scalar keys of settings.SETTINGS

    [[route]]
    match = '^/events/(?P<channel>[a-z0-9]+)$'   # or match_uri, match_qs, match_host,
    action = "sse:${channel}"                    #    if, if_not, final_if, final_if_not
    allow = '[a-z0-9]{1,32}'                     # optional
    public = true                                # optional: required beside an app when the
                                                 #   channel comes from the request and no allow
    # instead of action: channel = "...", mode = "sse", server = "...", buffer_size = 8192,
    #   channels = ["user-${1}", "news"], patterns = ["room.*"], name_events = true

    [[static]]
    prefix = "/clock"
    path = "clock.html"

    [[mule]]
    command = ["python3", "clock.py"]            # or script = "clock.py"; optional cwd

``tomllib`` does not say on which line a value was, so a small scanner of the raw text finds the line
of each key for the messages; when it cannot (a key inside an inline table, say), the message names
the nearest table or the file alone.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from ssebridge.config.builder import ConfigBuilder, mule_from_command, mule_from_script, static_map
from ssebridge.config.endpoint import listen_endpoint
from ssebridge.config.exposure import check_open_routes
from ssebridge.config.settings import SETTINGS_BY_TOML, setting_from_value, type_name
from ssebridge.routing.rules import Action, RuleError, RuleKind, make_rule, parse_action

__all__ = ["ACTION_FIELDS", "MATCH_KEYS", "parse"]

#: The key of a ``[[route]]`` table that says what the rule tests, and the rule kind it makes.
MATCH_KEYS: Mapping[str, RuleKind] = {
    "match": "route",
    "match_uri": "route-uri",
    "match_qs": "route-qs",
    "match_host": "route-host",
    "if": "route-if",
    "if_not": "route-if-not",
    "final_if": "final-route-if",
    "final_if_not": "final-route-if-not",
}
#: The keys of the structured form of an action (instead of ``action = "sse:..."``).
ACTION_FIELDS = ("channel", "channels", "patterns", "name_events", "mode", "server", "buffer_size")
_ROUTE_KEYS = frozenset([*MATCH_KEYS, "action", "allow", "public", *ACTION_FIELDS])
_STATIC_KEYS = frozenset(["prefix", "path"])
#: The top-level keys that are not scalar settings.
TOP_KEYS = ("listen", "wsgi_file", "collect_header", "pull_header", "route", "static", "mule")
_MULE_KEYS = frozenset(["command", "script", "cwd"])

_Table = tuple[str, int | None] | None
_ERROR_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_ARRAY_HEADER = re.compile(r"\[\[\s*([^\[\]]+?)\s*\]\]")
_TABLE_HEADER = re.compile(r"\[\s*([^\[\]]+?)\s*\]")
_KEY = re.compile(r"""("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*[.=]""")


class _Lines:
    """Where keys and tables are in the raw text: first occurrence per (table, key)."""

    def __init__(self, text: str) -> None:
        self.keys: dict[tuple[_Table, str], int] = {}
        self.headers: dict[_Table, int] = {}
        counts: dict[str, int] = {}
        table: _Table = None
        in_string: str | None = None
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.strip()
            if in_string is not None:
                # Odd counts of the delimiter end a multi-line string; lines inside hold no keys.
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            if not line or line.startswith("#"):
                continue
            m = _ARRAY_HEADER.match(line)
            if m is not None:
                name = _unquote(m.group(1))
                index = counts.get(name, 0)
                counts[name] = index + 1
                table = (name, index)
                self.headers.setdefault(table, number)
                continue
            m = _TABLE_HEADER.match(line)
            if m is not None:
                table = (_unquote(m.group(1)), None)
                self.headers.setdefault(table, number)
                continue
            m = _KEY.match(line)
            if m is not None:
                self.keys.setdefault((table, _unquote(m.group(1))), number)
            for delimiter in ('"""', "'''"):
                if line.count(delimiter) % 2 == 1:
                    in_string = delimiter
                    break

    def line(self, table: _Table, key: str | None = None) -> int | None:
        """The line of ``key`` in ``table``, else of the table's header, else of the table's name as
        a top-level key (an array of inline tables), else ``None``."""
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        if table is None:
            # A top-level name written as a table header ([name] or [[name]]) rather than a key.
            return self.headers.get((key, None), self.headers.get((key, 0))) if key else None
        if table in self.headers:
            return self.headers[table]
        return self.keys.get((None, table[0]))


def _unquote(key: str) -> str:
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
        return key[1:-1]
    return key


def _decode_error(e: Exception) -> tuple[int | None, str]:
    message = str(e)
    m = _ERROR_POSITION.search(message)
    if m is None:
        return None, message.replace("(at end of document)", "at the end of the file").strip()
    return int(m.group(1)), f"{message[: m.start()]} (column {m.group(2)})"


def parse(text: str, builder: ConfigBuilder) -> None:
    """Read TOML text into ``builder``; raise ``ConfigError`` with the file and line."""
    try:
        data = tomllib.loads(text)
    except (ValueError, RecursionError) as e:
        # tomllib's own errors are ValueErrors; RecursionError is its answer to absurd nesting.
        line, problem = _decode_error(e) if isinstance(e, ValueError) else (None, "nesting too deep")
        if text.lstrip().startswith("[uwsgi]"):
            problem += " (this looks like a uWSGI ini file: name it .ini)"
        raise builder.error(line, f"TOML: {problem}") from None
    _Reader(builder, _Lines(text)).read(data)
    check_open_routes(builder, "toml")


class _Reader:
    def __init__(self, builder: ConfigBuilder, lines: _Lines) -> None:
        self.builder = builder
        self.lines = lines

    def read(self, data: Mapping[str, Any]) -> None:
        self.builder.known_keys = [*SETTINGS_BY_TOML, *TOP_KEYS]
        for key, value in data.items():
            self.builder.attempt(self.entry, key, value)

    def entry(self, key: str, value: Any) -> None:
        line = self.lines.line(None, key)
        if key == "listen":
            self.listen(value, line)
        elif key in SETTINGS_BY_TOML:
            setting = SETTINGS_BY_TOML[key]
            try:
                self.builder.set(setting, setting_from_value(setting, value), line, key)
            except (TypeError, ValueError) as e:
                raise self.builder.error(line, f"{key}: {e}") from None
        elif key == "wsgi_file":
            if not isinstance(value, str):
                raise self.builder.error(line, f"wsgi_file must be a string, not {type_name(value)}")
            self.builder.add_wsgi_file(value, line, key)
        elif key in ("collect_header", "pull_header"):
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise self.builder.error(
                    line, f'{key} must be an array of "Header-Name VARIABLE" strings, not {type_name(value)}'
                )
            for item in items:
                self.builder.add_header_mapping(key == "pull_header", item, line, key)
        elif key in ("route", "static", "mule"):
            handle = {"route": self.route, "static": self.static, "mule": self.mule}[key]
            for index, table in self.tables(key, value, line):
                self.builder.attempt(handle, table, (key, index))
        else:
            self.builder.unknown(line, key)

    def listen(self, value: object, line: int | None) -> None:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise self.builder.error(
                line, f"listen must be a string or an array of strings, not {type_name(value)}"
            )
        if not items:
            raise self.builder.error(line, "listen is empty: give at least one address")
        for item in items:
            try:
                self.builder.add_listen(listen_endpoint(item), line, "listen")
            except ValueError as e:
                raise self.builder.error(line, f"listen: {e}") from None

    def tables(self, key: str, value: object, line: int | None) -> list[tuple[int, dict[str, Any]]]:
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise self.builder.error(
                line, f"{key} must be an array of tables ([[{key}]]), not {type_name(value)}"
            )
        return list(enumerate(value))

    def _unknown_keys(self, table: Mapping[str, Any], known: frozenset[str], where: _Table) -> None:
        assert where is not None
        for key in table:
            if key not in known:
                self.builder.unknown(self.lines.line(where, key), key, known, f" in [[{where[0]}]]")

    def string(self, table: Mapping[str, Any], key: str, where: _Table, required: bool = True) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                assert where is not None
                raise self.builder.error(self.lines.line(where), f"[[{where[0]}]] has no {key}")
            return None
        if not isinstance(value, str):
            raise self.builder.error(
                self.lines.line(where, key), f"{key} must be a string, not {type_name(value)}"
            )
        return value

    def route(self, table: Mapping[str, Any], where: _Table) -> None:
        self._unknown_keys(table, _ROUTE_KEYS, where)
        header = self.lines.line(where)
        kinds = [k for k in MATCH_KEYS if k in table]
        if not kinds:
            raise self.builder.error(header, f"[[route]] needs one of {', '.join(MATCH_KEYS)}")
        if len(kinds) > 1:
            raise self.builder.error(
                self.lines.line(where, kinds[1]), f"[[route]] has both {kinds[0]} and {kinds[1]}: give one"
            )
        match_key = kinds[0]
        matcher = self.string(table, match_key, where)
        assert matcher is not None
        action = self.action(table, where)
        allow = self.string(table, "allow", where, required=False)
        public = table.get("public", False)
        if not isinstance(public, bool):
            raise self.builder.error(
                self.lines.line(where, "public"), f"public must be true or false, not {type_name(public)}"
            )
        kind = MATCH_KEYS[match_key]
        try:
            rule = make_rule(kind, matcher, action, allow=allow)
        except RuleError as e:
            raise self.builder.error(self.lines.line(where, match_key), f"route: {e}") from None
        self.builder.add_parsed_rule(dataclasses.replace(rule, public=public), header)

    def action(self, table: Mapping[str, Any], where: _Table) -> Action:
        structured = [k for k in ACTION_FIELDS if k in table]
        if "action" in table:
            if structured:
                raise self.builder.error(
                    self.lines.line(where, structured[0]), f"[[route]] has both action and {structured[0]}"
                )
            text = self.string(table, "action", where)
            assert text is not None
            try:
                return parse_action(text)
            except RuleError as e:
                raise self.builder.error(self.lines.line(where, "action"), f"route: {e}") from None
        if not any(k in table for k in ("channel", "channels", "patterns")):
            raise self.builder.error(
                self.lines.line(where), "[[route]] has no action (or channel, channels, patterns)"
            )
        channel = self.string(table, "channel", where, required=False)
        # channel and channels combine, channel first: a route grows a second channel by adding a key.
        channels = ([channel] if channel is not None else []) + self.names(
            table, "channels", "channel", where
        )
        patterns = self.names(table, "patterns", "pattern", where)
        if not channels and not patterns:
            raise self.builder.error(
                self.lines.line(where, "channels" if "channels" in table else "patterns"),
                "route: no channel and no pattern (both lists are empty)",
            )
        name_events = table.get("name_events", False)
        if not isinstance(name_events, bool):
            raise self.builder.error(
                self.lines.line(where, "name_events"),
                f"name_events must be true or false, not {type_name(name_events)}",
            )
        mode = self.string(table, "mode", where, required=False) or "sse"
        server = self.string(table, "server", where, required=False)
        # The route's key is the seed's buffer_size; what it sets is the route's client_buffer.
        client_buffer = table.get("buffer_size")
        if client_buffer is not None and (
            not isinstance(client_buffer, int) or isinstance(client_buffer, bool) or client_buffer <= 0
        ):
            raise self.builder.error(
                self.lines.line(where, "buffer_size"),
                f"buffer_size must be a positive integer, not {client_buffer!r}",
            )
        if mode not in ("sse", "sseraw"):
            raise self.builder.error(
                self.lines.line(where, "mode"), f"mode must be sse or sseraw, not {mode!r}"
            )
        if channel is not None and not channel.strip():
            raise self.builder.error(self.lines.line(where, "channel"), "route: empty channel")
        try:
            return Action(
                "sse" if mode == "sse" else "sseraw",
                channels[0] if channels else "",
                server.strip() if server is not None else None,
                client_buffer,
                templated=True,
                more_channels=tuple(channels[1:]),
                patterns=tuple(patterns),
                name_events=name_events,
            )
        except RuleError as e:
            key = next(k for k in ("channel", "channels", "patterns", "server") if k in table)
            raise self.builder.error(self.lines.line(where, key), f"route: {e}") from None

    def names(self, table: Mapping[str, Any], key: str, what: str, where: _Table) -> list[str]:
        """A route's ``channels`` or ``patterns``: an array of non-empty strings (templates), trimmed."""
        value = table.get(key, [])
        line = self.lines.line(where, key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.builder.error(line, f"{key} must be an array of strings, not {type_name(value)}")
        names = [v.strip() for v in value]
        if not all(names):
            raise self.builder.error(line, f"route: empty {what} in {key}")
        return names

    def static(self, table: Mapping[str, Any], where: _Table) -> None:
        self._unknown_keys(table, _STATIC_KEYS, where)
        prefix = self.string(table, "prefix", where)
        path = self.string(table, "path", where)
        assert prefix is not None and path is not None
        try:
            mapped = static_map(prefix, path, self.builder.base)
        except ValueError as e:
            raise self.builder.error(self.lines.line(where), f"static: {e}") from None
        if not mapped.path.exists():
            self.builder.warn(
                self.lines.line(where, "path"), f"static: {str(mapped.path)!r} does not exist (yet)"
            )
        self.builder.static_maps.append(mapped)

    def mule(self, table: Mapping[str, Any], where: _Table) -> None:
        self._unknown_keys(table, _MULE_KEYS, where)
        header = self.lines.line(where)
        if ("command" in table) == ("script" in table):
            raise self.builder.error(header, "[[mule]] needs exactly one of command and script")
        cwd = self.string(table, "cwd", where, required=False)
        try:
            if "script" in table:
                if cwd is not None:
                    raise ValueError("cwd goes with command; a script runs in the config's directory")
                script = self.string(table, "script", where)
                assert script is not None
                self.builder.mules.append(mule_from_script(script, self.builder.base))
                return
            command = table["command"]
            if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
                raise self.builder.error(
                    self.lines.line(where, "command"),
                    f"command must be an array of strings, not {type_name(command)}",
                )
            self.builder.mules.append(mule_from_command(command, cwd, self.builder.base))
        except ValueError as e:
            key = "script" if "script" in table else "command"
            raise self.builder.error(self.lines.line(where, key), f"mule: {e}") from None
