"""One benchmark session: the running apps, the database, and every measurement taken so far."""

import json
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import load
import procstat
from database import BENCH_USER, BenchDatabase
from servers import App, Keys, start_app

# Scenarios that change the data: the database is put back after each of their runs.
WRITES = frozenset({"create", "toggle", "mixed", "create_key"})
# The apps a pair compares, in the order they run (the FastAPI floor only with --fastapi-floor).
APPS = ("floor", "fastapi-floor", "product")
# Starts of the measured run until wrk's connections are spread over the workers (each
# refused start costs a few milliseconds); the last one is measured whatever the spread.
MAX_ATTEMPTS = 50


@dataclass
class Session:
    db: BenchDatabase
    keys: Keys
    venv_bin: Path
    log_dir: Path
    duration: int
    warmup: int
    wrk_threads: int
    balance: bool = True
    product_url: str = ""  # the product's database URL: run.py picks its role
    round: int = 1  # of --rounds: the report takes the median over rounds
    apps: dict[str, App] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # failures: the run exits with status 1
    notes: list[str] = field(default_factory=list)  # what a reader should know

    # -- apps ------------------------------------------------------------------------------

    def app(self, kind: str, workers: int, log_level: str = "info", alone: bool = False) -> App:
        """A running `kind` app with this many workers, restarting it if it differs.

        `alone` stops every other app first: at 4 workers each, two apps' pools could take
        most of PostgreSQL's 100 connections.
        """
        label = kind if log_level == "info" else f"{kind}-{log_level}"
        current = self.apps.get(label)
        if current is not None and current.workers != workers:
            self.stop(label)
            current = None
        if alone:
            for other in [name for name in self.apps if name != label]:
                self.stop(other)
        if current is None:
            print(f"  starting {label} with {workers} worker(s)", flush=True)
            current = start_app(
                kind,
                venv_bin=self.venv_bin,
                database_url=self.product_url if kind == "product" else self.db.url,
                keys=self.keys,
                workers=workers,
                log_dir=self.log_dir,
                log_level=log_level,
                label=label,
            )
            self.apps[label] = current
        return current

    def stop(self, label: str) -> None:
        app = self.apps.pop(label, None)
        if app is not None:
            app.stop()

    def stop_all(self) -> None:
        for label in list(self.apps):
            self.stop(label)

    # -- measuring -------------------------------------------------------------------------

    def pair(self, section: str, scenario: str, connections: int, **options: Any) -> None:
        """The floor, then the product, on the same data: the pair is what gets compared."""
        for label in self._started():
            self.measure(section, scenario, self.apps[label], connections, **options)

    def measure(
        self,
        section: str,
        scenario: str,
        app: App,
        connections: int,
        *,
        auth: str = "HS256",
        user: str = BENCH_USER,
        point: Any = None,
    ) -> dict[str, Any]:
        """A warm-up run (discarded), then the measured run with every process's CPU."""
        assert self.db.seeded is not None
        args = {"user": user, "token": self.keys.token(user, auth)}
        args |= {"first": str(self.db.seeded.first), "last": str(self.db.seeded.last)}
        watched = load.Watched(
            app.process.pid, app.worker_pids(), self.db.name, app.port, self.balance
        )
        attempts = 0
        try:
            if self.warmup > 0:
                load.run(self._load(scenario, app, connections, self.warmup, args))
            measured = None
            while measured is None:
                self.db.wait_idle()
                attempts += 1
                if attempts == MAX_ATTEMPTS:
                    watched.balance = False
                    self.notes.append(
                        f"{section}/{scenario} c={connections} {app.name}: connections stayed "
                        f"uneven over the workers after {attempts - 1} tries; measured as is"
                    )
                measured = load.run(
                    self._load(scenario, app, connections, self.duration, args), watched
                )
        finally:
            self.db.wait_idle()
            if scenario in WRITES:
                self.db.reset()
        record: dict[str, Any] = {
            "section": section,
            "scenario": scenario,
            "app": app.name,
            "workers": app.workers,
            "connections": connections,
            "auth": auth,
            "user": user,
            "point": point,
            "round": self.round,
            **measured,
            "attempts": attempts,
            "rss_mib": [_mib(procstat.rss_kib(pid)) for pid in watched.workers],
        }
        self.runs.append(record)
        print("  " + _line(record), flush=True)
        if record["error_count"]:
            self.warnings.append(
                f"{section}/{scenario} c={connections} {app.name}: {record['error_count']} "
                f"errors {record['errors']}"
            )
            print(f"  !! errors; last lines of {app.log}:\n{app.tail(10)}", flush=True)
        return record

    def _load(
        self, scenario: str, app: App, connections: int, seconds: int, args: dict[str, str]
    ) -> load.Load:
        if scenario == "mixed":
            # A fresh pool of deletable tasks for every wrk process: its threads split it.
            # Deletes use the thread's own created ids first, so the pool only covers the
            # first round of requests, before any create has answered.
            first, last = self.db.seed_delete_pool(self.wrk_threads * (connections + 100))
            args = {**args, "pool_first": str(first), "pool_last": str(last)}
        return load.Load(scenario, app.url, connections, seconds, self.wrk_threads, args)

    # -- checks ----------------------------------------------------------------------------

    def compare_bodies(self) -> dict[str, bool]:
        """The floor must answer the same bytes as the product, or the comparison is unfair."""
        assert self.db.seeded is not None
        token = self.keys.token(BENCH_USER, "HS256")
        paths = {
            "list": f"/api/{BENCH_USER}/tasks?limit=50",
            "get": f"/api/{BENCH_USER}/tasks/{self.db.seeded.first}",
        }
        labels = self._started()
        same = {}
        for name, path in paths.items():
            bodies = {label: _get(self.apps[label].url + path, token) for label in labels}
            floor = bodies["floor"]
            differ = [label for label, body in bodies.items() if body != floor]
            same[name] = not differ
            for label in differ:
                self.warnings.append(
                    f"{name}: floor and {label} bodies differ: "
                    f"{floor[:200]!r} vs {bodies[label][:200]!r}"
                )
        return same

    def _started(self) -> list[str]:
        return [label for label in APPS if label in self.apps]


def _get(url: str, token: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        body: bytes = response.read()
    json.loads(body)  # must be JSON at all
    return body


def _mib(kib: int | None) -> float | None:
    return round(kib / 1024, 1) if kib is not None else None


def _line(r: dict[str, Any]) -> str:
    cpu = r.get("cpu", {})
    split = r.get("connections_per_worker") or [None] * len(cpu.get("workers", []))
    workers = "+".join(
        f"{share:.0%}" + (f"({n})" if n is not None else "")
        for share, n in zip(cpu.get("workers", []), split, strict=True)
    )
    tries = f" (try {r['attempts']})" if r.get("attempts", 1) > 1 else ""
    point = f" [{r['point']}]" if r["point"] is not None else ""
    return (
        f"{time.strftime('%H:%M:%S')} {r['section']}/{r['scenario']}{point} "
        f"c={r['connections']} {r['auth']} {r['app']:<8} {r['rps']:>8.0f} req/s  "
        f"p50 {r['latency_ms']['p50']:.1f} p90 {r['latency_ms']['p90']:.1f} "
        f"p99 {r['latency_ms']['p99']:.1f} ms  errors {r['error_count']}  "
        f"cpu workers {workers} pg {cpu.get('postgres_total', 0):.0%} "
        f"wrk {cpu.get('wrk', 0):.0%} other {cpu.get('other', 0):.0%}{tries}"
    )
