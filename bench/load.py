"""Sending load with wrk, and what every process spent on it while it ran."""

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procstat

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
MARKER = "BENCH_RESULT "


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("bench: wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    return found


@dataclass(frozen=True)
class Load:
    """One wrk invocation: a scenario script against one app."""

    scenario: str  # the script's name in scenarios/ (list, create, get, toggle, mixed)
    url: str
    connections: int
    seconds: int
    threads: int
    args: dict[str, str]


@dataclass
class Watched:
    """The processes whose CPU is reported: the app's Gunicorn master and workers, and
    PostgreSQL (every process, with the backends serving our database picked out)."""

    master: int
    workers: list[int]
    database: str
    port: int
    # Refuse a run whose connections landed unevenly on the workers (see balanced()).
    balance: bool = True


def run(load: Load, watched: Watched | None = None) -> dict[str, Any] | None:
    """Run wrk to completion; return its summary and, if `watched`, every process's CPU.

    None when wrk's connections were spread unevenly over the workers: wrk was stopped at
    once, and the caller should try again with new connections.
    """
    threads = min(load.threads, load.connections)
    script = SCENARIO_DIR / f"{load.scenario}.lua"
    command = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{load.connections}",
        f"-d{load.seconds}s",
        "--timeout", "5s",  # a slow answer is counted in the latency, not dropped as an error
        "-s", str(script),
        load.url,
        "--",
        f"threads={threads}",
        *(f"{key}={value}" for key, value in load.args.items()),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as output:
        # A file, not a pipe: wrk is only read after it has exited, so it must never block.
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)  # noqa: S603
        try:
            pids = _pids(watched, process.pid) if watched else []
            before = procstat.snapshot(pids, time.monotonic())
            split = _split(watched, load.connections) if watched else []
            if watched and watched.balance and not balanced(split, load.connections):
                process.kill()
                process.wait()
                return None
            # Wait for wrk to exit without reaping it: its /proc entry (a zombie now) still
            # holds the CPU time of all its threads, which is read before the final wait.
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
            after_pids = _pids(watched, process.pid) if watched else []
            after = procstat.snapshot(after_pids, time.monotonic())
        except BaseException:
            process.kill()  # interrupted: no load may outlive the harness
            process.wait()
            raise
        # Reap it ourselves for the kernel's own account of wrk's CPU, a check on the above.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{text}")
    summary = _summary(text)
    result = _metrics(summary)
    if watched is not None:
        result["cpu"] = _cpu(before, after, watched, process.pid)
        elapsed = after.at - before.at
        result["cpu"]["wrk_rusage"] = round((usage.ru_utime + usage.ru_stime) / elapsed, 3)
        result["window_s"] = round(after.at - before.at, 3)
        result["connections_per_worker"] = split
    return result


def _split(watched: Watched, connections: int, timeout: float = 2.0) -> list[int]:
    """wrk's connections per worker, once the workers have accepted them all (milliseconds)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = procstat.connections_by_pid(watched.port, watched.workers)
        if sum(counts.values()) >= connections or time.monotonic() > deadline:
            return [counts[pid] for pid in watched.workers]
        time.sleep(0.01)


def balanced(split: list[int], connections: int) -> bool:
    """Every worker holds at least 3/4 of its fair share of the connections.

    wrk opens all its connections in one burst and a Uvicorn worker accepts all that are
    waiting when it wakes, so one worker often takes them all and the others idle for the
    whole run (kept-alive connections never move). That measures luck, not the app.
    """
    if len(split) < 2:
        return True
    least = max(1, int(0.75 * connections / len(split)))
    return min(split) >= least


def _pids(watched: Watched, wrk_pid: int) -> list[int]:
    return [watched.master, *watched.workers, wrk_pid, *procstat.postgres_pids()]


def _summary(text: str) -> dict[str, Any]:
    for line in text.splitlines():
        if line.startswith(MARKER):
            loaded: dict[str, Any] = json.loads(line[len(MARKER) :])
            return loaded
    raise RuntimeError(f"wrk printed no {MARKER.strip()} line:\n{text}")


def _metrics(summary: dict[str, Any]) -> dict[str, Any]:
    seconds = summary["duration_us"] / 1e6
    latency = summary["latency_us"]
    errors = summary["errors"]
    result = {
        "requests": summary["requests"],
        "rps": round(summary["requests"] / seconds, 1) if seconds else 0.0,
        "latency_ms": {key: round(value / 1000, 3) for key, value in latency.items()},
        "errors": errors,
        "error_count": sum(errors.values()),
    }
    if "sent" in summary:
        result["sent"] = summary["sent"]
    return result


def _cpu(
    before: procstat.CpuSnapshot, after: procstat.CpuSnapshot, watched: Watched, wrk_pid: int
) -> dict[str, Any]:
    """Cores used per process group over the window (1.0 = one core busy the whole time)."""

    def used(pid: int) -> float:
        return procstat.cores_used(before, after, pid)

    workers = [round(used(pid), 3) for pid in watched.workers]
    known = {watched.master, wrk_pid, *watched.workers}
    postgres = [pid for pid in after.ticks if pid not in known]
    # A backend's title is "postgres: USER DATABASE HOST(PORT) STATE".
    ours = [pid for pid in postgres if f" {watched.database} " in procstat.cmdline(pid)]
    pg_total = sum(used(pid) for pid in postgres)
    pg_ours = sum(used(pid) for pid in ours)
    busy = procstat.machine_cores_busy(before, after)
    accounted = sum(workers) + used(watched.master) + pg_total + used(wrk_pid)
    return {
        "workers": workers,
        "workers_total": round(sum(workers), 3),
        "master": round(used(watched.master), 3),
        "postgres_total": round(pg_total, 3),
        "postgres_bench_backends": round(pg_ours, 3),
        "wrk": round(used(wrk_pid), 3),
        "machine_busy": round(busy, 3),
        "other": round(max(busy - accounted, 0.0), 3),
    }
