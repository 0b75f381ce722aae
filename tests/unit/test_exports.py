"""The public names and paths other code is written against: each one pinned, as Klein pins its own.

A name removed or moved here breaks somebody's import, somebody's ``twistd --logger=`` line or
somebody's systemd unit: change this file only together with the docs and a note for users.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import ssebridge
from tests.helpers import REPO

#: ``ssebridge.__all__``: the README's "Mounting it in your own Twisted program" and the package docstring.
PUBLIC = [
    "Bridge",
    "BridgeService",
    "ChannelResource",
    "Config",
    "ConfigError",
    "Hub",
    "RedisServer",
    "default_config",
    "load_config",
    "parse_server",
    "redis_hub",
]

#: Documented dotted paths (README, docs/, etc/, examples/) and what must be found there.
DOCUMENTED = [
    ("ssebridge.logs", "json_stdout"),  # twistd --logger=ssebridge.logs.json_stdout (etc/ssebridge.service)
    ("ssebridge.testing", "RedisProcess"),
    ("ssebridge.testing", "SSEClient"),
    ("ssebridge.testing", "connect_sse"),
    ("ssebridge.testing", "EventStreamParser"),
    ("ssebridge.testing", "redis_command"),
    ("ssebridge.testing", "free_port"),
    ("ssebridge.clock", "main"),  # python -m ssebridge.clock
]


def test_all_is_pinned() -> None:
    assert sorted(ssebridge.__all__) == sorted(PUBLIC)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(ssebridge, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        ssebridge.NoSuchThing  # noqa: B018


@pytest.mark.parametrize(("module", "name"), DOCUMENTED)
def test_documented_paths(module: str, name: str) -> None:
    assert callable(getattr(importlib.import_module(module), name))


def test_json_stdout_is_a_log_observer() -> None:
    from twisted.logger import ILogObserver

    from ssebridge.logs import json_stdout

    assert ILogObserver.providedBy(json_stdout())


def test_uwsgi_module_is_supplied() -> None:
    """The seed's apps ``import uwsgi`` and call ``uwsgi.add_var``: ssebridge supplies the module."""
    from ssebridge.upstream import uwsgi_compat

    module = uwsgi_compat.install()
    assert sys.modules["uwsgi"] is module
    assert callable(module.add_var)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_package_and_the_clock_do_not_load_twisted() -> None:
    """``python -m ssebridge.clock`` runs in a bare interpreter; ``import ssebridge`` stays cheap."""
    done = _python(
        "import sys, ssebridge, ssebridge.clock, ssebridge.redis.resp\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'klein', 'txredisapi')))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_twistd_plugin_is_found() -> None:
    done = _python(
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "print([p.tapname for p in getPlugins(IServiceMaker)])"
    )
    assert done.returncode == 0, done.stderr
    assert "ssebridge" in done.stdout
