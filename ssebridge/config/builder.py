"""Building a ``Config``: what a parser has read, with where each value came from, and the structured
values both syntaxes share (mules, static maps).

A parser (``ini`` or ``toml``) reads its syntax and feeds a ``ConfigBuilder``; ``build()`` checks what
spans several keys and makes the frozen ``Config``.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from ssebridge.address import RedisServer
from ssebridge.config import defaults
from ssebridge.config.endpoint import POOLED_KINDS, parse_endpoint
from ssebridge.config.schema import Config, ConfigError, MuleSpec, StaticMap
from ssebridge.config.settings import SETTINGS, Setting, header_mapping
from ssebridge.routing.rules import Rule, RuleError, RuleKind, parse_rule

__all__ = ["INTERPRETERS", "ConfigBuilder", "mule_from_command", "mule_from_script", "static_map"]


#: Interpreters for scripts that have no shebang line, by suffix (the seed's clock.pl has none).
INTERPRETERS: dict[str, tuple[str, ...]] = {
    ".py": (sys.executable,),
    ".pl": ("perl",),
    ".rb": ("ruby",),
    ".sh": ("/bin/sh",),
}


def _resolve(base: Path, path: str) -> Path:
    candidate = Path(os.path.expanduser(path))
    return candidate if candidate.is_absolute() else base / candidate


def mule_from_script(script: str, base: Path) -> MuleSpec:
    """``mule = SCRIPT``: how to run a script, decided from its shebang, else its suffix.

    The script is found relative to the config file's directory and runs there, so a config and its
    scripts can move together. A shebang is honoured by us rather than by ``exec`` so that a script
    without the executable bit still runs, as it did under uWSGI.
    """
    script = script.strip()
    if not script:
        raise ValueError("mule needs a script")
    path = _resolve(base, script)
    if not path.is_file():
        raise ValueError(f"mule script {str(path)!r} not found")
    try:
        with path.open("rb") as f:
            first = f.readline(1024)
    except OSError as e:
        raise ValueError(f"cannot read mule script {str(path)!r}: {e.strerror or e}") from None
    if first.startswith(b"#!"):
        words = first[2:].decode("utf-8", "replace").split()
        if not words:
            raise ValueError(f"mule script {str(path)!r} has an empty shebang line")
        return MuleSpec((*words, str(path)), base)
    interpreter = INTERPRETERS.get(path.suffix)
    if interpreter is not None:
        return MuleSpec((*interpreter, str(path)), base)
    if not os.access(path, os.X_OK):
        raise ValueError(f"mule script {str(path)!r} has no shebang line and is not executable")
    return MuleSpec((str(path),), base)


def mule_from_command(argv: Sequence[str], cwd: str | None, base: Path) -> MuleSpec:
    """A mule given as a command line (TOML ``command = [...]``); it runs in ``cwd`` or the config's dir."""
    if not argv or not argv[0]:
        raise ValueError("mule command is empty")
    if any("\x00" in a for a in argv):
        raise ValueError("NUL in mule command")
    return MuleSpec(tuple(argv), _resolve(base, cwd) if cwd else base)


def static_map(prefix: str, path: str, base: Path) -> StaticMap:
    """A static map; the path is relative to the config file's directory."""
    prefix = prefix.strip()
    path = path.strip()
    if not prefix.startswith("/"):
        raise ValueError(f"static prefix {prefix!r} must start with '/'")
    if not path:
        raise ValueError(f"static map {prefix} has no path")
    if "\x00" in prefix or "\x00" in path:
        raise ValueError("NUL in static map")
    return StaticMap(prefix, _resolve(base, path))


# Building a Config.

_BY_FIELD = {s.field: s for s in SETTINGS}
#: How close an unknown key must be to a known one to be suggested (difflib's ratio; a letter
#: missing from ``metrics_listen`` scores 0.96, ``processes`` against ``proxy`` 0.43).
_SUGGEST_CUTOFF = 0.75


def suggestion(key: str, known: Iterable[str]) -> str | None:
    """The known key ``key`` is most likely a misspelling of, or ``None``."""
    close = difflib.get_close_matches(key, sorted(set(known)), n=1, cutoff=_SUGGEST_CUTOFF)
    return close[0] if close else None


class _Unknown:
    """An unknown key: a warning unless ``strict``, then an error (decided once the whole file is read,
    since ``strict = true`` may come after the key)."""

    __slots__ = ("error", "line", "warning")

    def __init__(self, line: int | None, warning: str, error: str) -> None:
        self.line = line
        self.warning = warning
        self.error = error


class ConfigBuilder:
    """What a parser has read so far, with where each value came from; ``build()`` makes the ``Config``."""

    def __init__(self, file: str, base: Path) -> None:
        self.file = file
        self.base = base
        self.listen: list[str] = []
        #: Where each ``listen`` entry was, (line, key), for the checks that span several keys.
        self.listen_at: list[tuple[int | None, str]] = []
        self.rules: list[Rule] = []
        #: Where each rule was, for the checks that span several keys (``max_channels``).
        self.rule_lines: list[int | None] = []
        self.static_maps: list[StaticMap] = []
        self.mules: list[MuleSpec] = []
        self.values: dict[str, Any] = {}
        self.wsgi_file: Path | None = None
        self.collect_headers: list[tuple[str, str]] = []
        self.pull_headers: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        #: The line of each warning (same order), so a report can list warnings and errors together.
        self.warning_lines: list[int | None] = []
        self._set_at: dict[str, int | None] = {}
        #: In checking mode (``check_config``) problems are collected here instead of raised.
        self.collecting = False
        self.problems: list[ConfigError] = []
        #: Which syntax is being read: messages name keys as that syntax spells them.
        self.syntax: Literal["ini", "toml"] = "toml"
        #: The top-level keys the syntax knows, for "did you mean" (set by the parser).
        self.known_keys: Iterable[str] = ()
        #: Unknown keys are errors (``--strict``); the ``strict`` setting does the same from the file.
        self.strict = False
        #: Unknown keys seen, each also a warning (by its index in ``warnings``) until ``cross_check``.
        self._unknowns: list[tuple[int, _Unknown]] = []
        self._cross_checked = False

    def attempt(self, step: Callable[..., None], *args: Any) -> None:
        """Run one independent step of parsing: in checking mode a problem is noted and parsing goes on
        with the next step, so every problem of a file is reported at once."""
        try:
            step(*args)
        except ConfigError as e:
            if not self.collecting:
                raise
            self.problems.append(e)

    def where(self, line: int | None) -> str:
        return f"{self.file}:{line}" if line is not None else self.file

    def error(self, line: int | None, problem: str) -> ConfigError:
        return ConfigError(self.file, line, problem)

    def warn(self, line: int | None, note: str) -> None:
        self.warnings.append(f"{self.where(line)}: {note}")
        self.warning_lines.append(line)

    def key(self, field: str) -> str:
        """The name of a ``Config`` field's key in the syntax being read (``wsgi`` in TOML is
        ``module`` in ini; ``wsgi_file`` is ``wsgi-file``). Messages may also name a key with ``_``
        in ini, where ``_`` and ``-`` are the same."""
        setting = _BY_FIELD.get(field)
        if setting is not None:
            return setting.toml if self.syntax == "toml" else setting.ini[0]
        return field if self.syntax == "toml" else field.replace("_", "-")

    def rule_key(self, kind: RuleKind) -> str:
        """How a rule is named in messages: its ini key, or the TOML table it was read from."""
        return kind if self.syntax == "ini" else "route"

    def unknown(
        self, line: int | None, key: str, known: Iterable[str] | None = None, where: str = ""
    ) -> None:
        """An unknown key (``where``: the table it is in): a warning naming the key it may be a
        misspelling of; an error with ``strict``."""
        name = key.replace("_", "-") if self.syntax == "ini" else key
        close = suggestion(name, self.known_keys if known is None else known)
        hint = f"; did you mean {close!r}?" if close is not None else ""
        entry = _Unknown(
            line,
            f"unknown key {key!r}{where} ignored{hint}",
            f"unknown key {key!r}{where}{hint} (strict: unknown keys are errors)",
        )
        self._unknowns.append((len(self.warnings), entry))
        self.warn(line, entry.warning)

    def set(self, setting: Setting, value: Any, line: int | None, key: str) -> None:
        """Store a checked setting; a repeated one replaces the earlier value (as in uWSGI), noted."""
        if setting.field in self._set_at:
            earlier = self._set_at[setting.field]
            where = f" on line {earlier}" if earlier is not None else ""
            self.warn(line, f"{key!r} set again: replaces the value{where}")
        self._set_at[setting.field] = line
        self.values[setting.field] = value

    def add_listen(self, endpoint: str, line: int | None, key: str) -> None:
        self.listen.append(endpoint)
        self.listen_at.append((line, key))

    def add_rule(self, kind: RuleKind, text: str, line: int | None, allow: str | None = None) -> None:
        try:
            rule = parse_rule(kind, text, allow=allow)
        except RuleError as e:
            raise self.error(line, f"{kind}: {e}") from None
        self.add_parsed_rule(rule, line)

    def add_parsed_rule(self, rule: Rule, line: int | None) -> None:
        self.rules.append(rule)
        self.rule_lines.append(line)

    def add_wsgi_file(self, path: str, line: int | None, key: str) -> None:
        resolved = _resolve(self.base, path)
        if not resolved.is_file():
            raise self.error(line, f"{key}: {str(resolved)!r} does not exist")
        self.wsgi_file = resolved
        self._set_at.setdefault("wsgi_file", line)

    def add_header_mapping(self, pull: bool, text: str, line: int | None, key: str) -> None:
        try:
            mapping = header_mapping(text)
        except ValueError as e:
            raise self.error(line, f"{key}: {e}") from None
        (self.pull_headers if pull else self.collect_headers).append(mapping)

    def cross_check(self) -> None:
        """The checks that span several keys, each on its own: in checking mode every problem is
        collected, whatever else is wrong with the file; otherwise the first is raised. Unknown keys
        become errors here when strict. Runs once."""
        if self._cross_checked:
            return
        self._cross_checked = True
        self._settle_unknowns()
        self.attempt(self._check_upstreams)
        self._check_workers()
        self._check_channels()
        self._check_cluster_patterns()

    def _settle_unknowns(self) -> None:
        if not (self.strict or self.values.get("strict", defaults.STRICT)):
            return
        # Drop their warnings (from the last, so the indexes hold), then report each as an error.
        for index, _ in reversed(self._unknowns):
            del self.warnings[index]
            del self.warning_lines[index]
        for _, entry in self._unknowns:
            self.attempt(self._raise, entry.line, entry.error)

    def _raise(self, line: int | None, problem: str) -> None:
        raise self.error(line, problem)

    def _check_upstreams(self) -> None:
        upstreams = [
            self.key(field)
            for field, present in (
                ("wsgi_file", self.wsgi_file is not None),
                ("wsgi_module", bool(self.values.get("wsgi_module"))),
                ("proxy", bool(self.values.get("proxy"))),
            )
            if present
        ]
        if len(upstreams) > 1:
            line = self._set_at.get("proxy", self._set_at.get("wsgi_module"))
            raise self.error(line, f"choose one upstream app, not {' and '.join(upstreams)}")

    def build(self, source: str) -> Config:
        listen = tuple(self.listen) if self.listen else (defaults.LISTEN,)
        self.cross_check()
        if self.problems:
            raise self.problems[0]
        return Config(
            wsgi_file=self.wsgi_file,
            collect_headers=tuple(self.collect_headers),
            pull_headers=tuple(self.pull_headers),
            source=source,
            listen=listen,
            rules=tuple(self.rules),
            static_maps=tuple(self.static_maps),
            mules=tuple(self.mules),
            warnings=tuple(self.warnings),
            **self.values,
        )

    def _check_channels(self) -> None:
        """A rule naming more channels and patterns than ``max_channels`` would answer every request
        with 400: an error now, naming both lines."""
        cap = int(self.values.get("max_channels", defaults.MAX_CHANNELS))
        where = self._set_at.get("max_channels")
        setting = f" on line {where}" if where is not None else " (the default)"
        for rule, line in zip(self.rules, self.rule_lines, strict=True):
            count = rule.action.subscriptions
            if count > cap:
                self.attempt(
                    self._raise,
                    line,
                    f"{self.rule_key(rule.kind)}: {count} channels and patterns, more than "
                    f"max_channels = {cap}{setting}",
                )

    def _check_cluster_patterns(self) -> None:
        """Sharded pub/sub (Redis Cluster) has no ``PSUBSCRIBE``: a rule asking for patterns on a
        ``cluster://`` server could never deliver them, so it is an error now, not a refusal per request."""
        default = self.values.get("redis")
        for rule, line in zip(self.rules, self.rule_lines, strict=True):
            action = rule.action
            if not action.patterns:
                continue
            server = action.fixed_server if action.server is not None else default
            if isinstance(server, RedisServer) and server.kind == "cluster":
                self.attempt(
                    self._raise,
                    line,
                    f"{self.rule_key(rule.kind)}: psubscribe= on {server.describe()}: a Redis Cluster has "
                    "no pattern subscriptions (sharded pub/sub takes channel names only); name the "
                    "channels, or route the patterns to a non-cluster server",
                )

    def _check_workers(self) -> None:
        """What ``workers`` asks of the listeners, checked now rather than failing in every worker:
        each listener must be one a pool can share, and each worker's metrics port must exist."""
        workers = int(self.values.get("workers", defaults.WORKERS))
        if workers < 2:
            return
        where = self._set_at.get("workers")
        for endpoint, (line, key) in zip(self.listen, self.listen_at, strict=True):
            kind = parse_endpoint(endpoint).kind
            if kind not in POOLED_KINDS:
                self.attempt(
                    self._raise,
                    line,
                    f"{key}: workers cannot share a '{kind}' listener (workers = {workers}"
                    f"{f' on line {where}' if where is not None else ''}); terminate TLS in front",
                )
        metrics = str(self.values.get("metrics_listen", ""))
        if metrics:
            try:
                parse_endpoint(metrics).for_worker(workers - 1)
            except ValueError as e:
                self.attempt(
                    self._raise,
                    self._set_at.get("metrics_listen"),
                    f"metrics_listen: {e} (worker i listens on the port plus i; "
                    f"workers = {workers})",
                )
