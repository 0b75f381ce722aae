"""``--check`` lists everything: every independent error (conflicts included) with the warnings, in
file order, keys named as the file's syntax spells them, "did you mean" for a misspelled key, and
unknown keys as errors when strict; the ``ssebridge`` command's check and run."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from ssebridge.config.loader import check_report
from ssebridge.config.model import ConfigError, load_config
from ssebridge.runtime.command import check_command, main, twistd_argv

REPO = Path(__file__).resolve().parents[2]

MESSY_TOML = """\
metrics_listn = "tcp:9091"
proxy = "http://127.0.0.1:8000"
wsgi_file = "app.py"
heartbeat = "soon"
workers = 2
listen = "ssl:8443:privateKey=k.pem"

[[route]]
match = "^/a"
action = "sse:a"
chanel = "x"
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / "app.py").write_text("application = None\n")
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_error_and_warning_in_one_run(tmp_path: Path) -> None:
    path = _write(tmp_path, "messy.toml", MESSY_TOML)
    report = check_report(path)
    assert report.config is None
    notes = [(n.line, n.error, n.text) for n in report.notes()]
    assert notes == [
        (1, False, "unknown key 'metrics_listn' ignored; did you mean 'metrics_listen'?"),
        # The conflict is reported beside the other errors, in TOML's names (not wsgi-file).
        (2, True, "choose one upstream app, not wsgi_file and proxy"),
        (4, True, "heartbeat: must be a number, not a string"),
        (
            6,
            True,
            "listen: workers cannot share a 'ssl' listener (workers = 2 on line 5); terminate TLS in front",
        ),
        (11, False, "unknown key 'chanel' in [[route]] ignored; did you mean 'channel'?"),
    ]


def test_ini_messages_name_ini_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "messy.ini",
        "[uwsgi]\nmetrics_listn = tcp:9091\nmaster = true\nroute = ^/(x sse:a\n"
        "proxy = http://a:1\nmodule = x:y\n",
    )
    report = check_report(path)
    assert [(n.line, n.error) for n in report.notes()] == [(2, False), (3, False), (4, True), (5, True)]
    texts = [n.text for n in report.notes()]
    assert texts[0] == "unknown key 'metrics_listn' ignored; did you mean 'metrics-listen'?"
    assert texts[1] == "unknown key 'master' ignored"
    assert texts[3] == "choose one upstream app, not module and proxy"


def test_several_cross_key_errors_at_once(tmp_path: Path) -> None:
    names = ",".join(f"subscribe=c{i}" for i in range(3))
    path = _write(
        tmp_path,
        "caps.ini",
        f"[uwsgi]\nmax-channels = 2\nroute = ^/a sse:{names}\nroute = ^/b sse:{names}\n"
        "workers = 2\nhttp-socket = ssl:8443:privateKey=k.pem\nheartbeat = soon\n",
    )
    errors = check_report(path).errors
    assert sorted(e.line or 0 for e in errors) == [3, 4, 6, 7]


def test_a_bad_section_header_does_not_hide_the_rest(tmp_path: Path) -> None:
    path = _write(tmp_path, "h.ini", "[uwsgi\nheartbeat = 1\n[uwsgi]\nheartbeat = soon\n")
    report = check_report(path)
    assert [e.line for e in report.errors] == [1, 4] and report.warnings == []


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("s.toml", 'strict = true\nmetrics_listn = "tcp:9091"\n'),
        ("s.ini", "[uwsgi]\nmetrics-listn = tcp:9091\nstrict = true\n"),
    ],
)
def test_strict_setting_makes_unknown_keys_errors(tmp_path: Path, name: str, text: str) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert re.search(r"unknown key 'metrics.listn'; did you mean 'metrics.listen'\?", caught.value.problem)
    report = check_report(path)
    assert report.config is None and report.warnings == [] and len(report.errors) == 1


def test_strict_flag(tmp_path: Path) -> None:
    path = _write(tmp_path, "f.toml", 'metrics_listn = "tcp:9091"\n')
    assert load_config(path).warnings  # a warning only, without the flag
    with pytest.raises(ConfigError, match="did you mean 'metrics_listen'"):
        load_config(path, strict=True)
    assert len(check_report(path, strict=True).errors) == 1


def test_no_suggestion_for_keys_unlike_any(tmp_path: Path) -> None:
    path = _write(tmp_path, "u.toml", 'processes = 4\ncolour = "red"\n')
    assert [n.text for n in check_report(path).notes()] == [
        "unknown key 'processes' ignored",
        "unknown key 'colour' ignored",
    ]


def test_check_command_output(tmp_path: Path) -> None:
    path = _write(tmp_path, "messy.toml", MESSY_TOML)
    out, err = io.StringIO(), io.StringIO()
    assert check_command(str(path), out=out, err=err) == 1
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    hint = "did you mean 'metrics_listen'?"
    assert lines[0] == f"ssebridge: warning: {path}:1: unknown key 'metrics_listn' ignored; {hint}"
    assert lines[1] == f"ssebridge: {path}:2: choose one upstream app, not wsgi_file and proxy"
    assert lines[-1] == f"ssebridge: {path}: 3 errors, 2 warnings"
    good = _write(tmp_path, "good.toml", 'proxy = "http://127.0.0.1:8000"\nmaster = 1\n')
    out, err = io.StringIO(), io.StringIO()
    assert check_command(str(good), out=out, err=err) == 0
    assert out.getvalue().splitlines() == [
        f"ssebridge: warning: {good}:2: unknown key 'master' ignored",
        f"ssebridge: {good} is sound (1 warning)",
    ]
    assert check_command(str(good), strict=True, out=out, err=err) == 1


def test_main_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, "good.toml", "heartbeat = 1\n")
    assert main(["check", str(good)]) == 0
    assert capsys.readouterr().out == f"ssebridge: {good} is sound\n"
    assert main(["check", "--strict", str(_write(tmp_path, "x.toml", "heartbeet = 1\n"))]) == 1
    assert "did you mean 'heartbeat'?" in capsys.readouterr().err
    assert main(["check"]) == 0
    assert main([]) == 2 and main(["nosuch"]) == 2


def test_run_is_twistd_in_the_foreground_without_a_pidfile() -> None:
    assert twistd_argv(["--config", "a.toml"]) == [
        "twistd",
        "--nodaemon",
        "--pidfile=",
        "ssebridge",
        "--config",
        "a.toml",
    ]
    assert twistd_argv(
        ["--logger=ssebridge.logs.json_stdout", "-c", "a.ini", "--strict", "--pidfile=/run/x.pid", "-n"]
    ) == [
        "twistd",
        "--logger=ssebridge.logs.json_stdout",
        "--pidfile=/run/x.pid",
        "-n",
        "ssebridge",
        "-c",
        "a.ini",
        "--strict",
    ]
    with pytest.raises(ValueError):
        twistd_argv(["--config"])


def test_the_console_script_is_declared() -> None:
    setup = (REPO / "setup.py").read_text()
    assert '"ssebridge = ssebridge.runtime.command:main"' in setup
