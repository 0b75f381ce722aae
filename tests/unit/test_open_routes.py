"""Issue 13, item 3a: a rule whose channel comes from the request, with no ``allow`` pattern, beside an
upstream app, is a load and ``--check`` error unless the rule says ``public``: it would answer before
the app is asked, so anyone could read another user's channel."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssebridge.config.exposure import is_open
from ssebridge.config.model import ConfigError, check_config, default_config, load_config
from tests.helpers import REPO

OPEN_TOML = """proxy = "http://127.0.0.1:8000"

[[route]]
match = '^/events/(?P<channel>[a-z0-9-]+)$'
action = "sse:${channel}"
"""

OPEN_INI = """[uwsgi]
http-socket = 127.0.0.1:9090
route = ^/events/(.+)$ sse:$1
proxy = http://127.0.0.1:8000
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_open_route_beside_a_proxy_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "a.toml", OPEN_TOML))
    error = caught.value
    assert error.line == 3  # the [[route]] header
    assert "proxy" in error.problem and "any client may read any channel" in error.problem
    # TOML names in a TOML message.
    assert "allow = 'REGEX'" in error.problem and "public = true" in error.problem
    assert "route-allow" not in error.problem


def test_check_lists_it_too(tmp_path: Path) -> None:
    config, problems = check_config(write(tmp_path, "a.toml", OPEN_TOML))
    assert config is None
    assert [p.line for p in problems] == [3]


@pytest.mark.parametrize(
    "upstream",
    ['wsgi_file = "app.py"', 'wsgi = "myapp.wsgi:application"', 'proxy = "http://127.0.0.1:8000"'],
)
def test_every_kind_of_upstream_counts(tmp_path: Path, upstream: str) -> None:
    write(tmp_path, "app.py", "def application(environ, start_response):\n    return []\n")
    text = OPEN_TOML.replace('proxy = "http://127.0.0.1:8000"', upstream)
    with pytest.raises(ConfigError, match="answers before the app is asked") as caught:
        load_config(write(tmp_path, "a.toml", text))
    assert f"and {upstream.split()[0]} sets an app" in caught.value.problem


@pytest.mark.parametrize(
    "extra",
    ["allow = 'user-[a-z0-9]{1,32}'", "public = true"],
)
def test_allow_or_public_makes_it_intended(tmp_path: Path, extra: str) -> None:
    config = load_config(write(tmp_path, "a.toml", OPEN_TOML + extra + "\n"))
    assert config.proxy
    assert not is_open(config.rules[0])
    assert config.rules[0].public == (extra == "public = true")


def test_public_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="public must be true or false, not a string") as caught:
        load_config(write(tmp_path, "a.toml", OPEN_TOML + 'public = "yes"\n'))
    assert caught.value.line == 6


def test_public_false_is_still_open(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not checked"):
        load_config(write(tmp_path, "a.toml", OPEN_TOML + "public = false\n"))


@pytest.mark.parametrize(
    "route",
    [
        # A literal channel: the config, not the client, chose it.
        "[[route]]\nmatch = '^/news$'\naction = \"sse:news\"\n",
        # A response-phase rule runs on the app's answer: the app decided.
        "[[route]]\nfinal_if_not = 'empty:${X-SSE-OFFLOAD}'\naction = \"sse:${X-SSE-OFFLOAD}\"\n",
    ],
)
def test_rules_that_do_not_bypass_the_app_load(tmp_path: Path, route: str) -> None:
    text = 'proxy = "http://127.0.0.1:8000"\n\n' + route
    assert load_config(write(tmp_path, "a.toml", text)).rules


def test_a_pattern_from_the_request_is_open_too(tmp_path: Path) -> None:
    text = 'proxy = "http://127.0.0.1:8000"\n\n[[route]]\nmatch = "^/rooms/(.+)$"\npatterns = ["room.$1*"]\n'
    with pytest.raises(ConfigError, match="not checked"):
        load_config(write(tmp_path, "a.toml", text))


def test_without_an_upstream_an_open_route_is_fine(tmp_path: Path) -> None:
    """The demo: /events/<channel> for any channel is what a bridge without an app is for."""
    config = load_config(write(tmp_path, "a.toml", OPEN_TOML.replace('proxy = "http://127.0.0.1:8000"', "")))
    assert is_open(config.rules[0])
    assert is_open(default_config().rules[0])


def test_the_written_out_default_plus_a_proxy_is_refused(tmp_path: Path) -> None:
    """What the issue tried: etc/ssebridge.toml with `proxy = ...` added as the README suggests."""
    text = (REPO / "etc" / "ssebridge.toml").read_text()
    assert load_config(REPO / "etc" / "ssebridge.toml").rules  # the demo as it is loads
    with pytest.raises(ConfigError, match="not checked"):
        load_config(write(tmp_path, "ssebridge.toml", 'proxy = "http://127.0.0.1:8000"\n' + text))


# ini: route-public follows the rule, as route-allow does.


def test_ini_open_route_beside_a_proxy_is_an_error(tmp_path: Path) -> None:
    # The upstream comes after the rule: the check runs once the whole file is read.
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "a.ini", OPEN_INI))
    assert caught.value.line == 3
    assert "route-allow = REGEX" in caught.value.problem and "route-public = true" in caught.value.problem


@pytest.mark.parametrize(
    "extra", ["route-allow = user-[a-z0-9]{1,32}", "route-public = true", "route_public = 1"]
)
def test_ini_allow_or_public(tmp_path: Path, extra: str) -> None:
    text = OPEN_INI.replace("sse:$1\n", "sse:$1\n" + extra + "\n")
    assert load_config(write(tmp_path, "a.ini", text)).proxy


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[uwsgi]\nroute-public = true\n", "must follow the rule"),
        ("[uwsgi]\nroute = ^/e/(.+)$ sse:$1\nroute-public = maybe\n", "expected true or false"),
    ],
)
def test_ini_route_public_mistakes(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(write(tmp_path, "a.ini", text))


def test_ini_public_applies_to_its_rule_only(tmp_path: Path) -> None:
    text = OPEN_INI.replace("sse:$1\n", "sse:$1\nroute-public = true\nroute = ^/u/(.+)$ sse:user-$1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "a.ini", text))
    assert caught.value.line == 5


def test_the_readme_short_example_loads(tmp_path: Path) -> None:
    """README's "In short" config has an app and an /events/<channel> rule: it must show the safe form."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("```toml", readme.index("In short:"))
    block = readme[start + len("```toml") : readme.index("```", start + 7)]
    config = load_config(write(tmp_path, "short.toml", block))
    assert config.proxy and config.rules[0].allow is not None
