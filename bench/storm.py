"""The reconnect storm: thousands of SSE clients resuming from ``Last-Event-ID`` at once, measured.

    python bench/storm.py                                   # 10,000 clients, both variants
    python bench/storm.py --clients 5000 --variants same --rounds 2

What a bridge restart causes: every browser reconnects within seconds, each with the id of the last
event it saw, so the bridge must replay the events published after it, then go live. Issue 11 item 7
promises that this costs one history read per (channel, id), not one per client, and that the
replayed frames are built once. One run of a variant:

1. a private ``redis-server`` and the bridge, started as ``run.py`` starts them (``services.py``);
2. ``--events`` events published on one channel with ``ssebridge.publish.Publisher`` (redis-py,
   ``publish.lua`` by ``EVALSHA``), payload ``"<seq> <monotonic_ns> "`` padded to ``--size`` as
   ``publisher.py`` writes it, so ``loadgen.py`` checks order, loss and duplicates;
3. ``--clients`` connections opened at once by ``loadgen.py`` processes (``--connect-concurrency``
   handshakes in flight per process), each with a ``Last-Event-ID`` header: ``same``: every client the
   id of the middle event; ``spread``: one of ten ids around the middle (``--spread-step`` events
   apart), so each client replays about ``--events / 2`` events; ``none`` (a control): no header, so
   no replay, the same connection storm otherwise;
4. once every client holds its whole replay, one more event is published; every client must get it:
   then every stream is live;
5. figures: time from the first connect to "every replay complete" and to "every client live",
   events per client against the expected count (from the id it sent to the last event), Redis
   commands during the storm (``INFO commandstats`` before and after; the live event's own publish is
   left out), and CPU of the bridge and of redis-server from ``/proc``.

Prints a table and one JSON line (the same shape of output as ``run.py``); the JSON is also kept in
``bench/out/storm-<time>-<id>/result.json`` with the bridge's and Redis's logs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

import loadgen
import procstat
import report
import run
import services
from publisher import FIRST_SEQ

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
#: Commands shown in the table (all that changed are in the JSON).
SHOWN = ("evalsha", "evalsha:failed", "eval", "xinfo|stream", "xrange", "subscribe")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/storm.py",
        description="Reconnect storm: N SSE clients resume from Last-Event-ID at once; time, Redis, CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--clients", "-n", type=int, default=10_000, help="SSE connections opened at once")
    p.add_argument("--events", type=int, default=200, help="events in history before the storm")
    p.add_argument("--size", type=int, default=64, help="payload size in bytes")
    p.add_argument("--variants", default="same,spread",
                   help="comma-separated: same (one id for all), spread (ten ids around the middle), "
                        "none (no Last-Event-ID: the same storm without replay, for comparison)")
    p.add_argument("--spread-step", type=int, default=10, help="spread: events between two of the ten ids")
    p.add_argument("--rounds", type=int, default=1, help="runs of each variant (alternating variants)")
    p.add_argument("--channel", default="storm", help="channel (and /events/<channel>)")
    p.add_argument("--load-procs", type=int, default=os.cpu_count() or 1, help="client processes")
    p.add_argument("--src-addrs", type=int, default=8, help="source addresses 127.0.0.1..127.0.0.K")
    p.add_argument("--sample-conns", type=int, default=100,
                   help="connections whose latency of the live event is recorded")
    p.add_argument("--connect-concurrency", type=int, default=1024,
                   help="handshakes in flight per load process")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="per connection, until headers")
    p.add_argument("--connect-deadline", type=float, default=120.0, help="for the whole connect phase")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="give up when replay or the live event is not complete this long after the start")
    p.add_argument("--bridge-opt", action="append", default=[], metavar="'KEY = VALUE'",
                   help="extra line for the bridge's ini config (repeatable)")
    p.add_argument("--bridge-cmd", default=services.DEFAULT_BRIDGE_CMD,
                   help="command template to start the bridge ({python} {config} {port} {repo})")
    p.add_argument("--settle", type=float, default=1.0, help="seconds between publishing and the storm")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="directory for logs and results")
    p.add_argument("--max-time", type=float, default=1800.0, help="hard bound on the whole command, seconds")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variant_list or any(v not in ("same", "spread", "none") for v in args.variant_list):
        p.error("--variants takes same, spread and/or none")
    if args.clients < 1 or args.events < 2 or args.rounds < 1 or args.load_procs < 1:
        p.error("--clients, --rounds, --load-procs must be at least 1 and --events at least 2")
    middle = args.events // 2
    if middle - 4 * args.spread_step < 1 or middle + 5 * args.spread_step > args.events:
        p.error("--spread-step too large for --events (ten ids around the middle must fit)")
    args.load_procs = min(args.load_procs, args.clients)
    args.url = None  # what run.LoadProcs and run.start_target read
    args.workers = 1
    args.bridge_start_timeout = 30.0
    return args


def log(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(f"[storm {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def positions(variant: str, args: argparse.Namespace) -> list[int]:
    """The seqs whose ids clients resume from: the middle event, or ten around it (none: the last)."""
    middle = args.events // 2
    if variant == "none":
        return [FIRST_SEQ + args.events - 1]
    if variant == "same":
        return [middle]
    return [middle + (k - 4) * args.spread_step for k in range(10)]


def commandstats(host: str, port: int) -> dict[str, int]:
    """``calls`` per command from ``INFO commandstats`` (commands run by scripts are counted too).

    Also ``NAME:failed`` (``failed_calls``, ``rejected_calls`` added): an ``EVALSHA`` answered
    ``NOSCRIPT`` counts as a call and a failed call. Subcommands are named ``xinfo|stream``.
    """
    text = services.resp_command(host, port, b"INFO", b"commandstats").decode("ascii", "replace")
    calls: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_"):].partition(":")
            for item in fields.split(","):
                key, _, value = item.partition("=")
                if key == "calls":
                    calls[name] = int(value)
                elif key in ("failed_calls", "rejected_calls") and int(value):
                    calls[f"{name}:failed"] = calls.get(f"{name}:failed", 0) + int(value)
    return calls


def diff_stats(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    changed = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    changed.pop("info", None)  # our own INFO
    return dict(sorted(changed.items()))


class Publish:
    """``Publisher`` from the repo's ``ssebridge.publish`` over redis-py (the library an app uses)."""

    def __init__(self, host: str, port: int, channel: str, size: int) -> None:
        sys.path.insert(0, str(REPO))
        import redis  # installed with ssebridge[publish]

        from ssebridge.publish import Publisher

        self.client = redis.Redis(host=host, port=port)
        self.publisher = Publisher(self.client)
        self.channel = channel
        self.size = size

    def one(self, seq: int) -> str:
        head = f"{seq} {time.monotonic_ns()} "
        return self.publisher.publish(self.channel, head + "x" * max(0, self.size - len(head)))

    def close(self) -> None:
        self.client.close()


def storm_once(args: argparse.Namespace, variant: str, round_no: int) -> dict[str, Any]:
    """One run of one variant, with its own redis-server and bridge; returns its figures."""
    reaper = services.Reaper()
    try:
        return _storm(args, variant, round_no, reaper)
    finally:
        reaper.stop_all()


def _storm(args: argparse.Namespace, variant: str, round_no: int, reaper: services.Reaper) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=time.strftime(f"storm-%Y%m%d-%H%M%S-{variant}-"), dir=args.out))
    warnings: list[str] = []
    host, port, redis_pid = services.start_redis(reaper, run_dir)
    target = run.start_target(args, reaper, f"{host}:{port}", run_dir)
    log(args, f"{variant} round {round_no}: redis {host}:{port}, bridge {target.url}")

    pub = Publish(host, port, args.channel, args.size)
    reaper.on_exit(pub.close)
    ids = {seq: pub.one(seq) for seq in range(FIRST_SEQ, FIRST_SEQ + args.events)}
    last_seq = FIRST_SEQ + args.events - 1
    starts = positions(variant, args)
    # A client resuming from seq s expects s+1 .. last_seq, then the live event.
    variants = tuple(("" if variant == "none" else f"Last-Event-ID: {ids[s]}\r\n", s + 1) for s in starts)
    time.sleep(args.settle)

    bridge_pids = target.pids()
    groups = {"bridge": bridge_pids, "redis": [redis_pid]}
    rss_before = procstat.rss_kib(bridge_pids) / 1024.0
    stats_before = commandstats(host, port)
    cpu0 = procstat.cpu_snapshot(groups, time.monotonic())
    log(args, f"{args.clients:,} clients resuming from {len(starts)} id(s) of {args.events} events")
    t0 = time.monotonic()
    load = run.LoadProcs(args, target, variants)
    reaper.on_exit(load.stop)
    groups["load"] = load.pids()

    # Replay: every client's share of history, counted by the load processes as they read it.
    per_variant = [args.clients // len(starts) + (1 if k < args.clients % len(starts) else 0)
                   for k in range(len(starts))]
    replay_total = sum(n * (last_seq - s) for n, s in zip(per_variant, starts, strict=True))
    ready = _wait_ready(args, load, t0)
    connected, failed, fail_reasons, connect_ms = run.summarise_ready(ready)
    t_connected = time.monotonic()
    if failed:
        warnings.append(f"{failed} clients failed to connect: {dict(fail_reasons)}")
    t_replayed = _wait_progress(args, load, replay_total, t0, "replay")
    stats_replayed = commandstats(host, port)
    cpu1 = procstat.cpu_snapshot(groups, time.monotonic())

    # Live: one more event must reach every client.
    load.send(("measure",))
    time.sleep(0.2)  # the load processes take "measure" before the event arrives
    t_pub = time.monotonic()
    pub.one(last_seq + 1)
    alive = sum(load.alive)
    t_live = _wait_progress(args, load, replay_total + alive, t0, "live")
    cpu2 = procstat.cpu_snapshot(groups, time.monotonic())
    rss_after = procstat.rss_kib(target.pids()) / 1024.0

    load.send(("stop", last_seq + 1))
    results: list[loadgen.LoadResult] = [m[1] for m in load.collect("result", 120.0)]
    excess: Counter[int] = Counter()
    for r in results:
        excess.update(r.per_conn_excess)
    samples = report.merge_latencies([(r.latencies_ns, r.latency_stride) for r in results])
    latencies = [v / 1e6 for v in samples]
    storm_cpu = procstat.cpu_percent(cpu0, cpu1)
    storm_s = cpu1.at - cpu0.at
    bridge_cpu_s = sum(storm_cpu.get("bridge", {}).values()) * storm_s / 100.0
    redis_cpu_s = sum(storm_cpu.get("redis", {}).values()) * storm_s / 100.0
    commands = diff_stats(stats_before, stats_replayed)
    events = sum(r.events for r in results)
    expected = sum(r.expected_events for r in results)
    if events != expected or excess.keys() - {0}:
        warnings.append("some clients did not receive exactly what they should")
    rep: dict[str, Any] = {
        "started_at": report.now_iso(),
        "variant": variant,
        "round": round_no,
        "resume_ids": 0 if variant == "none" else len(starts),
        "history_events": args.events,
        "replay_per_client": {"min": last_seq - max(starts), "max": last_seq - min(starts)},
        "clients_requested": args.clients,
        "clients_connected": connected,
        "clients_failed": failed,
        "fail_reasons": dict(fail_reasons),
        "closed_during_run": sum(r.closed_during_run for r in results),
        "connect_ms": {"p50": report.percentile(connect_ms, 50), "p99": report.percentile(connect_ms, 99),
                       "max": connect_ms[-1] if connect_ms else None},
        "all_connected_s": t_connected - t0,
        "all_replayed_s": t_replayed - t0,
        "all_live_s": t_live - t0,
        "live_event_ms": (t_live - t_pub) * 1000.0,
        "live_latency_ms": {"p50": report.percentile(latencies, 50), "p99": report.percentile(latencies, 99),
                            "samples": len(latencies)},
        "events": events,
        "events_expected": expected,
        "per_client_received_minus_expected": {str(k): v for k, v in sorted(excess.items())},
        "clients_exact": excess.get(0, 0),
        "lost": sum(r.lost + r.lost_tail for r in results),
        "duplicated": sum(r.duplicated for r in results),
        "redis_commands_storm": commands,
        "redis_commands_live_event": diff_stats(stats_replayed, commandstats(host, port)),
        "cpu": {
            "storm_interval_s": storm_s,
            "bridge_s": bridge_cpu_s,
            "bridge_percent": bridge_cpu_s / storm_s * 100.0 if storm_s else None,
            "bridge_us_per_client": bridge_cpu_s / connected * 1e6 if connected else None,
            "redis_s": redis_cpu_s,
            "load_percent": [round(v, 1) for v in storm_cpu.get("load", {}).values()],
            "machine_percent": procstat.machine_percent(cpu0, cpu1),
            "bridge_percent_to_live": sum(procstat.cpu_percent(cpu0, cpu2).get("bridge", {}).values()),
        },
        "bridge_rss_mib": {"before": rss_before, "after": rss_after},
        "warnings": warnings,
        "run_dir": str(run_dir),
    }
    (run_dir / "result.json").write_text(json.dumps(rep, indent=2) + "\n", encoding="utf-8")
    log(args, f"{variant}: live after {rep['all_live_s']:.2f} s, {events:,}/{expected:,} events, "
              f"evalsha {commands.get('evalsha', 0)}")
    return rep


def _wait_ready(args: argparse.Namespace, load: run.LoadProcs, t0: float) -> list[tuple[Any, ...]]:
    """Every load process's ``ready`` (all its handshakes done), with progress lines meanwhile."""
    got: dict[int, tuple[Any, ...]] = {}
    next_line = t0 + 1.0
    while len(got) < len(load.pipes):
        now = time.monotonic()
        if now - t0 > args.connect_deadline + 30.0:
            raise TimeoutError("load processes did not finish connecting")
        waiting = [c for i, c in enumerate(load.pipes) if i not in got]
        for conn in cast(list[Connection], wait(waiting, 0.05)):
            slot = load.pipes.index(conn)
            try:
                message: tuple[Any, ...] = conn.recv()
            except EOFError:
                raise RuntimeError(f"load process {slot} died") from None
            if message[0] == "ready":
                got[slot] = message
        if now >= next_line:
            log(args, f"connecting: t={now - t0:5.1f}s  streams {sum(load.alive):,}  "
                      f"events {sum(load.progress):,}")
            next_line = now + 1.0
    return [got[i] for i in range(len(load.pipes))]


def _wait_progress(args: argparse.Namespace, load: run.LoadProcs, total: int, t0: float, what: str) -> float:
    """The monotonic time at which the load processes' event count reached ``total``."""
    next_line = time.monotonic() + 1.0
    while True:
        now = time.monotonic()
        done = sum(load.progress)
        if done >= total:
            return now
        if now - t0 > args.timeout:
            raise TimeoutError(f"{what}: {done:,} of {total:,} events after {args.timeout:.0f} s")
        if now >= next_line:
            log(args, f"{what}: t={now - t0:5.1f}s  streams {sum(load.alive):,}  "
                      f"events {done:,} of {total:,}")
            next_line = now + 1.0
        time.sleep(0.002)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(reports: list[dict[str, Any]]) -> str:
    head = ("variant", "ids", "clients", "connected s", "replayed s", "live s", "live evt ms",
            "events/expected", "exact clients", "lost", "dup", *SHOWN, "bridge CPU s", "bridge µs/client",
            "redis CPU s", "machine %")
    rows: list[tuple[str, ...]] = [head]
    for r in reports:
        c = r["redis_commands_storm"]
        cpu = r["cpu"]
        rows.append((
            f"{r['variant']} #{r['round']}", str(r["resume_ids"]),
            f"{r['clients_connected']:,}/{r['clients_requested']:,}",
            _fmt(r["all_connected_s"]), _fmt(r["all_replayed_s"]), _fmt(r["all_live_s"]),
            _fmt(r["live_event_ms"], 0), f"{r['events']:,}/{r['events_expected']:,}",
            f"{r['clients_exact']:,}", _fmt(r["lost"]), _fmt(r["duplicated"]),
            *(_fmt(c.get(name, 0)) for name in SHOWN),
            _fmt(cpu["bridge_s"]), _fmt(cpu["bridge_us_per_client"], 0), _fmt(cpu["redis_s"], 3),
            _fmt(cpu["machine_percent"], 0),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    for r in reports:
        for w in r["warnings"]:
            lines.append(f"warning ({r['variant']} #{r['round']}): {w}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, run._raise_interrupted)
    signal.signal(signal.SIGALRM, run._raise_interrupted)
    signal.setitimer(signal.ITIMER_REAL, args.max_time)
    reports: list[dict[str, Any]] = []
    try:
        for round_no in range(1, args.rounds + 1):
            for variant in args.variant_list:
                reports.append(storm_once(args, variant, round_no))
    except (KeyboardInterrupt, run.Interrupted) as e:
        print(f"storm: interrupted ({str(e) or 'SIGINT'})", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError, OSError, ValueError) as e:
        print(f"storm: {e}", file=sys.stderr)
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    print(table(reports))
    print(json.dumps({"storm": reports, "command": " ".join([sys.executable, *sys.argv]),
                      "machine": report.machine_info()}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
