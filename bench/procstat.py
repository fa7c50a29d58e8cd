"""What the kernel says about our processes: CPU ticks, resident memory, who is whose child.

Everything is read from /proc so that the numbers are the ones `top` would show, without
adding a sampling thread to the processes being measured.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    ticks: int  # utime + stime, summed over the process's threads


def read_proc(pid: int) -> ProcInfo | None:
    """The process's stat line, or None when it is gone (processes come and go under load)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may itself hold spaces or parentheses: split at the last ')'.
    head, _, tail = raw.rpartition(")")
    comm = head.partition("(")[2]
    fields = tail.split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14 and stime 15 (1-based, man proc).
    return ProcInfo(pid, int(fields[1]), comm, int(fields[11]) + int(fields[12]))


def all_pids() -> list[int]:
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def children(ppid: int) -> list[int]:
    """Direct children of `ppid` (Gunicorn's workers are its master's children)."""
    found = []
    for pid in all_pids():
        info = read_proc(pid)
        if info is not None and info.ppid == ppid:
            found.append(pid)
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def postgres_pids() -> list[int]:
    """Every PostgreSQL process: the postmaster, its helpers and one backend per connection."""
    return [
        pid
        for pid in all_pids()
        if (info := read_proc(pid)) is not None and info.comm == "postgres"
    ]


def rss_kib(pid: int) -> int | None:
    """VmRSS in KiB: the resident set, what the process really occupies in memory."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from the first line of /proc/stat."""
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user time
    return total - idle, total


@dataclass
class CpuSnapshot:
    """Ticks of every process we watch, at one instant."""

    at: float
    ticks: dict[int, int] = field(default_factory=dict)
    machine_busy: int = 0
    machine_total: int = 0


def snapshot(pids: list[int], at: float) -> CpuSnapshot:
    snap = CpuSnapshot(at)
    for pid in pids:
        info = read_proc(pid)
        if info is not None:
            snap.ticks[pid] = info.ticks
    snap.machine_busy, snap.machine_total = machine_ticks()
    return snap


def cores_used(before: CpuSnapshot, after: CpuSnapshot, pid: int) -> float:
    """CPU used by `pid` between the two snapshots, in cores (1.0 = one core fully busy).

    A process born during the window counts from zero; one that died is lost (rare here:
    the servers keep their connections, and wrk is read before it is reaped).
    """
    elapsed = after.at - before.at
    if elapsed <= 0 or pid not in after.ticks:
        return 0.0
    delta = after.ticks[pid] - before.ticks.get(pid, 0)
    return delta / CLOCK_TICKS / elapsed


def machine_cores_busy(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """All CPUs' busy time over the window, in cores: the share nobody we watch explains is
    someone else's (another test run on the same machine makes the numbers noisy)."""
    total = after.machine_total - before.machine_total
    if total <= 0:
        return 0.0
    ncpu = os.cpu_count() or 1
    return (after.machine_busy - before.machine_busy) / total * ncpu


def connections_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    """How many established TCP connections to local `port` each of `pids` has accepted.

    A connection still waiting in the listen backlog belongs to no process yet (inode 0).
    """
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] != "0":  # 01: ESTABLISHED
                inodes.add(fields[9])
    counts = {}
    for pid in pids:
        count = 0
        try:
            for fd in (PROC / str(pid) / "fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    count += 1
        except (FileNotFoundError, ProcessLookupError):
            pass
        counts[pid] = count
    return counts
