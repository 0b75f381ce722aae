"""Actions of the routing language: ``sse:CHANNEL``, ``sseraw:CHANNEL`` and the key-value form
``sse:server=ADDR,subscribe=CHANNEL,subscribe=OTHER,psubscribe=PATTERN,buffer_size=N,name_events=1``.
Pure: no Twisted, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ssebridge.address import RedisServer, parse_server
from ssebridge.routing.errors import RuleError
from ssebridge.routing.templates import Template

__all__ = ["ACTION_KEYS", "Action", "Mode", "action_text", "offload_action", "parse_action"]

Mode = Literal["sse", "sseraw"]
_MODES: tuple[Mode, ...] = ("sse", "sseraw")
#: The keys of the key-value form; ``subscribe`` and ``psubscribe`` may repeat, the others may not.
ACTION_KEYS = ("server", "subscribe", "psubscribe", "buffer_size", "name_events")
_REPEATABLE = frozenset(["subscribe", "psubscribe"])
_TRUE = frozenset(["1", "true", "yes", "on"])
_FALSE = frozenset(["0", "false", "no", "off"])


# Actions.


@dataclass(frozen=True)
class Action:
    """An ``sse``/``sseraw`` action: its channels, patterns and server still as written.

    With ``templated`` (what ``parse_action`` makes), ``channel``, ``more_channels``, ``patterns`` and
    ``server`` are templates holding ``$1``/``${VAR}`` references, substituted per request. Without it
    (the default, for an action built in code from a value that was already substituted, such as a
    response header), they are taken literally: a ``$`` in a channel name an app chose must not be
    expanded a second time.

    ``channel`` is the first channel; ``more_channels`` the others; ``patterns`` Redis glob patterns
    (``PSUBSCRIBE``, live only). ``channel`` is ``""`` only when the action names patterns alone.
    ``name_events`` asks that an event the publisher gave no name be named after its channel, so a
    client of several channels can tell them apart.
    """

    mode: Mode
    channel: str
    server: str | None = None
    buffer_size: int | None = None
    templated: bool = False
    more_channels: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    name_events: bool = False
    _channel: Template = field(init=False, compare=False, repr=False)
    _more: tuple[Template, ...] = field(init=False, compare=False, repr=False)
    _patterns: tuple[Template, ...] = field(init=False, compare=False, repr=False)
    _server: Template | None = field(init=False, compare=False, repr=False)
    #: The server, parsed once, when it references nothing.
    _fixed_server: RedisServer | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise RuleError(f"unknown action mode {self.mode!r}")
        # Tuples, whatever sequence a caller passed: the action is hashable and compares by value.
        object.__setattr__(self, "more_channels", tuple(self.more_channels))
        object.__setattr__(self, "patterns", tuple(self.patterns))
        make = Template if self.templated else _literal_template
        channel = make(self.channel)
        server = make(self.server) if self.server is not None else None
        fixed: RedisServer | None = None
        if server is not None and server.literal is not None:
            try:
                fixed = parse_server(server.literal)
            except ValueError as e:
                raise RuleError(f"bad server {server.literal!r}: {e}") from None
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_more", tuple(make(c) for c in self.more_channels))
        object.__setattr__(self, "_patterns", tuple(make(p) for p in self.patterns))
        object.__setattr__(self, "_server", server)
        object.__setattr__(self, "_fixed_server", fixed)

    @property
    def fixed_server(self) -> RedisServer | None:
        """The server this action names when it names one that references nothing (else ``None``)."""
        return self._fixed_server

    @property
    def groups(self) -> tuple[int, ...]:
        """Regex group numbers the channels, patterns and server reference."""
        groups = self._channel.groups
        for template in (*self._more, *self._patterns):
            groups += template.groups
        return groups + self._server.groups if self._server is not None else groups

    @property
    def subscriptions(self) -> int:
        """How many channels and patterns the action names, duplicates written twice counted once:
        what each stream of it will hold, at most (a substitution may still make two equal)."""
        channels = {t for t in (self.channel, *self.more_channels) if t}
        return len(channels) + len(set(self.patterns))


def _literal_template(text: str) -> Template:
    template = Template.__new__(Template)
    object.__setattr__(template, "text", text)
    object.__setattr__(template, "parts", (text,) if text else ())
    object.__setattr__(template, "literal", text)
    return template


def parse_action(text: str) -> Action:
    """Parse ``sse:CHANNEL``, ``sseraw:CHANNEL`` or ``sse:server=..,subscribe=..,buffer_size=..``.

    As in the seed plugin, an argument holding ``=`` is a key-value list; anything else is the channel.
    In the key-value list ``subscribe=`` (a channel) and ``psubscribe=`` (a Redis glob pattern) may
    repeat, in the order the stream subscribes them; ``name_events=1`` names unnamed events after
    their channel.
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
    channels: list[str] = []
    patterns: list[str] = []
    for item in _items(args):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise RuleError(f"{name} argument {item.strip()!r} is not key=value")
        if key not in ACTION_KEYS:
            raise RuleError(f"unknown {name} key {key!r} (known: {', '.join(ACTION_KEYS)})")
        if key == "subscribe":
            if not value:
                raise RuleError(f"action {name} has an empty subscribe= channel")
            channels.append(value)
        elif key == "psubscribe":
            if not value:
                raise RuleError(f"action {name} has an empty psubscribe= pattern")
            patterns.append(value)
        elif key in values:
            raise RuleError(f"{name} key {key!r} given twice")
        values[key] = value
    if not channels and not patterns:
        raise RuleError(f"action {name} has no subscribe= channel (or psubscribe= pattern)")
    buffer_size: int | None = None
    if "buffer_size" in values:
        raw = values["buffer_size"]
        if not (raw.isascii() and raw.isdigit()) or int(raw) <= 0:
            raise RuleError(f"buffer_size {raw!r} is not a positive integer")
        buffer_size = int(raw)
    server = values.get("server")
    if server is not None and not server:
        raise RuleError(f"action {name} has an empty server=")
    name_events = False
    if "name_events" in values:
        flag = values["name_events"].lower()
        if flag not in _TRUE | _FALSE:
            raise RuleError(f"name_events {values['name_events']!r} is not 1, true, 0 or false")
        name_events = flag in _TRUE
    first = channels[0] if channels else ""
    return Action(
        mode,
        first,
        server,
        buffer_size,
        templated=True,
        more_channels=tuple(channels[1:]),
        patterns=tuple(patterns),
        name_events=name_events,
    )


def _items(args: str) -> list[str]:
    """``args`` split at its commas, but for the commas inside a ``server=sentinel://h1,h2/NAME`` or
    ``server=cluster://h1,h2`` address: what follows such a comma continues the address until an item
    starts with a known key."""
    items: list[str] = []
    for item in args.split(","):
        if items and item.partition("=")[0].strip() not in ACTION_KEYS:
            key, _, value = items[-1].partition("=")
            if key.strip() == "server" and value.strip().lower().startswith(("sentinel://", "cluster://")):
                items[-1] += "," + item
                continue
        items.append(item)
    return items


def action_text(action: Action) -> str:
    """The action written back in the seed's syntax (for logs and ``Rule.text``); ``parse_action``
    reads it back to an equal action when the names hold no ``,`` (the key-value separator)."""
    if (
        action.server is None
        and action.buffer_size is None
        and not action.more_channels
        and not action.patterns
        and not action.name_events
        and action.channel
    ):
        return f"{action.mode}:{action.channel}"
    items = []
    if action.server is not None:
        items.append(f"server={action.server}")
    items.extend(f"subscribe={c}" for c in (action.channel, *action.more_channels) if c)
    items.extend(f"psubscribe={p}" for p in action.patterns)
    if action.buffer_size is not None:
        items.append(f"buffer_size={action.buffer_size}")
    if action.name_events:
        items.append("name_events=1")
    return f"{action.mode}:{','.join(items)}"


def offload_action(value: str) -> Action:
    """The action an app asks for with ``X-SSE-Offload: user-42, news`` (or the seed's variable): the
    comma-separated channels, each trimmed, empty items ignored, taken literally (never substituted).

    A value with no channel at all gives an action with an empty channel, which resolving refuses
    ("empty channel") as it always has.
    """
    channels = [c.strip() for c in value.split(",")]
    channels = [c for c in channels if c]
    if not channels:
        return Action("sse", "")
    return Action("sse", channels[0], more_channels=tuple(channels[1:]))
