"""What a fleet of bridges costs Redis: CPU per message per subscribed bridge, and per subscription.

    python bench/redis_fanin.py                            # N = 0, 1, 2, 4 bridges, 2,000 msgs/s, 10 s
    python bench/redis_fanin.py --bridges 1,2,4 --rate 1000 --duration 10 --rounds 2
    python bench/redis_fanin.py --subscriptions 5000       # + one bridge holding 5,000 channels

**Fan-in.** Every bridge that has a client on a channel holds its own subscription to it, so each
message Redis receives is written once per subscribed bridge. One run per N: a private
``redis-server``, N bridges (``python -m twisted ssebridge``, started as ``run.py`` starts them), one
SSE client per bridge on channel ``news`` (the bridge subscribes once its first client arrives), then
``--rate`` messages/s for ``--duration`` s published with ``ssebridge.publish.Publisher`` (redis-py,
``publish.lua``: XADD + PUBLISH in one script, as production publishes; the calls due are pipelined
per 1 ms tick). Redis's CPU is
``used_cpu_user + used_cpu_sys`` of ``INFO cpu`` over the publishing interval; N = 0 (no bridge) is the
cost of the publish itself (script, XADD, trim), and the slope over N is what each subscribed bridge
adds: the message copied into one more output buffer and one more ``write``. The bridges' own CPU per
message (one client each: the per-message cost of a bridge, before any per-client cost) comes from
``/proc``. Sizes of N alternate between rounds (1, 2, 4, then 4, 2, 1) so drift on a shared machine
does not line up with N.

**Subscriptions.** ``--subscriptions M``: one bridge, M clients each on its own channel, then M clients
on one channel: Redis ``used_memory``, the bridge's RSS and the time until every stream is open, per
channel against per client.

Prints a table and one JSON line. Nothing but loopback; needs ``redis-server`` and redis-py.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import procstat
import services

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))

TICK = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/redis_fanin.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--bridges", default="0,1,2,4", help="comma-separated bridge counts N (default 0,1,2,4)")
    p.add_argument("--rate", type=float, default=2000.0, help="messages per second (default 2000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing per run (10)")
    p.add_argument("--size", type=int, default=100, help="payload bytes (100)")
    p.add_argument("--rounds", type=int, default=1, help="rounds over --bridges, alternating order (1)")
    p.add_argument("--subscriptions", type=int, default=0, help="also measure M channels on one bridge")
    p.add_argument("--out", type=Path, default=None, help="run directory (default bench/out/fanin-*)")
    return p.parse_args(argv)


# --- SSE clients: raw sockets, one reader thread ------------------------------------------------------


class Readers(threading.Thread):
    """Reads every stream opened through ``open``; counts ``id:`` lines (one per event)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.events = 0
        self.headers = 0
        self.stop = threading.Event()
        self.tails: dict[int, bytes] = {}

    def open(self, port: int, path: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        sock.setblocking(False)
        with self.lock:
            self.tails[sock.fileno()] = b""
            self.sel.register(sock, selectors.EVENT_READ)
        return sock

    def run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                ready = self.sel.select(0.05) if self.sel.get_map() else []
            for key, _ in ready:
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                with self.lock:
                    if not data:
                        self.sel.unregister(sock)
                        continue
                    tail = self.tails[sock.fileno()]
                    if not tail.startswith(b"H") and b" 200 " in (tail + data)[:20]:
                        self.headers += 1
                    chunk = tail[-2:] + data
                    self.events += chunk.count(b"\nid:")
                    self.tails[sock.fileno()] = b"-" + data[-3:]

    def wait_headers(self, count: int, timeout: float = 60.0) -> float:
        started = time.monotonic()
        while True:
            with self.lock:
                if self.headers >= count:
                    return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{self.headers} of {count} streams open after {timeout:.0f} s")
            time.sleep(0.01)


# --- one run ------------------------------------------------------------------------------------------


def redis_cpu_s(host: str, port: int) -> float:
    info = services.resp_command(host, port, b"INFO", b"cpu").decode()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def command_calls(host: str, port: int) -> dict[str, int]:
    """Calls so far per command (``INFO commandstats``): shows what else than the publish Redis ran."""
    calls = {}
    for name, value in redis_info(host, port, b"commandstats").items():
        calls[name.removeprefix("cmdstat_")] = int(value.split(",")[0].split("=")[1])
    return calls


def redis_info(host: str, port: int, section: bytes) -> dict[str, str]:
    info = services.resp_command(host, port, b"INFO", section).decode()
    return dict(line.split(":", 1) for line in info.splitlines() if ":" in line)


def start_bridges(reaper: services.Reaper, run_dir: Path, redis: str, count: int) -> list[tuple[int, int]]:
    """``count`` bridges on ``redis``: (port, pid) each."""
    started = []
    for i in range(count):
        port = services.free_port()
        config = run_dir / f"bridge-{i}.ini"
        services.write_bridge_config(config, port, redis, 1, ["access_log = false"])
        proc = services.start_bridge(reaper, REPO, config, port, run_dir / f"bridge-{i}.log")
        started.append((port, proc.pid))
    return started


def fanin_run(args: argparse.Namespace, run_dir: Path, bridges: int) -> dict[str, Any]:
    import redis as redis_py

    from ssebridge.publish import Publisher
    from ssebridge.publish.publisher import PublishCall, script_source

    reaper = services.Reaper()
    try:
        host, port, redis_pid = services.start_redis(reaper, run_dir)
        fleet = start_bridges(reaper, run_dir, f"{host}:{port}", bridges)
        readers = Readers()
        readers.start()
        socks = [readers.open(bridge_port, "/events/news") for bridge_port, _ in fleet]
        readers.wait_headers(bridges)
        publisher = Publisher(redis_py.Redis(host=host, port=port), history=1000)
        payload = b"x" * args.size
        publisher.publish("news", payload)  # loads the script: not part of the measured interval
        time.sleep(0.5)
        total = int(args.rate * args.duration)
        # The script Publisher runs, its calls pipelined per 1 ms tick (as run.py's publisher does), so
        # that a busy machine does not hold the rate down with one round trip per message.
        client = redis_py.Redis(host=host, port=port)
        sha = client.script_load(script_source())
        keys, call = PublishCall(history=1000).arguments("news", payload, None, None)
        cpu0 = redis_cpu_s(host, port)
        commands0 = command_calls(host, port)
        ticks0 = {pid: procstat.cpu_ticks(pid) for _, pid in fleet}
        events0 = readers.events
        t0 = time.monotonic()
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - t0) * args.rate) + 1)
            if due > sent:
                pipe = client.pipeline(transaction=False)
                for _ in range(due - sent):
                    pipe.evalsha(sha, 1, *keys, *call)
                pipe.execute()
                sent = due
            time.sleep(0.001)
        elapsed = time.monotonic() - t0
        cpu = redis_cpu_s(host, port) - cpu0
        commands = command_calls(host, port)
        commands = {k: v - commands0.get(k, 0) for k, v in commands.items() if v != commands0.get(k, 0)}
        bridge_s = [(procstat.cpu_ticks(pid) - ticks0[pid]) / TICK for _, pid in fleet]
        deadline = time.monotonic() + 10
        while readers.events - events0 < total * bridges and time.monotonic() < deadline:
            time.sleep(0.05)
        clients = redis_info(host, port, b"clients")
        readers.stop.set()
        for sock in socks:
            sock.close()
        return {
            "bridges": bridges,
            "published": total,
            "rate": round(total / elapsed, 1),
            "delivered": readers.events - events0,
            "expected": total * bridges,
            "redis_cpu_s": round(cpu, 3),
            "redis_us_per_msg": round(cpu / total * 1e6, 2),
            "redis_cpu_pct": round(cpu / elapsed * 100, 1),
            "bridge_us_per_msg": [round(s / total * 1e6, 1) for s in bridge_s],
            "redis_commands": commands,
            "redis_pid": redis_pid,
            "connected_clients": int(clients.get("connected_clients", "0")),
        }
    finally:
        reaper.stop_all()


def subscriptions_run(run_dir: Path, count: int, spread: bool) -> dict[str, Any]:
    reaper = services.Reaper()
    try:
        host, port, _ = services.start_redis(reaper, run_dir)
        ((bridge_port, pid),) = start_bridges(reaper, run_dir, f"{host}:{port}", 1)
        time.sleep(1.0)
        memory0 = int(redis_info(host, port, b"memory")["used_memory"])
        rss0 = procstat.rss_kib([pid])
        readers = Readers()
        readers.start()
        t0 = time.monotonic()
        socks = [readers.open(bridge_port, f"/events/c{i if spread else 0}") for i in range(count)]
        readers.wait_headers(count, timeout=120)
        opened = time.monotonic() - t0
        time.sleep(1.0)
        memory = int(redis_info(host, port, b"memory")["used_memory"]) - memory0
        rss = procstat.rss_kib([pid]) - rss0
        channels = int(services.resp_command(host, port, b"PUBSUB", b"NUMSUB", b"c0")[1])
        pubsub_channels = len(services.resp_command(host, port, b"PUBSUB", b"CHANNELS"))
        readers.stop.set()
        for sock in socks:
            sock.close()
        return {
            "streams": count,
            "channels": count if spread else 1,
            "redis_pubsub_channels": pubsub_channels,
            "numsub_c0": channels,
            "open_s": round(opened, 2),
            "redis_bytes_per_stream": round(memory / count),
            "bridge_kib_per_stream": round(rss / count, 2),
        }
    finally:
        reaper.stop_all()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.bridges.split(",")]
    out_root = BENCH_DIR / "out"
    out_root.mkdir(exist_ok=True)
    run_dir = args.out or Path(tempfile.mkdtemp(prefix=time.strftime("fanin-%Y%m%d-%H%M%S-"), dir=out_root))
    run_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for n in counts if r % 2 == 0 else reversed(counts):
            print(f"fanin: round {r + 1}, {n} bridges...", file=sys.stderr)
            result = fanin_run(args, run_dir, n)
            result["round"] = r + 1
            runs.append(result)
            print(f"  {result}", file=sys.stderr)
    base = [x["redis_us_per_msg"] for x in runs if x["bridges"] == 0]
    base_us = sum(base) / len(base) if base else None
    print("| round | bridges | msgs/s | delivered / expected | Redis CPU % | Redis µs / msg "
          "| Redis µs / msg / bridge (over N=0) | bridge µs / msg |")
    print("|---|---|---|---|---|---|---|---|")
    for x in runs:
        per_bridge = (
            f"{(x['redis_us_per_msg'] - base_us) / x['bridges']:.2f}"
            if base_us is not None and x["bridges"]
            else "-"
        )
        x["redis_us_per_msg_per_bridge"] = per_bridge
        bridge_us = ", ".join(f"{v:.1f}" for v in x["bridge_us_per_msg"]) or "-"
        print(f"| {x['round']} | {x['bridges']} | {x['rate']:,.0f} | {x['delivered']:,} / {x['expected']:,} "
              f"| {x['redis_cpu_pct']} | {x['redis_us_per_msg']} | {per_bridge} | {bridge_us} |")
    subs: list[dict[str, Any]] = []
    if args.subscriptions:
        for spread in (True, False):
            print(f"subscriptions: {args.subscriptions} streams, spread={spread}...", file=sys.stderr)
            subs.append(subscriptions_run(run_dir, args.subscriptions, spread))
        print()
        print("| streams | channels | Redis pub/sub channels | open s | Redis bytes / stream "
              "| bridge KiB / stream |")
        print("|---|---|---|---|---|---|")
        for s in subs:
            print(f"| {s['streams']:,} | {s['channels']:,} | {s['redis_pubsub_channels']:,} | {s['open_s']} "
                  f"| {s['redis_bytes_per_stream']} | {s['bridge_kib_per_stream']} |")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "fanin": runs, "subscriptions": subs}
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
