"""A Sentinel deployment on loopback for tests: a master, a replica and three sentinels, real processes.

Sentinels notice a dead master after ``down_after`` ms and fail over to the replica; the defaults are
short so that a failover fits in a test (production's default is 30 s).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ssebridge.testing import RedisProcess, ServerProcess, free_port, redis_pipeline
from tests.helpers import wait_for

MASTER_NAME = "mymaster"


@dataclass
class SentinelProcess(ServerProcess):
    """One ``redis-server --sentinel`` on a free port, watching one master."""

    master_port: int
    port: int = field(default_factory=free_port)
    #: Sentinel's run id (40 hex digits), so that the others can be told of it in advance.
    myid: str = field(default_factory=lambda: secrets.token_hex(20))
    #: What the sentinel would otherwise learn in a few seconds of hello messages and INFO polls.
    known_replicas: tuple[int, ...] = ()
    known_sentinels: tuple[tuple[int, str], ...] = ()
    name: str = MASTER_NAME
    down_after: int = 1000
    failover_timeout: int = 3000
    #: The sentinel's own ``requirepass`` (also what it gives the other sentinels), and the master's.
    password: str | None = None
    master_password: str | None = None
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ssebridge-sentinel-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self, timeout: float = 10.0) -> SentinelProcess:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        config = self.directory / "sentinel.conf"
        # Sentinel rewrites its config file (what it learns), so each one has its own.
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.directory}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {self.name} {self.down_after}\n"
            f"sentinel failover-timeout {self.name} {self.failover_timeout}\n"
            f"sentinel parallel-syncs {self.name} 1\n"
            f"sentinel myid {self.myid}\n"
            + (
                f"requirepass {self.password}\nsentinel sentinel-pass {self.password}\n"
                if self.password
                else ""
            )
            + (f"sentinel auth-pass {self.name} {self.master_password}\n" if self.master_password else "")
            + "".join(f"sentinel known-replica {self.name} 127.0.0.1 {p}\n" for p in self.known_replicas)
            + "".join(
                f"sentinel known-sentinel {self.name} 127.0.0.1 {p} {i}\n" for p, i in self.known_sentinels
            )
        )
        self.process = subprocess.Popen(
            [binary, str(config), "--sentinel", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_started(
            lambda: authed(self.address, self.password, ("PING",), timeout=1.0) == b"PONG",
            f"sentinel on port {self.port}",
            timeout,
        )
        return self

    def command(self, *args: bytes | str | int) -> Any:
        return authed(self.address, self.password, args)

    def master_state(self) -> dict[str, str]:
        reply = self.command("SENTINEL", "MASTER", self.name)
        return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}


@dataclass
class SentinelDeployment:
    """A master, one replica and three sentinels (quorum 2)."""

    down_after: int = 1000
    failover_timeout: int = 3000
    sentinel_ports: tuple[int, ...] = ()
    #: The master's and the replica's ``requirepass``, and the sentinels' own.
    password: str | None = None
    sentinel_password: str | None = None
    # No 5 s wait before a diskless full sync (the default): the replica is in sync at once.
    master: RedisProcess = field(
        default_factory=lambda: RedisProcess(extra_args=("--repl-diskless-sync-delay", "0"))
    )
    replica: RedisProcess | None = None
    sentinels: list[SentinelProcess] = field(default_factory=list)

    def address(self, name: str = MASTER_NAME) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        credentials = f":{quote(self.password, safe='')}@" if self.password else ""
        query = (
            f"?sentinel_password={quote(self.sentinel_password, safe='')}" if self.sentinel_password else ""
        )
        return f"sentinel://{credentials}{hosts}/{name}{query}"

    def data_command(self, process: RedisProcess, *args: bytes | str | int) -> Any:
        """A command to the master or the replica, with its password if it has one."""
        return authed(process.address, self.password, args)

    def start_data(self) -> SentinelDeployment:
        """The master and the replica, once the replica is in sync."""
        self.master.start()
        auth = ("--masterauth", self.password) if self.password else ()
        self.replica = RedisProcess(
            extra_args=(
                *("--replicaof", "127.0.0.1", str(self.master.port), "--repl-diskless-sync-delay", "0"),
                *auth,
            )
        ).start()
        if self.password:
            # Set once started: RedisProcess.start() waits for an unauthenticated PING. The replica keeps
            # its masterauth, and needs it when the old master comes back as its replica.
            for process in (self.master, self.replica):
                redis_pipeline(process.address, [("CONFIG", "SET", "requirepass", self.password)])
                authed(process.address, self.password, ("CONFIG", "SET", "masterauth", self.password))
        wait_for(lambda: b"master_link_status:up" in self.replica_info(), "replica in sync")
        return self

    def start_sentinels(self, timeout: float = 15.0) -> SentinelDeployment:
        """The sentinels, once each knows the replica and the two others (a failover needs both)."""
        assert self.replica is not None
        ports = self.sentinel_ports or tuple(free_port() for _ in range(3))
        ids = [secrets.token_hex(20) for _ in ports]
        self.sentinels = [
            SentinelProcess(
                self.master.port,
                port,
                myid=myid,
                known_replicas=(self.replica.port,),
                known_sentinels=tuple((p, i) for p, i in zip(ports, ids, strict=True) if p != port),
                down_after=self.down_after,
                failover_timeout=self.failover_timeout,
                password=self.sentinel_password,
                master_password=self.password,
            ).start()
            for port, myid in zip(ports, ids, strict=True)
        ]

        def settled() -> bool:
            states = [s.master_state() for s in self.sentinels]
            return all(st["num-slaves"] == "1" and st["num-other-sentinels"] == "2" for st in states)

        wait_for(settled, "sentinels settled", timeout)
        return self

    def start(self) -> SentinelDeployment:
        return self.start_data().start_sentinels()

    def replica_info(self) -> bytes:
        assert self.replica is not None
        info: bytes = self.data_command(self.replica, "INFO", "replication")
        return info

    def master_address(self) -> tuple[str, int]:
        reply = self.sentinels[0].command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
        return reply[0].decode(), int(reply[1])

    def process_at(self, port: int) -> RedisProcess:
        for process in (self.master, self.replica):
            if process is not None and process.port == port:
                return process
        raise LookupError(port)

    def cleanup(self) -> None:
        for sentinel in self.sentinels:
            sentinel.cleanup()
        if self.replica is not None:
            self.replica.cleanup()
        self.master.cleanup()


def authed(
    address: tuple[str, int], password: str | None, args: tuple[bytes | str | int, ...], timeout: float = 5.0
) -> Any:
    """One command on a fresh connection, after AUTH when there is a password."""
    if password is None:
        return redis_pipeline(address, [args], timeout=timeout)[0]
    auth: tuple[bytes | str | int, ...] = ("AUTH", password)
    return redis_pipeline(address, [auth, args], timeout=timeout)[1]
