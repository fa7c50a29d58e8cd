"""The optional sections: how list latency and throughput scale, and what access logs cost."""

import time
from typing import Any

from session import Session

OWNER_SIZES = (10, 1_000, 10_000)


def log_level(session: Session, workers: int, connections: int, scenarios: list[str]) -> None:
    """The product at LOG_LEVEL=info (the default, one access line per request) and warning.

    The floor is stopped meanwhile: three apps' connection pools would crowd PostgreSQL.
    """
    session.stop("floor")
    default = session.app("product", workers)
    quiet = session.app("product", workers, log_level="warning")
    for scenario in scenarios:
        for app, level in ((default, "info"), (quiet, "warning")):
            session.measure("log_level", scenario, app, connections, point=level)
    session.stop(quiet.name)


def owner_sizes(session: Session, workers: int, connections: int, explain: dict[str, Any]) -> None:
    """List latency for users owning 10, 1,000 and 10,000 tasks: limit 50 must stay flat."""
    _both(session, workers)
    users = [f"owner-{size}" for size in OWNER_SIZES]
    try:
        for user, size in zip(users, OWNER_SIZES, strict=True):
            session.db.add_user_with_tasks(user, size)
        explain[f"a user with {OWNER_SIZES[-1]:,} tasks"] = session.db.explain_list(users[-1])
        for user, size in zip(users, OWNER_SIZES, strict=True):
            session.pair("owner_tasks", "list", connections, user=user, point=size)
    finally:
        session.db.drop_users(users)


def worker_counts(session: Session, counts: list[int], connections: int) -> None:
    """List throughput with 1, 2 and 4 Gunicorn workers (floor then product at each count)."""
    for count in counts:
        for kind in ("floor", "product"):
            app = session.app(kind, count, alone=True)
            session.measure("workers", "list", app, connections, point=count)


def other_rows(
    session: Session, workers: int, connections: int, big: int, explain: dict[str, Any]
) -> None:
    """List latency with ~10k and then `big` rows of other users: the index keeps it flat.

    Last in a run: the bulk rows stay until the database is dropped.
    """
    _both(session, workers)
    small = session.db.other_rows()
    explain[f"{small:,} other rows"] = session.db.explain_list()
    session.pair("other_rows", "list", connections, point=small)
    print(f"  seeding {big:,} rows of other users", flush=True)
    started = time.monotonic()
    rows = session.db.add_bulk_rows(big)
    explain["seed_seconds"] = round(time.monotonic() - started, 1)
    explain[f"{rows:,} other rows"] = session.db.explain_list()
    session.pair("other_rows", "list", connections, point=rows)


def _both(session: Session, workers: int) -> None:
    session.app("floor", workers)
    session.app("product", workers)
