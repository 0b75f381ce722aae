"""Benchmark an SSE server fed by Redis pub/sub: one command, bounded, everything started and stopped.

    python bench/run.py --clients 1000 --rate 100 --messages 1000
    python bench/run.py --clients 1000 --flood --size 64 --duration 20
    python bench/run.py --clients 10000 --rate 1 --messages 60 --workers 2
    python bench/run.py --url http://127.0.0.1:8080/sse/bench --redis 127.0.0.1:6379 --pid 1234

What happens, in order (README.md explains every figure):

1. a private ``redis-server`` on a free port (unless ``--redis``);
2. the bridge, ``python -m twisted ssebridge --config <ini>`` with ``PYTHONPATH=<repo>`` (unless
   ``--url``), and its baseline RSS;
3. ``--load-procs`` processes (``loadgen.py``) open ``--clients`` SSE connections; the server's RSS
   with them idle gives the memory per client;
4. one process (``publisher.py``) publishes ``--messages`` at ``--rate``, or floods;
5. once every client has everything (or nothing moved for ``--drain-timeout`` s), the load
   processes report; the figures are printed as a table and one JSON line (also saved in bench/out/).

Only the standard library is used, so the tool can benchmark any server from any environment.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any, cast

import loadgen
import procstat
import publisher
import report
import services

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
#: A load process whose CPU share is above this (percent of one core) probably capped the figures.
LOAD_SATURATION = 85.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Benchmark an SSE server (the bridge by default) fed through Redis pub/sub.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("load")
    g.add_argument("--clients", "-n", type=int, default=100, help="SSE connections to open")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--rate", "-r", type=float, default=100.0, help="messages per second (paced)")
    mode.add_argument("--flood", action="store_true",
                      help="publish as fast as every client keeps up (windowed, see --window)")
    g.add_argument("--messages", "-m", type=int, default=None,
                   help="messages to publish [paced: 1000; flood: until --duration]")
    g.add_argument("--size", type=int, default=64, help="payload size in bytes (seq and timestamp included)")
    g.add_argument("--duration", type=float, default=None,
                   help="stop publishing after this many seconds [paced: messages/rate*1.5+10; flood: 20]")
    g.add_argument("--window", type=int, default=100, help="flood: messages per window")
    g.add_argument("--flood-fraction", type=float, default=0.9,
                   help="flood: share of the previous window every client must have before the next one")
    g.add_argument("--load-procs", type=int, default=os.cpu_count() or 1, help="client processes")
    g.add_argument("--src-addrs", type=int, default=8,
                   help="spread source addresses over 127.0.0.1..127.0.0.K (ports per address ~28k)")
    g.add_argument("--sample-conns", type=int, default=100,
                   help="connections whose every event's latency is recorded (1 in N/this)")
    g.add_argument("--connect-concurrency", type=int, default=256, help="connects in flight per load process")
    g.add_argument("--connect-timeout", type=float, default=15.0, help="per connection, until headers")
    g.add_argument("--connect-deadline", type=float, default=180.0, help="for the whole connect phase")
    g.add_argument("--settle", type=float, default=2.0, help="seconds to wait before each RSS reading")
    g.add_argument("--drain-timeout", type=float, default=5.0,
                   help="after publishing: stop waiting once nothing arrived for this long")
    g.add_argument("--max-time", type=float, default=1800.0, help="hard bound on the whole run, seconds")

    g = p.add_argument_group("target")
    g.add_argument("--url", help="benchmark this SSE URL instead of starting the bridge")
    g.add_argument("--pid", type=int, help="with --url: the server's pid, for RSS and CPU figures")
    g.add_argument("--channel", default="bench", help="Redis channel to publish to (and /events/<channel>)")
    g.add_argument("--redis", help="host:port of an existing Redis instead of a private redis-server "
                                   "[with --url: 127.0.0.1:6379]")
    g.add_argument("--workers", "-w", type=int, default=1, help="bridge worker processes (config 'workers')")
    g.add_argument("--bridge-cmd", default=services.DEFAULT_BRIDGE_CMD,
                   help="command template to start the bridge ({python} {config} {port} {repo})")
    g.add_argument("--bridge-opt", action="append", default=[], metavar="'KEY = VALUE'",
                   help="extra line for the bridge's ini config (repeatable)")
    g.add_argument("--bridge-start-timeout", type=float, default=30.0)

    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="directory for logs and results")
    g.add_argument("--label", default="", help="a note stored with the results")
    g.add_argument("--append-results", action="store_true", help="add a row to --results-file")
    g.add_argument("--results-file", type=Path, default=BENCH_DIR / "RESULTS.md",
                   help="markdown file that --append-results adds to")
    g.add_argument("--profile", action="store_true",
                   help="run py-spy on the server during the measured interval (installed if missing)")
    g.add_argument("--profile-format", choices=["flamegraph", "raw", "speedscope"], default="flamegraph")
    g.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.clients < 1 or args.load_procs < 1 or args.size < 1 or args.workers < 1:
        p.error("--clients, --load-procs, --size and --workers must be at least 1")
    if not args.flood and args.rate <= 0:
        p.error("--rate must be positive")
    if args.messages is None:
        args.messages = 10**12 if args.flood else 1000
    if args.duration is None:
        args.duration = 20.0 if args.flood else args.messages / args.rate * 1.5 + 10.0
    args.load_procs = min(args.load_procs, args.clients)
    if args.url and not args.redis:
        # The server under test is subscribed to some Redis it was configured with: the standard one,
        # unless told otherwise (a private redis-server's port could not be in its config).
        args.redis = "127.0.0.1:6379"
    return args


class Interrupted(Exception):
    """SIGTERM or the --max-time alarm: unwind through the cleanup like Ctrl-C does."""


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def log(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Target:
    """Where the clients connect, and which processes are the server (for RSS and CPU)."""

    def __init__(self, host: str, port: int, path: str, root_pid: int | None, kind: str, url: str) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.root_pid = root_pid
        self.kind = kind
        self.url = url

    def pids(self) -> list[int]:
        return procstat.process_tree(self.root_pid) if self.root_pid else []


def start_target(args: argparse.Namespace, reaper: services.Reaper, redis_addr: str, run_dir: Path) -> Target:
    """Start the bridge (or take ``--url``) and wait until it accepts connections."""
    if args.url:
        u = urllib.parse.urlsplit(args.url)
        if u.scheme != "http" or not u.hostname:
            raise RuntimeError("--url must be http://host:port/path")
        if u.hostname not in ("127.0.0.1", "localhost") and not u.hostname.startswith("127."):
            raise RuntimeError("--url must be a loopback address")
        host = "127.0.0.1" if u.hostname == "localhost" else u.hostname
        port = u.port or 80
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        services.wait_for_port(host, port, 10.0)
        return Target(host, port, path, args.pid, "url", args.url)
    port = services.free_port()
    config = run_dir / "bridge.ini"
    services.write_bridge_config(config, port, redis_addr, args.workers, args.bridge_opt)
    log(args, f"starting the bridge on 127.0.0.1:{port} (log: {run_dir / 'bridge.log'})")
    proc = services.start_bridge(
        reaper, REPO, config, port, run_dir / "bridge.log", args.bridge_cmd, args.bridge_start_timeout
    )
    path = f"/events/{args.channel}"
    return Target("127.0.0.1", port, path, proc.pid, "bridge", f"http://127.0.0.1:{port}{path}")


def start_profiler(
    args: argparse.Namespace, reaper: services.Reaper, target: Target, run_dir: Path
) -> Path | None:
    """Start ``py-spy record`` on the server's process tree; it writes its file when stopped."""
    if not target.root_pid:
        log(args, "--profile needs the server's pid (--pid with --url): skipped")
        return None
    exe = shutil.which("py-spy")
    if exe is None:
        log(args, "py-spy not found: pip install py-spy")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=False, timeout=300)
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            log(args, "py-spy could not be installed: profile skipped")
            return None
    ext = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[args.profile_format]
    output = run_dir / f"profile.{ext}"
    argv = [exe, "record", "--pid", str(target.root_pid), "--subprocesses", "--nonblocking",
            "--rate", str(args.profile_rate), "--format", args.profile_format, "--output", str(output)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(run_dir / "py-spy.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    reaper.add("py-spy", proc, stop_timeout=30.0)
    return output


def stop_profiler(reaper: services.Reaper) -> None:
    """SIGINT makes py-spy write its output; the reaper then waits for it to exit."""
    for managed in reaper.procs:
        if managed.name == "py-spy" and managed.proc.poll() is None:
            os.killpg(managed.proc.pid, signal.SIGINT)
            try:
                managed.proc.wait(30.0)
            except subprocess.TimeoutExpired:
                pass
    reaper.stop("py-spy")



def summarise_ready(ready: list[Any]) -> tuple[int, int, Counter[str], list[float]]:
    """The load processes' "ready" reports added up: connected, failed, why, connect times (sorted)."""
    fail_reasons: Counter[str] = Counter()
    connect_ms: list[float] = []
    for m in ready:
        fail_reasons.update(m[3])
        connect_ms.extend(m[4])
    connect_ms.sort()
    return sum(m[1] for m in ready), sum(m[2] for m in ready), fail_reasons, connect_ms

class LoadProcs:
    """The load processes, their control pipes and the shared counters they publish."""

    def __init__(
        self, args: argparse.Namespace, target: Target, variants: tuple[tuple[str, int], ...] = ()
    ) -> None:
        """Start the processes; ``variants`` (see ``loadgen.LoadSpec``) vary headers per connection."""
        ctx = multiprocessing.get_context("fork")
        n = args.load_procs
        self.alive = ctx.RawArray("q", n)
        self.progress = ctx.RawArray("q", n)
        self.pipes: list[Connection] = []
        self.procs: list[BaseProcess] = []
        src_addrs = tuple(f"127.0.0.{i}" for i in range(1, max(1, args.src_addrs) + 1))
        sample_every = max(1, args.clients // max(1, args.sample_conns))
        first = 0
        for slot in range(n):
            count = args.clients // n + (1 if slot < args.clients % n else 0)
            spec = loadgen.LoadSpec(
                host=target.host,
                port=target.port,
                path=target.path,
                count=count,
                first_index=first,
                src_addrs=src_addrs,
                sample_every=sample_every,
                connect_concurrency=args.connect_concurrency,
                connect_timeout=args.connect_timeout,
                connect_deadline=args.connect_deadline,
                variants=variants,
            )
            first += count
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=loadgen.run,
                args=(spec, slot, child_end, self.alive, self.progress, os.getpid()),
                name=f"bench-load-{slot}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.procs.append(proc)
        self.sampled_connections = len(range(0, args.clients, sample_every))

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def collect(self, kind: str, timeout: float) -> list[tuple[Any, ...]]:
        """One ``(kind, ...)`` message from every load process, in slot order; raise on timeout/death."""
        got: dict[int, tuple[Any, ...]] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.pipes):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"load processes did not report '{kind}' within {timeout:.0f} s")
            waiting = [c for i, c in enumerate(self.pipes) if i not in got]
            for conn in cast(list[Connection], wait(waiting, min(left, 1.0))):
                slot = self.pipes.index(conn)
                try:
                    message: tuple[Any, ...] = conn.recv()
                except EOFError:
                    code = self.procs[slot].exitcode
                    raise RuntimeError(f"load process {slot} died (exit code {code})") from None
                if message[0] == kind:
                    got[slot] = message
        return [got[i] for i in range(len(self.pipes))]

    def send(self, message: tuple[Any, ...]) -> None:
        for conn in self.pipes:
            conn.send(message)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)


def rss_mib(pids: list[int]) -> float | None:
    return procstat.rss_kib(pids) / 1024.0 if pids else None


def run(args: argparse.Namespace, reaper: services.Reaper) -> dict[str, Any]:
    """One benchmark run; returns the report (see ``report.table`` for its shape)."""
    started_at = report.now_iso()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=args.out))
    warnings: list[str] = []

    # 1. Redis.
    redis_pid: int | None = None
    if args.redis:
        redis_host, _, port_text = args.redis.rpartition(":")
        redis_host, redis_port = redis_host or "127.0.0.1", int(port_text)
        services.resp_command(redis_host, redis_port, b"PING")
    else:
        redis_host, redis_port, redis_pid = services.start_redis(reaper, run_dir)
        log(args, f"redis-server on {redis_host}:{redis_port}")
    channel = args.channel.encode()

    # 2. The server and its baseline memory.
    target = start_target(args, reaper, f"{redis_host}:{redis_port}", run_dir)
    time.sleep(args.settle)
    baseline = rss_mib(target.pids())

    # 3. Clients, then the server's memory with them idle.
    log(args, f"opening {args.clients:,} clients from {args.load_procs} processes to {target.url}")
    load = LoadProcs(args, target)
    reaper.on_exit(load.stop)
    ready = load.collect("ready", args.connect_deadline + 60.0)
    connected, failed, fail_reasons, connect_ms = summarise_ready(ready)
    log(args, f"{connected:,} connected, {failed:,} failed {dict(fail_reasons) or ''}")
    time.sleep(args.settle)
    server_pids = target.pids()
    idle = rss_mib(server_pids)
    redis_numsub = services.numsub(redis_host, redis_port, channel)
    if target.kind == "bridge" and args.workers > 1:
        if len(server_pids) < args.workers:
            warnings.append(
                f"asked for {args.workers} workers, the bridge runs {len(server_pids)} process(es):"
                f" 'workers' not supported by this build? (see {run_dir / 'bridge.log'})"
            )
        elif redis_numsub < args.workers:
            warnings.append(f"{args.workers} workers, but Redis counts {redis_numsub} subscriber(s)")
    if connected and redis_numsub == 0:
        warnings.append(f"Redis counts no subscriber on {args.channel!r}: messages will reach nobody")

    # 4. Publish, watching progress; the measured interval ends at the last progress seen.
    pub_result = publisher.PubResult()
    profile: Path | None = None
    groups = {
        "server": server_pids,
        "redis": [redis_pid] if redis_pid else [],
        "load": load.pids(),
    }
    cpu_before = cpu_after = procstat.cpu_snapshot(groups, time.monotonic())
    if connected:
        load.send(("measure",))
        if args.profile:
            profile = start_profiler(args, reaper, target, run_dir)
        ctx = multiprocessing.get_context("fork")
        pub_end, pub_child = ctx.Pipe()
        spec = publisher.PubSpec(
            host=redis_host, port=redis_port, channel=channel, messages=args.messages, size=args.size,
            rate=args.rate, flood=args.flood, duration=args.duration, window=args.window,
            flood_fraction=args.flood_fraction,
        )
        pub_proc = ctx.Process(
            target=publisher.run,
            args=(spec, pub_child, load.alive, load.progress, os.getpid()),
            name="bench-publisher",
            daemon=True,
        )
        groups["publisher"] = []
        cpu_before = procstat.cpu_snapshot(groups, time.monotonic())
        pub_proc.start()
        pub_child.close()

        def stop_publisher() -> None:
            try:
                pub_end.send(("exit",))
            except OSError:
                pass
            pub_proc.join(2.0)
            if pub_proc.is_alive():
                pub_proc.terminate()
            pub_proc.join(5.0)

        reaper.on_exit(stop_publisher)
        groups["publisher"] = [pub_proc.pid] if pub_proc.pid else []
        cpu_before.ticks["publisher"] = {pid: 0 for pid in groups["publisher"]}
        pub_result, cpu_after = _watch(args, load, pub_proc, pub_end, groups)
        if profile:
            stop_profiler(reaper)
        stop_publisher()
    else:
        warnings.append("no client connected: nothing published")

    # 5. Results.
    load.send(("stop", pub_result.published))
    results: list[loadgen.LoadResult] = [m[1] for m in load.collect("result", 120.0)]
    after_pids = target.pids()
    after = rss_mib(after_pids)
    peak = procstat.peak_rss_kib(after_pids) / 1024.0 if after_pids else None
    rep = build_report(
        args, target, started_at, connected, failed, fail_reasons, connect_ms, redis_numsub,
        pub_result, results, load.sampled_connections, baseline, idle, after, peak,
        procstat.cpu_percent(cpu_before, cpu_after), procstat.machine_percent(cpu_before, cpu_after),
        cpu_after.at - cpu_before.at, warnings,
    )
    rep["command"] = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    rep["machine"] = report.machine_info()
    rep["profile"] = str(profile) if profile and profile.exists() else None
    if profile and profile.exists() and args.profile_format == "raw":
        summary = run_dir / "profile-top.txt"
        summary.write_text(report.summarize_raw_profile(profile), encoding="utf-8")
        rep["profile_summary"] = str(summary)
    rep["run_dir"] = str(run_dir)
    (run_dir / "result.json").write_text(json.dumps(rep, indent=2) + "\n", encoding="utf-8")
    return rep


def _watch(
    args: argparse.Namespace,
    load: LoadProcs,
    pub_proc: BaseProcess,
    pub_end: Connection,
    groups: dict[str, list[int]],
) -> tuple[publisher.PubResult, procstat.CpuSnapshot]:
    """Follow the run until publishing is over and the clients have drained (or stopped moving).

    Returns the publisher's result and the CPU snapshot taken at the last moment progress was seen,
    so CPU figures cover the busy interval and not the idle wait of the drain timeout.
    """
    start = time.monotonic()
    hard_deadline = start + args.duration + args.drain_timeout + 60.0
    pub_result: publisher.PubResult | None = None
    last_progress = -1
    last_change = start
    cpu_at_change = procstat.cpu_snapshot(groups, start)
    next_line = start + 1.0
    while True:
        now = time.monotonic()
        if pub_result is None and pub_end.poll(0):
            try:
                pub_result = pub_end.recv()[1]
            except EOFError:
                pub_result = publisher.PubResult(errors=["publisher died"])
        done = sum(load.progress)
        alive = sum(load.alive)
        if done != last_progress:
            last_progress, last_change = done, now
            cpu_at_change = procstat.cpu_snapshot(groups, now)
        if now >= next_line:
            state = "publishing" if pub_result is None else "draining"
            log(args, f"{state}: t={now - start:5.1f}s  clients alive {alive:,}  "
                      f"avg seq reached {done / max(alive, 1):,.0f}")
            next_line = now + 1.0
        if pub_result is not None:
            if alive == 0 or done >= alive * pub_result.published:
                break
            if now - last_change > args.drain_timeout:
                log(args, f"nothing arrived for {args.drain_timeout:.0f} s: stopping")
                break
        elif not pub_proc.is_alive() and not pub_end.poll(0):
            pub_result = publisher.PubResult(errors=[f"publisher exited with {pub_proc.exitcode}"])
        if now > hard_deadline:
            log(args, "run deadline reached: stopping")
            if pub_result is None:
                pub_proc.terminate()
                pub_result = publisher.PubResult(errors=["publisher killed at the run deadline"])
            break
        time.sleep(0.05)
    return pub_result, cpu_at_change


def build_report(
    args: argparse.Namespace,
    target: Target,
    started_at: str,
    connected: int,
    failed: int,
    fail_reasons: Counter[str],
    connect_ms: list[float],
    redis_numsub: int,
    pub: publisher.PubResult,
    results: list[loadgen.LoadResult],
    sampled_connections: int,
    baseline: float | None,
    idle: float | None,
    after: float | None,
    peak: float | None,
    cpu: dict[str, dict[int, float]],
    machine: float,
    interval: float,
    warnings: list[str],
) -> dict[str, Any]:
    """Add up the load processes' results into the report's figures (README.md defines each one)."""
    events = sum(r.events for r in results)
    first = min((r.first_ns for r in results if r.first_ns), default=0)
    last = max((r.last_ns for r in results if r.last_ns), default=0)
    seconds = (last - first) / 1e9 if last > first else 0.0
    lost_gaps = sum(r.lost for r in results)
    lost_tail = sum(r.lost_tail for r in results)
    latencies = report.merge_latencies([(r.latencies_ns, r.latency_stride) for r in results])
    lat_ms = [v / 1e6 for v in latencies]
    close_reasons: Counter[str] = Counter()
    for r in results:
        close_reasons.update(r.close_reasons)
    load_cpu = [round(v, 1) for v in cpu.get("load", {}).values()]
    server_cpu = cpu.get("server", {})
    if pub.zero_receivers:
        warnings.append(f"{pub.zero_receivers} PUBLISHes reached no subscriber")
    if pub.errors:
        warnings.extend(pub.errors)
    if any(v > LOAD_SATURATION for v in load_cpu):
        warnings.append("a load process used most of a core: the figures may show the client's limit")
    ours = sum(sum(g.values()) for g in cpu.values())
    if machine - ours > 25.0:
        warnings.append(f"{machine - ours:.0f}% of a core went to other work (processes not ours, or kernel):"
                        " the cores were shared")
    per_client = None
    if connected and idle is not None and baseline is not None:
        per_client = (idle - baseline) * 1024.0 / connected
    pub_seconds = (pub.end_ns - pub.start_ns) / 1e9 if pub.end_ns > pub.start_ns else 0.0
    return {
        "started_at": started_at,
        "label": args.label,
        "target": target.url,
        "target_kind": target.kind,
        "workers": args.workers if target.kind == "bridge" else None,
        "mode": f"flood (window {args.window})" if args.flood else f"{args.rate:g} msg/s",
        "size": args.size,
        "clients_requested": args.clients,
        "clients_connected": connected,
        "clients_failed": failed,
        "fail_reasons": dict(fail_reasons),
        "connect_ms": {
            "p50": report.percentile(connect_ms, 50),
            "p99": report.percentile(connect_ms, 99),
            "max": connect_ms[-1] if connect_ms else None,
        },
        "closed_during_run": sum(r.closed_during_run for r in results),
        "close_reasons": dict(close_reasons),
        "redis_numsub": redis_numsub,
        "published": pub.published,
        "publish_rate": pub.published / pub_seconds if pub_seconds else None,
        "zero_receivers": pub.zero_receivers,
        "stalled": pub.stalled,
        "stopped_by_deadline": pub.stopped_by_deadline,
        "events": events,
        "events_expected": pub.published * connected,
        "deliveries_per_s": events / seconds if seconds else None,
        "delivery_seconds": seconds,
        "lost": lost_gaps + lost_tail,
        "lost_gaps": lost_gaps,
        "lost_tail": lost_tail,
        "undelivered_closed": sum(r.undelivered_closed for r in results),
        "duplicated": sum(r.duplicated for r in results),
        "latency_ms": {
            "p50": report.percentile(lat_ms, 50),
            "p90": report.percentile(lat_ms, 90),
            "p99": report.percentile(lat_ms, 99),
            "max": max((r.latency_max_ns for r in results), default=0) / 1e6 if latencies else None,
            "samples": len(latencies),
            "sampled_events": sum(r.latency_seen for r in results),
            "sampled_connections": sampled_connections,
        },
        "rss": {
            "baseline_mib": baseline,
            "idle_mib": idle,
            "after_mib": after,
            "peak_mib": peak,
            "per_client_kib": per_client,
        },
        "cpu_percent": {
            "interval_s": interval,
            "server": round(sum(server_cpu.values()), 1) if server_cpu else None,
            "server_procs": {str(k): round(v, 1) for k, v in server_cpu.items()},
            "redis": round(sum(cpu.get("redis", {}).values()), 1) if cpu.get("redis") else None,
            "publisher": round(sum(cpu.get("publisher", {}).values()), 1) if cpu.get("publisher") else None,
            "load_procs": load_cpu,
            "load_saturated": any(v > LOAD_SATURATION for v in load_cpu),
            "machine": round(machine, 1),
            # /proc/stat is tick-sampled, the per-process times are exact: at low load the machine
            # figure can come out below the processes' sum; that is no "negative other work".
            "other": round(max(0.0, machine - sum(sum(g.values()) for g in cpu.values())), 1),
            "cores": os.cpu_count(),
        },
        "warnings": warnings,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGALRM, _raise_interrupted)
    signal.setitimer(signal.ITIMER_REAL, args.max_time)
    reaper = services.Reaper()
    try:
        rep = run(args, reaper)
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"bench: interrupted ({str(e) or 'SIGINT'}): stopping everything", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError, OSError, ValueError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        reaper.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print(report.table(rep))
    print(json.dumps(rep, separators=(",", ":")))
    if args.append_results:
        report.append_results(args.results_file, rep)
        print(f"appended a row to {args.results_file}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
