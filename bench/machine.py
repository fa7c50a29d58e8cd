"""The machine and software a result was measured on: numbers mean little without them."""

import hashlib
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

AUTOGROUP_SETTING = "/proc/sys/kernel/sched_autogroup_enabled"
PACKAGES = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "sqlmodel",
    "psycopg2-binary",
    "pyjwt",
    "orjson",
    "uvicorn",
    "uvloop",
    "httptools",
    "gunicorn",
    "uvicorn-worker",
)


def describe(repo: Path, wrk: str, postgres_version: str) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(_meminfo_kib("MemTotal") / 1024 / 1024, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "sched_autogroup": sched_autogroup(),
        "python": platform.python_version(),
        "postgresql": postgres_version,
        "wrk": _output([wrk, "--version"]).splitlines()[0] if wrk else None,
        "git_commit": _output(["git", "-C", str(repo), "rev-parse", "HEAD"]).strip(),
        # Others may be editing the tree while it is measured: say whether it was clean.
        "git_dirty": bool(_output(["git", "-C", str(repo), "status", "--porcelain"]).strip()),
        "packages": {name: _version(name) for name in PACKAGES},
        "product_source": source_digest(repo / "backend" / "todo_api"),
    }


def sched_autogroup() -> bool | None:
    """Whether the kernel schedules each session as one group (None: no such setting)."""
    try:
        return Path(AUTOGROUP_SETTING).read_text().strip() == "1"
    except OSError:
        return None


AUTOGROUP_WARNING = (
    "Kernel autogroup scheduling was on: PostgreSQL runs in its own session and is scheduled "
    "as one group against the servers and wrk, and on this kind of machine that stalls its "
    "queries for 0.2-1.8 s at random moments (in about one 6 s run in three), for the floor "
    "and the product alike. The p99 column then measures the scheduler. Before measuring: "
    "`sysctl -w kernel.sched_autogroup_enabled=0` (as root; see bench/README.md)."
)


def source_digest(package: Path) -> str:
    """A digest of the product's Python files, committed or not: if it changes during a run,
    servers started after the change ran other code than those before it."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except OSError:
        return ""
    # wrk prints its version (and usage) on stderr with a non-zero status.
    return done.stdout or done.stderr


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
