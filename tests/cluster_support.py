"""A real Redis Cluster on loopback for the tests: its own redis-server processes, made with
``redis-cli --cluster create``, and the operations the tests put it through (slot migration, failover).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Any

from ssebridge.redis.slots import key_slot
from ssebridge.testing import RedisProcess, redis_command
from tests.helpers import wait_for

#: Milliseconds of silence after which the cluster counts a node as failed (and fails it over).
NODE_TIMEOUT = 1000


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (and below 65536)."""
    for _ in range(1000):
        port = random.randint(20000, 30000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def node_args() -> tuple[str, ...]:
    return (
        "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(NODE_TIMEOUT),
    )  # fmt: skip


@dataclass
class Cluster:
    """``masters`` masters, each with ``replicas`` replicas; the first ``masters`` nodes are masters."""

    masters: int = 3
    replicas: int = 0
    nodes: list[RedisProcess] = field(default_factory=list)

    def start(self, timeout: float = 20.0, ports: list[int] | None = None) -> Cluster:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        count = self.masters * (1 + self.replicas)
        ports = ports or [cluster_port() for _ in range(count)]
        self.nodes = [RedisProcess(port=port, extra_args=node_args()) for port in ports]
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        self.wait_ok(timeout)
        return self

    @property
    def address(self) -> str:
        """The ``cluster://`` address with every master as a seed."""
        return "cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.masters])

    def live(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every live node says ``cluster_state:ok`` and they all agree on the slot map."""

        def settled() -> bool:
            states = {n.command("CLUSTER", "INFO").split(b"\r\n")[0] for n in self.live()}
            maps = {repr(self.slot_map(n)) for n in self.live()}
            return states == {b"cluster_state:ok"} and len(maps) == 1

        wait_for(settled, "the cluster did not settle", timeout)

    def slot_map(self, node: RedisProcess | None = None) -> list[tuple[int, int, int]]:
        """``(first slot, last slot, master's port)`` per range, as ``node`` sees it."""
        reply = (node or self.live()[0]).command("CLUSTER", "SLOTS")
        return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in reply)

    def node_id(self, node: RedisProcess) -> str:
        reply: bytes = node.command("CLUSTER", "MYID")
        return reply.decode()

    def by_port(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def owner(self, slot: int) -> RedisProcess:
        """The master serving ``slot``."""
        for first, last, port in self.slot_map():
            if first <= slot <= last:
                return self.by_port(port)
        raise LookupError(f"no master serves slot {slot}")

    def current_masters(self) -> list[RedisProcess]:
        return [self.by_port(port) for port in sorted({p for _, _, p in self.slot_map()})]

    def channel_on(self, master: RedisProcess, prefix: str, avoid: set[int] = frozenset()) -> str:  # type: ignore[assignment]
        """A channel name starting with ``prefix`` whose slot ``master`` serves (and not in ``avoid``)."""
        for i in range(100_000):
            name = f"{prefix}{i}"
            slot = key_slot(name.encode())
            if slot not in avoid and self.owner_port(slot) == master.port:
                return name
        raise LookupError("no such channel name")

    def owner_port(self, slot: int) -> int:
        if not hasattr(self, "_cached_map"):
            self._cached_map = self.slot_map()
        for first, last, port in self._cached_map:
            if first <= slot <= last:
                return port
        return 0

    def forget_map(self) -> None:
        if hasattr(self, "_cached_map"):
            del self._cached_map

    def move_slot(self, slot: int, target: RedisProcess) -> None:
        """Migrate ``slot`` and its keys to ``target`` the way ``redis-cli --cluster reshard`` does."""
        source = self.owner(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            keys: list[bytes] = source.command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for node in self.current_masters():
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.forget_map()

    def replica_of(self, master: RedisProcess) -> RedisProcess:
        replicas = self.replicas_of(master)
        if not replicas:
            raise LookupError(f"no replica of {master.port}")
        return replicas[0]

    def replicas_of(self, master: RedisProcess) -> list[RedisProcess]:
        """The live replicas of ``master``, as each of them says."""
        master_id = self.node_id(master)
        found = []
        for node in self.live():
            info: bytes = node.command("CLUSTER", "NODES")
            for line in info.decode().splitlines():
                words = line.split()
                if "myself" in words[2] and words[3] == master_id:
                    found.append(node)
        return found

    def command(self, node: RedisProcess, *args: Any) -> Any:
        return redis_command(node.address, *args)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.kill()  # a cluster node's orderly shutdown takes seconds; nothing here needs it
            node.cleanup()
