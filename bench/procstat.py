"""Reading a process tree's memory and CPU time from /proc, without psutil.

The benchmark measures the server as the kernel sees it: resident memory (``VmRSS``) and CPU time
(``utime + stime``) summed over a process and all its descendants, so a bridge that forks workers is
measured whole. Processes that exit between two reads are skipped, not errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: Clock ticks per second: the unit of utime/stime in /proc/PID/stat.
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    # "pid (comm) state ppid ..." : split after the last ')' so a comm with spaces cannot shift fields.
    return text[text.rfind(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process visible in /proc."""
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        tree.setdefault(int(fields[1]), []).append(int(name))
    return tree


def process_tree(root: int, tree: Mapping[int, list[int]] | None = None) -> list[int]:
    """``root`` and all its living descendants (workers, and their children too)."""
    if tree is None:
        tree = children_map()
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            found.append(pid)
            todo.extend(tree.get(pid, ()))
    return found


def _status_kib(pid: int, key: str) -> int:
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of /proc/PID/status, in KiB; 0 if the process is gone."""
    text = _read(f"/proc/{pid}/status")
    if text is None:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_kib(pids: Iterable[int]) -> int:
    """Resident memory summed over ``pids``, in KiB (shared pages of forked workers count twice)."""
    return sum(_status_kib(pid, "VmRSS") for pid in pids)


def peak_rss_kib(pids: Iterable[int]) -> int:
    """Peak resident memory (``VmHWM``) summed over ``pids``, in KiB."""
    return sum(_status_kib(pid, "VmHWM") for pid in pids)


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of one process so far, in clock ticks; 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0
    # After "pid (comm) ": state=0 ppid=1 ... utime=11 stime=12 (stat fields 14 and 15, 1-based).
    return int(fields[11]) + int(fields[12])


def machine_busy_ticks() -> int:
    """Busy time of all CPUs together so far (everything but idle and iowait), from /proc/stat."""
    text = _read("/proc/stat") or ""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            # user nice system idle iowait irq softirq steal guest guest_nice; guests are inside user.
            return sum(values[:8]) - values[3] - values[4]
    return 0


@dataclass
class CpuSnapshot:
    """CPU ticks of named groups of processes, and of the whole machine, at one monotonic instant."""

    at: float
    ticks: dict[str, dict[int, int]]
    machine: int = 0


def cpu_snapshot(groups: Mapping[str, Iterable[int]], at: float) -> CpuSnapshot:
    """Read the CPU ticks of every process of every group now (``at`` is the caller's monotonic time)."""
    ticks = {name: {pid: cpu_ticks(pid) for pid in pids} for name, pids in groups.items()}
    return CpuSnapshot(at, ticks, machine_busy_ticks())


def machine_percent(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """How busy the whole machine was between two snapshots, in percent of one core (2 cores: 0..200).

    Compared with the sum of the measured processes it shows what else competed for the cores: other
    programs, and kernel work (loopback TCP in softirq) that is charged to no process of ours.
    """
    wall = max(after.at - before.at, 1e-9)
    return 100.0 * (after.machine - before.machine) / CLK_TCK / wall


def cpu_percent(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, dict[int, float]]:
    """Per group, per process: CPU% between two snapshots (100 = one core busy the whole interval).

    A process present only in ``after`` (a worker forked meanwhile) is counted from zero.
    """
    wall = max(after.at - before.at, 1e-9)
    result: dict[str, dict[int, float]] = {}
    for name, ticks in after.ticks.items():
        old = before.ticks.get(name, {})
        # A process gone by ``after`` reads 0 ticks: leave it out rather than report a negative share.
        result[name] = {
            pid: 100.0 * (t - old.get(pid, 0)) / CLK_TCK / wall
            for pid, t in ticks.items()
            if t >= old.get(pid, 0)
        }
    return result
