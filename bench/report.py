"""Turning the raw figures of a run into the printed table, the JSON line and a RESULTS.md row.

Kept apart from the orchestration so the figures' definitions live in one place (README.md refers here):
percentiles are nearest-rank over the latency sample, rates are per second of wall time, memory is in
MiB (per client in KiB), CPU in percent of one core.
"""

from __future__ import annotations

import datetime
import platform
import re
import subprocess
import sys
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0..100) of an already sorted sequence; None when it is empty."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[rank])


def merge_latencies(parts: Sequence[tuple[bytes, int]]) -> list[int]:
    """Merge per-process samples kept at different strides (powers of two) into one even-stride sample.

    A process whose sample filled up kept only every ``stride``-th value; to weigh every event equally,
    the others are thinned to the largest stride before merging.
    """
    if not parts:
        return []
    top = max(stride for _, stride in parts)
    merged: list[int] = []
    for raw, stride in parts:
        values = array("q")
        values.frombytes(raw)
        merged.extend(values[:: top // stride] if stride < top else values)
    merged.sort()
    return merged


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(report: dict[str, Any]) -> str:
    """The human-readable summary printed at the end of a run."""
    r = report
    lat = r["latency_ms"]
    rss = r["rss"]
    cpu = r["cpu_percent"]
    conn_ms = r["connect_ms"]
    flags = ("  STALLED" if r["stalled"] else "") + ("  (deadline)" if r["stopped_by_deadline"] else "")
    saturated = "   <- a load process near 100% limits the figures" if cpu["load_saturated"] else ""
    rows: list[tuple[str, str]] = [
        ("target", f"{r['target']}  (workers={r['workers']})"),
        ("mode", r["mode"]),
        ("clients", f"{_fmt(r['clients_connected'])} connected / {_fmt(r['clients_requested'])} requested, "
                    f"{_fmt(r['clients_failed'])} failed {r['fail_reasons'] or ''}"),
        ("connect time ms", f"p50 {_fmt(conn_ms['p50'])}  p99 {_fmt(conn_ms['p99'])}  "
                            f"max {_fmt(conn_ms['max'])}"),
        ("closed during run", f"{_fmt(r['closed_during_run'])} {r['close_reasons'] or ''}"),
        ("redis subscribers", _fmt(r["redis_numsub"])),
        ("published", f"{_fmt(r['published'])} msgs of {r['size']} B at {_fmt(r['publish_rate'])}/s{flags}"
                      f"  zero-receiver PUBLISHes {_fmt(r['zero_receivers'])}"),
        ("events received", f"{_fmt(r['events'])} of {_fmt(r['events_expected'])} expected"),
        ("deliveries/s", f"{_fmt(r['deliveries_per_s'])}  over {_fmt(r['delivery_seconds'], 2)} s "
                         "(first to last delivery)"),
        ("lost", f"{_fmt(r['lost'])}  (gaps {_fmt(r['lost_gaps'])}, never arrived {_fmt(r['lost_tail'])}, "
                 f"on closed connections {_fmt(r['undelivered_closed'])})"),
        ("duplicated", _fmt(r["duplicated"])),
        ("latency ms", f"p50 {_fmt(lat['p50'], 2)}  p90 {_fmt(lat['p90'], 2)}  p99 {_fmt(lat['p99'], 2)}  "
                       f"max {_fmt(lat['max'], 2)}  (sample {_fmt(lat['samples'])} of "
                       f"{_fmt(lat['sampled_events'])} events on {_fmt(lat['sampled_connections'])} conns)"),
        ("server RSS MiB", f"baseline {_fmt(rss['baseline_mib'])}  "
                           f"with idle clients {_fmt(rss['idle_mib'])}  "
                           f"after run {_fmt(rss['after_mib'])}  peak {_fmt(rss['peak_mib'])}"),
        ("RSS per client", f"{_fmt(rss['per_client_kib'], 2)} KiB"),
        ("CPU % (1 core=100)", f"server {_fmt(cpu['server'])} {cpu['server_procs']}  "
                               f"redis {_fmt(cpu['redis'])}  publisher {_fmt(cpu['publisher'])}  "
                               f"over {_fmt(cpu['interval_s'], 2)} s"),
        ("CPU % machine", f"{_fmt(cpu['machine'])} of {cpu['cores'] * 100}  "
                          f"(other work: {_fmt(cpu['other'])})"),
        ("CPU % load procs", "  ".join(_fmt(v) for v in cpu["load_procs"]) + saturated),
    ]
    if r.get("profile"):
        rows.append(("profile", r["profile"]))
    if r.get("profile_summary"):
        rows.append(("profile top", r["profile_summary"]))
    if r.get("warnings"):
        rows.extend(("WARNING", w) for w in r["warnings"])
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


RESULTS_TABLE_HEADER = (
    "| date | label | target | workers | clients ok/failed | mode | size | deliveries/s | lost | dup "
    "| p50 ms | p99 ms | max ms | RSS/client KiB | CPU server % | CPU redis % | CPU load % "
    "| CPU machine/other % |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def results_row(report: dict[str, Any]) -> str:
    """One markdown table row for bench/RESULTS.md."""
    r = report
    lat = r["latency_ms"]
    cpu = r["cpu_percent"]
    cells = [
        r["started_at"][:16].replace("T", " "),
        r.get("label") or "",
        r["target_kind"],
        str(r["workers"]),
        f"{r['clients_connected']:,}/{r['clients_failed']:,}",
        r["mode"],
        str(r["size"]),
        _fmt(r["deliveries_per_s"], 0),
        _fmt(r["lost"]),
        _fmt(r["duplicated"]),
        _fmt(lat["p50"], 2),
        _fmt(lat["p99"], 2),
        _fmt(lat["max"], 2),
        _fmt(r["rss"]["per_client_kib"], 2),
        _fmt(cpu["server"], 0),
        _fmt(cpu["redis"], 0),
        "/".join(_fmt(v, 0) for v in cpu["load_procs"]),
        f"{_fmt(cpu['machine'], 0)}/{_fmt(cpu['other'], 0)}",
    ]
    return "| " + " | ".join(cells) + " |\n"


_LINE_NUMBER = re.compile(r":\d+\)$")


def summarize_raw_profile(path: Path, top: int = 25) -> str:
    """Top functions of a py-spy ``--format raw`` profile (collapsed stacks: ``f1;f2;f3 count``).

    Self time counts a sample for the innermost frame only; total time counts it once for every
    distinct frame on the stack. Both in percent of all samples.
    """
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        # "func (file.py:123)" -> "func (file.py)": a function's lines add up.
        frames = [_LINE_NUMBER.sub(")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    if not samples:
        return "no samples\n"
    out = [f"{samples} samples\n", "self%   total%  function (file)"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{100.0 * count / samples:5.1f}  {100.0 * total[frame] / samples:6.1f}  {frame}")
    out.append("\ntotal%  function (file)")
    for frame, count in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{100.0 * count / samples:6.1f}  {frame}")
    return "\n".join(out) + "\n"


def _command_output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_info() -> dict[str, str]:
    """What the numbers depend on: cores, CPU model, memory, kernel, Python, Redis, Twisted."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    try:
        import twisted

        twisted_version = twisted.__version__
    except ImportError:
        twisted_version = "not installed"
    return {
        "nproc": _command_output(["nproc"]),
        "cpu": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "redis": _command_output(["redis-server", "--version"]),
        "twisted": twisted_version,
    }


def append_results(path: Path, report: dict[str, Any]) -> None:
    """Append a row (and the table header first, if the file has none yet) to RESULTS.md."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    with open(path, "a", encoding="utf-8") as f:
        if "| date | label |" not in text:
            if text and not text.endswith("\n\n"):
                f.write("\n" if text.endswith("\n") else "\n\n")
            f.write(RESULTS_TABLE_HEADER)
        f.write(results_row(report))


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
