"""twistd plugin: ``twistd -n ssebridge [--config FILE]``."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    synopsis = "[--config FILE] [--check] [--strict]"
    longdesc = (
        "Bridge Redis pub/sub channels to Server-Sent Events clients. Without --config, runs the built-in "
        "default: 127.0.0.1:9090, Redis at 127.0.0.1:6379, /events/<channel>, and the /clock demo. "
        "SIGHUP reloads the config file (a bad one is refused) and SIGUSR2 hands the listening sockets "
        "to a new process running the installed code: neither refuses a connection. SIGTERM stops."
    )
    optParameters = [["config", "c", None, "configuration file (.toml, or a uWSGI .ini)"]]
    optFlags = [
        ["check", None, "validate the configuration, bind nothing, exit 0 if sound, else 1"],
        ["strict", None, "unknown keys in the configuration are errors, not warnings"],
    ]

    def postOptions(self) -> None:
        # Checked here, while twistd parses its options: before it looks at its pidfile, which would
        # refuse a check beside a running instance ("Another twistd server is running").
        if self["check"]:
            from ssebridge.runtime.command import check_command

            raise SystemExit(check_command(self["config"], bool(self["strict"])))


@implementer(IServiceMaker, IPlugin)
class ServiceMaker:
    tapname = "ssebridge"
    description = "Redis pub/sub to Server-Sent Events bridge."
    options = Options

    def makeService(self, options: Any) -> Any:
        from ssebridge.runtime.cli import make_service

        return make_service(options)


serviceMaker = ServiceMaker()
