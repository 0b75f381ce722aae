"""The key table of docs/configuration.md, rendered from ``SETTINGS`` and ``Config``'s defaults.

Each scalar key's names, accepted values, default and meaning are written once, in code; the docs
page holds a rendered copy between two marker lines, and a test checks the copy is current.
``python -m ssebridge.config.reference --write docs/configuration.md`` refreshes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssebridge.config.schema import Config
from ssebridge.config.settings import SETTINGS, Setting

__all__ = ["BEGIN", "END", "render_default", "settings_table", "with_table"]

BEGIN = "<!-- settings table: rendered by `python -m ssebridge.config.reference`; do not edit -->"
END = "<!-- end of settings table -->"


def render_default(value: object) -> str:
    """A default as a config file would write it."""
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value == "":
        return "empty"
    return f"`{value}`"


def _row(setting: Setting) -> str:
    default = Config.__dataclass_fields__[setting.field].default
    ini = ", ".join(f"`{name}`" for name in setting.ini)
    cells = [f"`{setting.toml}`", ini, setting.accepts, render_default(default), setting.doc]
    return "| " + " | ".join(cells) + " |"


def settings_table() -> str:
    """The Markdown table of every scalar key, in ``SETTINGS`` order."""
    head = ["| TOML | ini | accepts | default | meaning |", "| --- | --- | --- | --- | --- |"]
    return "\n".join([*head, *(_row(s) for s in SETTINGS)])


def with_table(page: str) -> str:
    """``page`` with the text between the marker lines replaced by the current table."""
    start = page.index(BEGIN) + len(BEGIN)
    end = page.index(END, start)
    return f"{page[:start]}\n{settings_table()}\n{page[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssebridge.config.reference")
    parser.add_argument("--write", metavar="PAGE", help="refresh the table in this Markdown page")
    args = parser.parse_args(argv)
    if args.write:
        page = Path(args.write)
        page.write_text(with_table(page.read_text()))
    else:
        sys.stdout.write(settings_table() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
