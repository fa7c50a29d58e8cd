"""PostgreSQL's own CPU per request, without HTTP: the database's share of the product's cost.

`make bench` reports the database's CPU for a whole run, in which PostgreSQL shares two cores with
the servers and wrk. This measures it alone: one request after another on one connection each,
the product's statements sent by its own unit of work and services (the row-level security
settings, the statement timeout, an Idempotency-Key's kept answer), the floor's by the floor's own
database code in bench/floor.py. It reads each PostgreSQL backend's CPU time from /proc, so the
database must run on this machine (Linux). From the repository root:

    backend/.venv/bin/python bench/pgcost.py [--requests 4000] [--rounds 3]
"""

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import floor
import procstat
from database import BENCH_USER, BenchDatabase, server_url

from todo_api.auth import Claims
from todo_api.config import Settings
from todo_api.db import create_db_engine
from todo_api.http import JSONBytesResponse
from todo_api.idempotency import IdempotencyKeys
from todo_api.tasks import service
from todo_api.tasks.models import TaskCreate
from todo_api.unit_of_work import UnitOfWork


def backend_seconds(pid: int) -> float:
    """A PostgreSQL backend's user + system CPU so far."""
    info = procstat.read_proc(pid)
    if info is None:
        raise SystemExit(f"pgcost: PostgreSQL's backend {pid} is not on this machine")
    return info.ticks / procstat.CLOCK_TICKS


class Floor:
    """The floor's own database code (bench/floor.py), as the server's superuser like the floor."""

    def __init__(self, url: str, task_id: int) -> None:
        os.environ["DATABASE_URL"] = url  # floor.py's connection reads it
        self.task_id = task_id

    def pid(self) -> int:
        return int(floor._connection().get_backend_pid())

    def get(self) -> None:
        floor._rows(floor.GET_SQL, (self.task_id, BENCH_USER))

    def list(self) -> None:
        floor._rows(floor.LIST_SQL, (BENCH_USER, 51, 0))  # as the floor asks: one more

    def create(self) -> None:
        floor._create(BENCH_USER, "Benchmark task")


class Product:
    """The product's own unit of work and services, as the role that owns the tables."""

    def __init__(self, url: str, task_id: int) -> None:
        self.engine = create_db_engine(Settings(database_url=url))
        self.owner = Claims(sub=BENCH_USER, exp=time.time() + 86400)
        self.keys = IdempotencyKeys(ttl_seconds=86400)
        self.task_id = task_id

    def _work(self, run: Callable[[UnitOfWork], object]) -> None:
        work = UnitOfWork(self.engine, self.owner)
        try:
            run(work)
        finally:
            work.close()

    def pid(self, db: BenchDatabase) -> int:
        """Its backend: one request after another keeps the pool at one connection."""
        self.get()
        with db.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                "AND application_name = 'todo-api'",
                (db.name,),
            )
            ((pid,),) = cur.fetchall()
        return int(pid)

    def get(self) -> None:
        self._work(lambda work: service.get_task(work, task_id=self.task_id))

    def list(self) -> None:
        self._work(
            lambda work: service.list_tasks(
                work, status="all", sort="created", order="desc", limit=50, offset=0
            )
        )

    def create(self) -> None:
        task = TaskCreate(title="Benchmark task")
        self._work(lambda work: service.create_task(work, data=task))

    def create_key(self) -> None:
        task = TaskCreate(title="Benchmark task")

        def run(work: UnitOfWork) -> None:
            def create() -> JSONBytesResponse:
                row = service.create_task(work, data=task)
                return JSONBytesResponse(row, status_code=201)

            key = str(uuid.uuid4())
            self.keys.run(work, key=key, fingerprint=key.replace("-", "") * 2, action=create)

        self._work(run)


def measure(request: Callable[[], None], pid: int, requests: int) -> tuple[float, float]:
    """(PostgreSQL CPU, this process's CPU) per request, in microseconds."""
    for _ in range(50):  # warm caches and plans
        request()
    database, client = backend_seconds(pid), time.process_time()
    for _ in range(requests):
        request()
    database, client = backend_seconds(pid) - database, time.process_time() - client
    return database * 1e6 / requests, client * 1e6 / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    db = BenchDatabase(server_url(args.database_url))
    db.create()
    try:
        # Run from the product's virtualenv (it imports todo_api): its todo-api is beside it.
        db.migrate(Path(sys.executable).parent / "todo-api")
        seeded = db.seed()
        base, product = Floor(db.url, seeded.first), Product(db.owner_url, seeded.first)
        pids = {"floor": base.pid(), "product": product.pid(db)}
        shapes = {
            "list of 50": {"floor": base.list, "product": product.list},
            "get": {"floor": base.get, "product": product.get},
            "create": {"floor": base.create, "product": product.create},
            # The floor ignores the key: it is the same create.
            "create with an Idempotency-Key": {"floor": base.create, "product": product.create_key},
        }
        print(f"{args.requests} requests per measurement, median of {args.rounds} rounds (µs)")
        print(
            "| request | floor: PostgreSQL | product: PostgreSQL | ratio | floor: client | "
            "product: client |"
        )
        print("|---|---|---|---|---|---|")
        for shape, requests in shapes.items():
            taken: dict[str, list[tuple[float, float]]] = {"floor": [], "product": []}
            for _ in range(args.rounds):
                for name, request in requests.items():
                    taken[name].append(measure(request, pids[name], args.requests))
            (fd, fc), (pd, pc) = (
                tuple(statistics.median(values) for values in zip(*taken[name], strict=True))
                for name in ("floor", "product")
            )
            print(f"| {shape} | {fd:.0f} | {pd:.0f} | {pd / fd:.2f} | {fc:.0f} | {pc:.0f} |")
        product.engine.dispose()
        floor._connection().close()
    finally:
        db.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
