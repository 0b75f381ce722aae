"""The ``ssebridge`` command: ``ssebridge check [--strict] [FILE]`` and ``ssebridge run [...]``.

Why a command of its own beside ``twistd ssebridge``: twistd writes ``twistd.pid`` in the working
directory unless told otherwise, and refuses to start while that file names a live process ("Another
twistd server is running"), before the plugin even sees its options. So the README's commands, typed
in the directory of a running instance, failed: a second instance on another port, even a check.

- ``ssebridge check FILE`` validates without twistd at all: every error and every warning, in file
  order, then a summary; exit 0 if sound, 1 if not. ``twistd ssebridge --check`` does the same (the
  plugin runs it while parsing its options, before twistd looks at a pidfile).
- ``ssebridge run [TWISTD OPTIONS] [--config FILE] [--strict]`` is ``twistd --nodaemon --pidfile=
  [TWISTD OPTIONS] ssebridge [--config FILE] [--strict]``: in the foreground (what systemd, containers
  and a terminal want) and with no pidfile unless one is asked for (``--pidfile=/run/x.pid``).

This module imports the config package only; the runtime is imported by twistd when ``run`` runs it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from ssebridge.config.loader import check_report, default_config

__all__ = ["check_command", "main", "twistd_argv"]

USAGE = """\
usage: ssebridge check [--strict] [FILE]
       ssebridge run [TWISTD OPTIONS] [--config FILE] [--strict]

check   validate FILE (.toml or a uWSGI .ini; none: the built-in default): every error and warning
        with its line; --strict makes unknown keys errors. Exit 0 if sound, 1 if not. Binds nothing.
run     run the bridge: twistd --nodaemon --pidfile= [TWISTD OPTIONS] ssebridge [--config FILE]
        (twistd options such as --logger=ssebridge.logs.json_stdout or --pidfile=PATH pass through)
"""

#: The plugin's own options; everything else given to ``run`` is twistd's.
_PLUGIN_VALUED = ("--config", "-c")
_PLUGIN_FLAGS = ("--strict", "--check")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def check_command(
    path: str | None, strict: bool = False, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Report every error and warning of the config at ``path``, in file order; 0 if sound, else 1.

    A sound config's report goes to stdout, an unsound one's (its warnings too, between its errors)
    to stderr.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if not path:
        default_config()
        out.write("ssebridge: the built-in default config is sound\n")
        return 0
    report = check_report(path, strict)
    stream = out if report.config is not None else err
    for note in report.notes():
        stream.write(f"ssebridge: {note}\n" if note.error else f"ssebridge: warning: {note}\n")
    warned = f" ({_plural(len(report.warnings), 'warning')})" if report.warnings else ""
    if report.config is not None:
        out.write(f"ssebridge: {path} is sound{warned}\n")
        return 0
    err.write(
        f"ssebridge: {path}: {_plural(len(report.errors), 'error')}, "
        f"{_plural(len(report.warnings), 'warning')}\n"
    )
    return 1


def twistd_argv(args: Sequence[str]) -> list[str]:
    """The twistd command line ``ssebridge run ARGS`` stands for: the plugin's options after the
    plugin's name, the rest before it, with ``--nodaemon`` and an empty ``--pidfile`` unless given."""
    before: list[str] = []
    after: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        name = arg.split("=", 1)[0]
        if arg in _PLUGIN_FLAGS:
            after.append(arg)
        elif name in _PLUGIN_VALUED and "=" in arg:
            after.append(arg)
        elif arg in _PLUGIN_VALUED:
            if i + 1 >= len(items):
                raise ValueError(f"{arg} needs a file")
            after += [arg, items[i + 1]]
            i += 1
        elif arg == "ssebridge":
            raise ValueError("give the options alone: 'ssebridge run' names the plugin itself")
        else:
            before.append(arg)
        i += 1
    names = {a.split("=", 1)[0] for a in before}
    if "--pidfile" not in names:
        before.insert(0, "--pidfile=")
    if not {"-n", "--nodaemon"} & names:
        before.insert(0, "--nodaemon")
    return ["twistd", *before, "ssebridge", *after]


def _run(args: Sequence[str]) -> int:
    try:
        argv = twistd_argv(args)
    except ValueError as e:
        sys.stderr.write(f"ssebridge run: {e}\n")
        return 2
    from twisted.scripts.twistd import run

    # In this process (no exec): systemd's MAINPID and signals reach the bridge itself.
    sys.argv = argv
    run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``ssebridge`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        (sys.stdout if args else sys.stderr).write(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "check":
        strict = "--strict" in rest
        files = [a for a in rest if a != "--strict"]
        if len(files) > 1 or any(f.startswith("-") for f in files):
            sys.stderr.write(USAGE)
            return 2
        return check_command(files[0] if files else None, strict)
    if command == "run":
        return _run(rest)
    sys.stderr.write(f"ssebridge: unknown command {command!r}\n{USAGE}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
