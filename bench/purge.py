"""Does the Idempotency-Key purge keep up? The `create_key` scenario (a new key on every create)
held for a while against the product with a short IDEMPOTENCY_TTL_SECONDS, sampling once a second
how many keys are stored and how many of them have expired.

    backend/.venv/bin/python bench/purge.py                 # TTLs 2, 5 and 15 s, 30 s each
    backend/.venv/bin/python bench/purge.py --ttls 1,10 --duration 60

Keeping up means that the expired keys stay a small, flat number (what arrived since the last
writes purged) while the stored keys level off at about rate x TTL; falling behind shows as an
expired count that grows for as long as the load lasts. Not part of `run.py`: it measures one
property of the product, not its speed against the floor.
"""

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import load
from database import BENCH_USER, BenchDatabase, server_url
from servers import Keys, start_app

BENCH_DIR = Path(__file__).resolve().parent


def _counts(db: BenchDatabase) -> tuple[int, int]:
    with db.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE expires_at < now()) FROM idempotency_keys"
        )
        total, expired = cur.fetchone()
    return int(total), int(expired)


def measure(db: BenchDatabase, keys: Keys, ttl: int, args: argparse.Namespace) -> dict[str, Any]:
    os.environ["IDEMPOTENCY_TTL_SECONDS"] = str(ttl)
    app = start_app(
        "product",
        venv_bin=BENCH_DIR.parent / "backend" / ".venv" / "bin",
        database_url=db.owner_url,
        keys=keys,
        workers=args.workers,
        log_dir=Path(tempfile.mkdtemp(prefix="todo-purge-")),
        label=f"product-ttl{ttl}",
    )
    samples: list[tuple[int, int]] = []
    result: dict[str, Any] = {}
    try:
        token = keys.token(BENCH_USER, "HS256")
        wrk_args = {"user": BENCH_USER, "token": token}
        run = load.Load("create_key", app.url, args.connections, args.duration, 1, wrk_args)

        def drive() -> None:
            result.update(load.run(run) or {})

        driver = threading.Thread(target=drive)
        driver.start()
        while True:
            time.sleep(1)
            if not driver.is_alive():
                break
            samples.append(_counts(db))
        driver.join()
    finally:
        app.stop()
    expired = [e for _, e in samples]
    tail = samples[len(samples) // 2 :]  # the second half: past the first TTL
    return {
        "ttl": ttl,
        "rps": result.get("rps"),
        "p99_ms": result.get("latency_ms", {}).get("p99"),
        "errors": result.get("error_count"),
        "stored_end": samples[-1][0] if samples else None,
        "expired_max": max(expired, default=None),
        "expired_mean_2nd_half": round(sum(e for _, e in tail) / len(tail), 1) if tail else None,
        "expired_end": expired[-1] if expired else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttls", default="2,5,15")
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    db = BenchDatabase(server_url(args.database_url))
    keys: Keys | None = None
    rows = []
    try:
        db.create()
        db.migrate(BENCH_DIR.parent / "backend" / ".venv" / "bin" / "todo-api")
        db.seed()
        keys = Keys()
        for ttl in [int(part) for part in args.ttls.split(",")]:
            rows.append(measure(db, keys, ttl, args))
            print(rows[-1], flush=True)
            db.reset()
    finally:
        if keys is not None:
            keys.close()
        db.drop()
    print(
        "\n| TTL s | keyed creates/s | p99 ms | errors | stored at end "
        "| expired: max | mean, 2nd half | at end |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['ttl']} | {r['rps']:.0f} | {r['p99_ms']} | {r['errors']} | {r['stored_end']} "
            f"| {r['expired_max']} | {r['expired_mean_2nd_half']} | {r['expired_end']} |"
        )


if __name__ == "__main__":
    main()
