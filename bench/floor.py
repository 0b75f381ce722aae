#!/usr/bin/env python3
"""ssebridge against the floor (and nginx + nchan), scenario by scenario, as ratios (issue 15, item 2).

The *floor* is ``floor.c`` (outside this project, ``/work/shared/bench/floor.c`` by default): one C
thread that subscribes to one Redis channel and, for each batch read, frames it once and loops
``send`` over its clients. Whatever it measures is what the kernel charges on this machine, so the
bridge's figures are reported as multiples of it. nginx + nchan (Redis mode), the best peer we know,
runs too where Debian's ``nginx`` and ``libnginx-mod-nchan`` are installed.

``baseline`` (with ``--baseline DIR``) is the bridge of another tree, a checkout of an earlier commit
(with its C loop built in place, or not), run alternately with the others: a before/after in one run.

``ssebridge-py`` is the same bridge with its pure-Python fan-out loop (``SSEBRIDGE_FANOUT=python``), to
weigh the optional C loop (``ssebridge._fanout``, built in the tree by ``setup.py build_ext --inplace``;
each run reports which loop the bridge had: ``fanout``).

Every run gets a fresh redis-server and a fresh server; the servers alternate within a round
(floor, ssebridge, nchan for each scenario), so drifting load from other work hits all of them alike.
Clients and publishers are the C tool ``sseload`` (``/work/shared/bench/sseload.c``), built with
``gcc -O2`` into a temporary directory at run time, like the floor: neither source nor binary is part
of this project. Without floor.c the floor is skipped (and ratios are not printed); without sseload.c
the script stops, saying so.

    python bench/floor.py                          # 1 round of every scenario
    python bench/floor.py --rounds 2 --only 10k,16ch
    python bench/floor.py --repo /tmp/bench-head   # the bridge of another tree
    python bench/floor.py --servers floor,ssebridge,ssebridge-py --only 10k   # C loop against Python loop
    python bench/floor.py --baseline /tmp/bench-before   # before/after: another tree's bridge alternates too

Figures per run: p50/p99 publish-to-receive latency (every event, ``sseload``'s histogram), delivered
events/s (first to last event), lost/dup, server CPU (utime+stime of its process tree from the first
publish to the end of the run) per delivery, RSS per idle client ((idle - before clients) / clients),
and the machine's busy share with the part charged to none of the measured processes (``other``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procstat  # noqa: E402
import services  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "bench"
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
CHANNELS_16 = [f"c{i}" for i in range(1, 17)]
#: Every server this script knows, in the order its tables list them.
KINDS = ("floor", "ssebridge", "ssebridge-py", "baseline", "nchan")


@dataclass(frozen=True)
class Scenario:
    """Clients x rate; ``channels`` > 1: one stream holds them all and each is published to."""

    key: str
    clients: int
    rate: float  # messages per second reaching each client (all channels together)
    messages: int  # messages each client should receive
    channels: int = 1


SCENARIOS = [
    Scenario("10k", 10_000, 1.0, 30),
    Scenario("5k", 5_000, 60.0, 1_200),
    Scenario("1k", 1_000, 500.0, 10_000),
    Scenario("16ch", 1_000, 496.0, 9_920, channels=16),  # 16 channels x 620 messages at 31/s
]


def log(msg: str) -> None:
    print(f"[floor {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(source: Path, out_dir: Path) -> Path | None:
    """``gcc -O2`` ``source`` into ``out_dir``; None (said on stderr) when the source is missing."""
    if not source.is_file():
        log(f"{source} is missing: skipped")
        return None
    binary = out_dir / source.stem
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def fanout_of(repo: Path) -> str:
    """Which fan-out loop ``repo``'s bridge runs (``c`` when its ``ssebridge._fanout`` is built)."""
    probe = "import ssebridge.fanout as f; print(f.IMPLEMENTATION)"
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe],
            env={**os.environ, "PYTHONPATH": str(repo)},
            cwd=str(repo),  # ``python -c`` puts its working directory first on the path
            capture_output=True,
            text=True,
            check=True,
        )
    except subprocess.CalledProcessError:
        return "unknown (a tree from before ssebridge.fanout)"
    return out.stdout.strip()


def nchan_available() -> bool:
    """nginx and Debian's nchan module both present (installed with apt-get, never by this script)."""
    return shutil.which("nginx") is not None and NCHAN_MODULE.is_file()


def nginx_config(run_dir: Path, port: int, redis_port: int) -> Path:
    """One nginx worker (as the floor and the bridge have one thread), nchan storing in our Redis."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (run_dir / sub).mkdir(exist_ok=True)
    conf = run_dir / "nginx.conf"
    conf.write_text(
        f"""load_module {NCHAN_MODULE};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 100000;
pid {run_dir}/nginx.pid;
error_log {run_dir}/nginx-error.log warn;
events {{ worker_connections 60000; use epoll; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {run_dir}/body; proxy_temp_path {run_dir}/proxy;
  fastcgi_temp_path {run_dir}/fastcgi; uwsgi_temp_path {run_dir}/uwsgi; scgi_temp_path {run_dir}/scgi;
  nchan_redis_url "redis://127.0.0.1:{redis_port}";
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location ~ ^/events/(\\w+)$ {{ nchan_subscriber eventsource; nchan_channel_id $1; nchan_use_redis on; }}
    location = /pub {{ nchan_publisher; nchan_channel_id $arg_id; nchan_use_redis on; }}
  }}
}}
""",
        encoding="utf-8",
    )
    return conf


def start_server(
    kind: str,
    reaper: services.Reaper,
    run_dir: Path,
    redis_port: int,
    tools: dict[str, Path],
    repo: Path,
    baseline: Path | None = None,
) -> tuple[int, int]:
    """Start the server under test on a free port; return (port, pid of its process tree's root)."""
    port = services.free_port()
    out = open(run_dir / f"{kind}.log", "wb")
    if kind == "floor":
        proc = subprocess.Popen(
            [str(tools["floor"]), "-p", str(port), "-r", str(redis_port), "-c", "bench", "-d", "900"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=services.die_with_parent,
        )
        reaper.add(kind, proc, stop_timeout=5.0)
        services.wait_for_port("127.0.0.1", port, 15.0, proc)
    elif kind == "nchan":
        conf = nginx_config(run_dir, port, redis_port)
        proc = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(run_dir), "-e", str(run_dir / "nginx-error.log")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=services.die_with_parent,
        )
        reaper.add(kind, proc, stop_timeout=10.0)
        services.wait_for_port("127.0.0.1", port, 15.0, proc)
    else:
        config = run_dir / "bridge.ini"
        multi = ",".join(f"subscribe={c}" for c in CHANNELS_16)
        services.write_bridge_config(
            config, port, f"127.0.0.1:{redis_port}", 1, [f"route = ^/multi$ sse:{multi}"]
        )
        command = services.DEFAULT_BRIDGE_CMD
        if kind == "ssebridge-py":
            command = "env SSEBRIDGE_FANOUT=python " + command
        if kind == "baseline" and baseline is not None:
            repo = baseline
        proc = services.start_bridge(reaper, repo, config, port, run_dir / "bridge.log", command=command)
    out.close()
    return port, proc.pid


def run_one(
    kind: str, sc: Scenario, args: argparse.Namespace, tools: dict[str, Path], out_root: Path, label: str
) -> dict[str, Any]:
    """One server, one scenario, its own Redis; the figures of the run."""
    run_dir = out_root / label
    run_dir.mkdir(parents=True)
    reaper = services.Reaper()
    clients: list[subprocess.Popen[bytes]] = []  # sseload processes: ours, in our own process group
    try:
        _, redis_port, redis_pid = services.start_redis(reaper, run_dir)
        port, root = start_server(kind, reaper, run_dir, redis_port, tools, args.repo, args.baseline)
        time.sleep(args.settle)
        rss_before = procstat.rss_kib(procstat.process_tree(root))
        ready = run_dir / "ready.json"
        path = "/multi" if sc.channels > 1 else "/events/bench"
        sub_cmd = [
            str(tools["sseload"]),
            "sub",
            "-p",
            str(port),
            "-u",
            path,
            "-n",
            str(sc.clients),
            "-r",
            "0",
            "-P",
            "512",
            "-k",
            "16",
            "-m",
            str(sc.messages),
            "-d",
            str(sc.messages / sc.rate + 60),
            "-i",
            "5",
            "-T",
            "30",
            "-R",
            str(ready),
            "-q",
            "-L",
            label,
        ]
        with open(run_dir / "sub.err", "wb") as sub_err:
            sub = subprocess.Popen(
                sub_cmd, stdout=subprocess.PIPE, stderr=sub_err, preexec_fn=services.die_with_parent
            )
        clients.append(sub)
        deadline = time.monotonic() + 90
        while not ready.exists():
            if sub.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the clients did not connect (see {run_dir}/sub.err)")
            time.sleep(0.2)
        time.sleep(args.settle)
        tree = procstat.process_tree(root)
        rss_idle = procstat.rss_kib(tree)
        groups = {"server": tree, "redis": [redis_pid], "sub": [sub.pid]}
        before = procstat.cpu_snapshot(groups, time.monotonic())
        per = sc.messages // sc.channels
        pubs = []
        for i in range(sc.channels):
            channel = CHANNELS_16[i] if sc.channels > 1 else "bench"
            pub_cmd = [
                str(tools["sseload"]),
                "pub",
                "-m",
                str(per),
                "-r",
                str(sc.rate / sc.channels),
                "-s",
                "64",
                "-w",
                "32",
                "-S",
                str(i * per + 1),
                "-C",
                channel,
                "-q",
            ]
            if kind == "nchan":
                pub_cmd += ["-t", "http", "-p", str(port), "-u", f"/pub?id={channel}"]
            else:
                pub_cmd += ["-t", "redis", "-p", str(redis_port)]
            pubs.append(
                subprocess.Popen(
                    pub_cmd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=services.die_with_parent,
                )
            )
        clients.extend(pubs)
        pub_cpu = 0.0  # each publisher prints its own CPU time (it is gone before the run ends)
        for p in pubs:
            p.wait()
        for p in pubs:
            assert p.stdout is not None
            line = p.stdout.read().decode().strip().splitlines()
            if line:
                cpu = json.loads(line[-1]).get("cpu", {})
                pub_cpu += cpu.get("user_s", 0.0) + cpu.get("sys_s", 0.0)
        snap_before_exit = None
        while sub.poll() is None:
            snap_before_exit = procstat.cpu_snapshot(groups, time.monotonic())
            time.sleep(0.1)
        after = snap_before_exit or procstat.cpu_snapshot(groups, time.monotonic())
        assert sub.stdout is not None
        res = json.loads(sub.stdout.read().decode().strip().splitlines()[-1])
        wall = after.at - before.at
        cpu_s = {
            g: sum(after.ticks[g].get(p, 0) - t for p, t in before.ticks[g].items()) / procstat.CLK_TCK
            for g in groups
        }
        machine = procstat.machine_percent(before, after)
        ours = 100.0 * (sum(cpu_s.values()) + pub_cpu) / wall
        events = res["events"]
        return {
            "label": label,
            "server": kind,
            "scenario": sc.key,
            "clients": res["established"],
            "failed": res["failed"],
            "dropped": res["dropped"],
            "events": events,
            "expected": res["expected"],
            "lost": res["lost"],
            "dups": res["dups"],
            "p50_ms": res["lat_ms"]["p50"],
            "p99_ms": res["lat_ms"]["p99"],
            "max_ms": res["lat_ms"]["max"],
            "delivered_per_s": res["events_per_s"],
            "cpu_us_per_delivery": 1e6 * cpu_s["server"] / events if events else None,
            "server_cpu_pct": 100.0 * cpu_s["server"] / wall,
            "redis_cpu_pct": 100.0 * cpu_s["redis"] / wall,
            "sub_cpu_pct": 100.0 * cpu_s["sub"] / wall,
            "kib_per_client": (rss_idle - rss_before) / max(res["established"], 1),
            "rss_before_mib": rss_before / 1024,
            "rss_idle_mib": rss_idle / 1024,
            "machine_pct": machine,
            "other_pct": max(machine - ours, 0.0),
            "interval_s": wall,
        }
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reaper.stop_all()


FIGURES = [
    ("p50_ms", "p50"),
    ("p99_ms", "p99"),
    ("delivered_per_s", "delivered/s"),
    ("cpu_us_per_delivery", "CPU us/delivery"),
    ("kib_per_client", "KiB/client"),
]


def summarize(rows: list[dict[str, Any]], scenarios: list[Scenario]) -> list[dict[str, Any]]:
    """Medians per (scenario, server), and each figure's ratio to the floor's median."""
    out = []
    for sc in scenarios:
        floor_key = "1k" if sc.channels > 1 else sc.key  # the floor has one channel: compare at the same rate
        floor_rows = [r for r in rows if r["server"] == "floor" and r["scenario"] == floor_key]
        for kind in KINDS:
            mine = [r for r in rows if r["server"] == kind and r["scenario"] == sc.key]
            if not mine:
                continue
            med = {f: statistics.median(r[f] for r in mine if r[f] is not None) for f, _ in FIGURES}
            entry: dict[str, Any] = {
                "scenario": sc.key,
                "server": kind,
                "runs": len(mine),
                "lost": sum(r["lost"] for r in mine),
                "dups": sum(r["dups"] for r in mine),
                "median": med,
                "ratio": {},
            }
            if floor_rows:
                for f, _ in FIGURES:
                    base = statistics.median(r[f] for r in floor_rows)
                    entry["ratio"][f] = med[f] / base if base else None
            out.append(entry)
    return out


def print_tables(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
    print(
        "| run | clients | events / expected | lost | dup | p50 ms | p99 ms | delivered/s | server CPU % | "
        "CPU µs/delivery | KiB/client | redis % | client % | machine / other % |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = f"{r['cpu_us_per_delivery']:.2f}" if r["cpu_us_per_delivery"] is not None else "-"
        print(
            f"| {r['label']} | {r['clients']:,} | {r['events']:,} / {r['expected']:,} | {r['lost']:,} | "
            f"{r['dups']:,} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['delivered_per_s']:,.0f} | "
            f"{r['server_cpu_pct']:.1f} | {cpu} | {r['kib_per_client']:.2f} | {r['redis_cpu_pct']:.1f} | "
            f"{r['sub_cpu_pct']:.1f} | {r['machine_pct']:.0f} / {r['other_pct']:.0f} |"
        )
    print()
    print("| scenario | server | runs | lost | " + " | ".join(name for _, name in FIGURES) + " |")
    print("|---|---|---|---|" + "---|" * len(FIGURES))
    for e in summary:
        cells = []
        for f, _ in FIGURES:
            v, ratio = e["median"][f], e["ratio"].get(f)
            text = f"{v:,.0f}" if f == "delivered_per_s" else f"{v:.2f}"
            if ratio is not None and e["server"] != "floor":
                text += f" ({ratio:.2f}x)"
            cells.append(text)
        print(
            f"| {e['scenario']} | {e['server']} | {e['runs']} | {e['lost']:,} | " + " | ".join(cells) + " |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated scenario keys (10k,5k,1k,16ch); default all")
    ap.add_argument(
        "--servers",
        default="floor,ssebridge,nchan",
        help="which servers (those available): floor, ssebridge, ssebridge-py, nchan",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another tree whose bridge runs too, as the server 'baseline' (a before/after in one run)",
    )
    ap.add_argument("--repo", type=Path, default=REPO, help="the tree whose ssebridge is run (PYTHONPATH)")
    ap.add_argument("--shared", type=Path, default=SHARED, help="where floor.c and sseload.c are")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds before each RSS reading")
    args = ap.parse_args()
    scenarios = [s for s in SCENARIOS if not args.only or s.key in args.only.split(",")]
    log(f"bridge at {args.repo}: fan-out loop {fanout_of(args.repo)}")
    tmp = Path(tempfile.mkdtemp(prefix="ssebridge-floor-"))
    try:
        sseload = build(args.shared / "sseload.c", tmp)
        if sseload is None:
            log("sseload.c is needed for the clients and publishers: stopping")
            return 2
        tools = {"sseload": sseload}
        servers = [s for s in args.servers.split(",") if s]
        if args.baseline is None and "baseline" in servers:
            log("the server 'baseline' needs --baseline DIR: skipped")
            servers.remove("baseline")
        if args.baseline is not None and "baseline" not in servers:
            at = servers.index("ssebridge") + 1 if "ssebridge" in servers else len(servers)
            servers.insert(at, "baseline")
            log(f"baseline bridge at {args.baseline}: fan-out loop {fanout_of(args.baseline)}")
        floor = build(args.shared / "floor.c", tmp) if "floor" in servers else None
        if floor is not None:
            tools["floor"] = floor
        else:
            servers = [s for s in servers if s != "floor"]
        if "nchan" in servers and not nchan_available():
            log(
                "nginx or libnginx-mod-nchan is not installed (apt-get install nginx libnginx-mod-nchan): "
                "nchan skipped"
            )
            servers.remove("nchan")
        out_root = REPO / "bench" / "out" / f"floor-{time.strftime('%Y%m%d-%H%M%S')}"
        rows: list[dict[str, Any]] = []
        for rnd in range(1, args.rounds + 1):
            for sc in scenarios:
                for kind in servers:
                    if sc.channels > 1 and kind in ("floor", "nchan"):
                        continue  # the floor has one channel; nchan's multiplexed channels are another API
                    label = f"{sc.key}-{kind}-r{rnd}"
                    log(f"{label}: {sc.clients:,} clients x {sc.rate:g} msg/s, {sc.messages:,} messages")
                    try:
                        row = run_one(kind, sc, args, tools, out_root, label)
                    except (
                        RuntimeError,
                        TimeoutError,
                        subprocess.CalledProcessError,
                        KeyError,
                        ValueError,
                    ) as e:
                        log(f"{label} failed: {e}")
                        continue
                    log(
                        f"{label}: p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} ms, "
                        f"{row['delivered_per_s']:,.0f}/s, lost {row['lost']}, other {row['other_pct']:.0f}%"
                    )
                    rows.append(row)
        summary = summarize(rows, scenarios)
        print_tables(rows, summary)
        result = {
            "rows": rows,
            "summary": summary,
            "servers": servers,
            "repo": str(args.repo),
            "baseline": str(args.baseline) if args.baseline else None,
            "fanout": fanout_of(args.repo),
        }
        out_root.mkdir(parents=True, exist_ok=True)
        (out_root / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        print(json.dumps(result))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
