"""Actions of the routing language: ``sse:CHANNEL``, ``sseraw:CHANNEL`` and the key-value form
``sse:server=ADDR,subscribe=CHANNEL,buffer_size=N``. Pure: no Twisted, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ssebridge.redis.address import RedisServer, parse_server
from ssebridge.routing.errors import RuleError
from ssebridge.routing.templates import Template

Mode = Literal["sse", "sseraw"]
_MODES: tuple[Mode, ...] = ("sse", "sseraw")
_ACTION_KEYS = ("server", "subscribe", "buffer_size")


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
