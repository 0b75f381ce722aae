"""Loading a config file: the syntax is chosen, the file read and parsed, the ``Config`` built.

The top of the config package: it imports both syntaxes, nothing in the package imports it (but the
``model`` facade).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ssebridge.address import DEFAULT_SERVER
from ssebridge.config import defaults
from ssebridge.config.builder import ConfigBuilder
from ssebridge.config.ini import parse as parse_ini
from ssebridge.config.schema import Config, ConfigError, MuleSpec, StaticMap
from ssebridge.config.toml import parse as parse_toml
from ssebridge.routing.rules import parse_rule

__all__ = [
    "CheckReport",
    "Note",
    "check_config",
    "check_report",
    "default_config",
    "first_section",
    "load_config",
]


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(file, line, "not valid UTF-8") from None


_SECTION = re.compile(r"\s*\[([^\[\]]*)\]\s*$")


def first_section(text: str) -> str | None:
    """The name of the first ``[section]`` line, skipping blank and comment lines; ``None`` if the
    first meaningful line is not a section header."""
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = _SECTION.match(line)
        return m.group(1).strip() if m else None
    return None


@dataclass(frozen=True)
class Note:
    """One line of a check's report: an error or a warning, with where it is."""

    file: str
    line: int | None
    text: str
    error: bool

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.text}"


@dataclass(frozen=True)
class CheckReport:
    """What ``check_report`` found: the config when it is sound, and every error and warning."""

    config: Config | None
    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[Note] = field(default_factory=list)

    def notes(self) -> list[Note]:
        """Errors and warnings together, in file order (a problem with no line last), errors first
        on a line."""
        notes = [Note(e.file, e.line, e.problem, True) for e in self.errors] + self.warnings
        return sorted(notes, key=lambda n: (n.line is None, n.line or 0, not n.error))


def check_report(path: str | Path, strict: bool = False) -> CheckReport:
    """Load a config the way ``load_config`` does, but collect every problem instead of stopping at
    the first, the checks that span several keys (two upstream apps, a listener workers cannot
    share...) included, and keep the warnings beside the errors. ``strict``: unknown keys are errors."""
    try:
        builder = _parse(path, collecting=True, strict=strict)
    except ConfigError as e:
        return CheckReport(None, [e])
    builder.cross_check()
    warnings = [
        Note(builder.file, line, text.removeprefix(builder.where(line) + ": "), False)
        for text, line in zip(builder.warnings, builder.warning_lines, strict=True)
    ]
    if builder.problems:
        return CheckReport(None, list(builder.problems), warnings)
    try:
        return CheckReport(builder.build(str(path)), [], warnings)
    except ConfigError as e:
        return CheckReport(None, [e], warnings)


def check_config(path: str | Path, strict: bool = False) -> tuple[Config | None, list[ConfigError]]:
    """``check_report`` without the warnings: ``(config, [])`` when it is sound, ``(None, problems)``
    otherwise."""
    report = check_report(path, strict)
    return report.config, report.errors


def load_config(path: str | Path, strict: bool = False) -> Config:
    """Load a ``.toml`` or uWSGI ``.ini`` file; raise ``ConfigError``.

    The syntax is chosen by the suffix; any other name is sniffed: a file whose first section is
    ``[uwsgi]`` is ini, anything else TOML. ``strict`` (or ``strict = true`` in the file): an unknown
    key is an error, not a warning.
    """
    return _parse(path, strict=strict).build(str(path))


def _parse(path: str | Path, collecting: bool = False, strict: bool = False) -> ConfigBuilder:
    file = str(path)
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(file, None, f"cannot read: {e.strerror or e}") from None
    text = _decode(data, file)
    base = p.absolute().parent
    suffix = p.suffix.lower()
    builder = ConfigBuilder(file, base)
    builder.collecting = collecting
    builder.strict = strict
    if suffix == ".ini" or (suffix != ".toml" and first_section(text) == "uwsgi"):
        builder.syntax = "ini"
        parse_ini(text, builder, p.absolute())
    else:
        builder.syntax = "toml"
        parse_toml(text, builder)
    return builder


def default_config() -> Config:
    """The built-in config: 127.0.0.1:9090, Redis 127.0.0.1:6379, ``/events/<channel>``, the clock demo."""
    return Config(
        source="<built-in>",
        listen=(defaults.LISTEN,),
        redis=DEFAULT_SERVER,
        rules=(
            parse_rule("route", r"^/events/(?P<channel>[A-Za-z0-9._:-]+)$ sse:${channel}"),
            parse_rule("route", "^/whattimeisit$ sse:clock"),
        ),
        static_maps=(StaticMap("/clock", Path(__file__).parent.parent / "assets" / "clock.html"),),
        mules=(MuleSpec((sys.executable, "-m", "ssebridge.clock", "--channel", "clock")),),
    )
