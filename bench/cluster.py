#!/usr/bin/env python3
"""One bridge on a 3-master Redis Cluster (sharded pub/sub) against the same bridge on one Redis, side
by side in one run (issue 12, item 4): deliveries/s and p99 publish-to-receive latency.

Same clients, channels and rate for both: ``--channels`` channels (spread over the 3 masters on the
cluster), ``--clients`` SSE clients per channel (``sseload sub``, built from ``/work/shared/bench/
sseload.c`` at run time), ``--rate`` messages/s per channel for ``--messages`` messages, published by
this script (``PUBLISH`` to the one Redis, ``SPUBLISH`` to each channel's master on the cluster) with
``sseload``'s payload (``SEQ MONOTONIC_NS``), so ``sseload`` measures latency and loss.

    python bench/cluster.py --channels 6 --clients 100 --rate 100 --messages 1000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ssebridge.redis.resp import encode_command  # noqa: E402
from ssebridge.redis.slots import key_slot  # noqa: E402
from ssebridge.testing import RedisProcess, free_port  # noqa: E402
from tests.cluster_support import Cluster  # noqa: E402

SSELOAD = Path("/work/shared/bench/sseload.c")


def build(out: Path) -> Path:
    binary = out / "sseload"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(SSELOAD)], check=True)
    return binary


def start_bridge(address: str, port: int, out: Path) -> subprocess.Popen[bytes]:
    config = out / f"bridge-{port}.toml"
    config.write_text(
        f'listen = "tcp:{port}:interface=127.0.0.1:backlog=4096"\nredis = "{address}"\n'
        '[[route]]\nmatch = "^/sub/(.+)$"\naction = "sse:$1"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "twisted", "ssebridge", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=open(out / f"bridge-{port}.log", "wb"),  # noqa: SIM115
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("bridge did not start")


def run(
    label: str,
    address: str,
    owners: dict[str, tuple[str, int]],
    command: bytes,
    args: argparse.Namespace,
    sseload: Path,
    out: Path,
) -> dict[str, float]:
    port = free_port()
    bridge = start_bridge(address, port, out)
    results = out / f"{label}.jsonl"
    subs = [
        subprocess.Popen(
            [
                str(sseload),
                "sub",
                "-p",
                str(port),
                "-u",
                f"/sub/{ch}",
                "-n",
                str(args.clients),
                "-m",
                str(args.messages),
                "-d",
                "120",
                "-i",
                "5",
                "-o",
                str(results),
                "-L",
                f"{label}:{ch}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for ch in owners
    ]
    time.sleep(3.0)  # clients connected and subscribed
    conns = {addr: socket.create_connection(addr) for addr in set(owners.values())}
    interval = 1.0 / args.rate
    start = time.monotonic()
    for seq in range(1, args.messages + 1):
        for ch, addr in owners.items():
            payload = f"{seq} {time.monotonic_ns()}"
            conns[addr].sendall(encode_command(command, ch, payload))
        delay = start + seq * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    for sub in subs:
        sub.wait(180)
    for conn in conns.values():
        conn.close()
    bridge.terminate()
    bridge.wait(20)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    return {"rows": rows}  # type: ignore[dict-item]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=6)
    ap.add_argument("--clients", type=int, default=100, help="per channel")
    ap.add_argument("--rate", type=float, default=100, help="messages/s per channel")
    ap.add_argument("--messages", type=int, default=1000, help="per channel")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    sseload = build(out)
    single = RedisProcess().start()
    cluster = Cluster(masters=3).start()
    try:
        masters = cluster.current_masters()
        names: list[str] = []
        for i in range(args.channels):
            names.append(cluster.channel_on(masters[i % 3], f"bench{i}-"))
        on_cluster = {n: ("127.0.0.1", cluster.owner_port(key_slot(n.encode()))) for n in names}
        on_single = {n: ("127.0.0.1", single.port) for n in names}
        report = {}
        for label, address, owners, command in (
            ("one-redis", f"127.0.0.1:{single.port}", on_single, b"PUBLISH"),
            ("cluster-3", cluster.address, on_cluster, b"SPUBLISH"),
        ):
            report[label] = run(label, address, owners, command, args, sseload, out)
        print(json.dumps({"args": vars(args), "report": report}, indent=1))
    finally:
        single.cleanup()
        cluster.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
