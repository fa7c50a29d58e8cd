"""The benchmark: `backend/.venv/bin/python bench/run.py [options]` from the repository root.

Creates a throwaway PostgreSQL database, starts the product (`todo-api serve`) and the floor
(bench/floor.py) under Gunicorn, drives both with wrk, alternately, and writes bench/results/.
See bench/README.md. Exit status 1 when any request failed or the two apps' bodies differ.
"""

import argparse
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import curves
import load
import machine
import report
from database import BenchDatabase, server_url
from servers import Keys
from session import Session

BENCH_DIR = Path(__file__).resolve().parent
SCENARIOS = ("list", "create", "get", "toggle", "mixed", "create_key")
CURVES = ("owner", "workers", "others")
NOISY_CORES = 0.15  # mean CPU of processes outside the benchmark, in cores


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="Gunicorn workers per app (default 2)")
    p.add_argument("--duration", type=int, default=10, help="measured seconds per run")
    p.add_argument("--warmup", type=int, default=2, help="discarded seconds before each run")
    p.add_argument("--connections", type=_ints, default=[8, 32], help="e.g. 8,32")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the scenarios (floor, product, floor, product...); the ratios use medians",
    )
    p.add_argument("--scenarios", type=_names(SCENARIOS), default=list(SCENARIOS))
    p.add_argument(
        "--eddsa",
        type=_names(SCENARIOS),
        default=["list", "create"],
        help="scenarios also run with EdDSA tokens (JWKS), at the most connections; 'none' to skip",
    )
    p.add_argument(
        "--curves",
        type=_names(CURVES),
        default=list(CURVES),
        help="owner (10/1k/10k own tasks), workers (1/2/4), others (10k vs 1M rows "
        "of other users, the slow one to seed); 'all' or 'none'",
    )
    p.add_argument(
        "--no-log-check",
        action="store_true",
        help="skip the product at LOG_LEVEL=warning against the default info",
    )
    p.add_argument("--curve-connections", type=int, default=8, help="for the latency curves")
    p.add_argument("--worker-counts", type=_ints, default=[1, 2, 4])
    p.add_argument("--worker-connections", type=int, default=32, help="for the workers curve")
    p.add_argument("--big-rows", type=int, default=1_000_000, help="the others curve's far point")
    p.add_argument(
        "--wrk-threads",
        type=int,
        default=1,
        help="wrk threads (1 leaves the most CPU to the servers on 2 cores)",
    )
    p.add_argument(
        "--database-url",
        help="PostgreSQL server (default: TEST_DATABASE_URL's, or "
        "postgresql://postgres@127.0.0.1:5432); a bench_<random> database is made",
    )
    p.add_argument(
        "--no-balance",
        action="store_true",
        help="measure even when wrk's connections pile onto one worker (default: restart wrk "
        "until each worker holds at least 3/4 of its share)",
    )
    p.add_argument(
        "--product-role",
        choices=("owner", "superuser"),
        default="owner",
        help="the product's database role: the tables' owner, bound by row-level security as "
        "in production (default), or the server's superuser, which skips it (to compare with "
        "a product that predates the policy)",
    )
    p.add_argument(
        "--fastapi-floor",
        action="store_true",
        help="also measure the floor's requests served by FastAPI (floor_fastapi.py) in every "
        "scenario: FastAPI's own cost, and the product against it",
    )
    p.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    p.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a quick check that everything works: 2 s runs, 8 connections, no curves",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.duration, args.warmup, args.connections = 2, 1, [8]
        args.curves, args.no_log_check, args.eddsa = [], True, ["list"]
    if args.duration < 1 or args.warmup < 0:
        p.error("--duration must be >= 1 and --warmup >= 0 (whole seconds: wrk's unit)")
    return args


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _names(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        if text in ("all", "none"):
            return list(allowed) if text == "all" else []
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = set(names) - set(allowed)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {sorted(unknown)}; choose from {allowed}")
        return names

    return parse


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (e.g. from make or CI) unwinds like Ctrl-C, through the cleanup below.
    raise KeyboardInterrupt


def _portable(value: object) -> object:
    if not isinstance(value, Path):
        return value
    try:
        return str(value.resolve().relative_to(BENCH_DIR.parent))
    except ValueError:
        return value.name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    wrk = load.wrk_binary()
    # The venv's bin directory, not resolved: resolving would leave the venv for the base Python.
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "todo-api").exists():
        venv_bin = BENCH_DIR.parent / "backend" / ".venv" / "bin"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="todo-bench-"))
    db = BenchDatabase(server_url(args.database_url))
    keys: Keys | None = None
    session: Session | None = None
    explain: dict[str, Any] = {}
    failed, created = True, False
    try:
        print(f"bench: database {db.name}; server logs in {log_dir}", flush=True)
        created = True  # from the first step: a failed create leaves its role to drop
        db.create()
        db.migrate(venv_bin / "todo-api")
        db.seed()
        keys = Keys()
        session = Session(db, keys, venv_bin, log_dir, args.duration, args.warmup, args.wrk_threads)
        session.product_url = db.owner_url if args.product_role == "owner" else db.url
        session.balance = not args.no_balance
        info = machine.describe(BENCH_DIR.parent, wrk, db.server_version())
        if info["sched_autogroup"]:
            print(f"bench: warning: {machine.AUTOGROUP_WARNING}", flush=True)
        session.app("floor", args.workers)
        if args.fastapi_floor:
            session.app("fastapi-floor", args.workers)
        session.app("product", args.workers)
        byte_check = session.compare_bodies()
        _measure_all(session, args, explain)
        failed = False
    finally:
        if session is not None:
            session.stop_all()
        if keys is not None:
            keys.close()
        if created and not args.keep_db:
            db.drop()
        elif created:
            print(f"bench: database kept: {db.url}", flush=True)
        if failed:
            print(f"bench: stopped before the end; server logs kept in {log_dir}", flush=True)
    shutil.rmtree(log_dir, ignore_errors=True)
    results = {
        "machine": info,
        # Paths relative to the repository: results are committed, machine paths are not.
        "config": {k: _portable(v) for k, v in vars(args).items()},
        "elapsed_s": round(time.monotonic() - started, 1),
        "byte_check": byte_check,
        "runs": session.runs,
        "ratios": report.ratios(session.runs),
        "explain": explain,
        "warnings": session.warnings,
        "notes": session.notes + _noise(session.runs) + _changed(info) + _autogroup(info),
    }
    written = report.write(results, args.results, stamp)
    print("\n" + report.markdown(results))
    print("bench: wrote " + ", ".join(str(path) for path in written))
    clean = not session.warnings and all(byte_check.values())
    return 0 if clean else 1


def _noise(runs: list[dict[str, Any]]) -> list[str]:
    """Say so when something else kept the machine busy: then every number is suspect."""
    others = [r["cpu"]["other"] for r in runs if "cpu" in r]
    if not others or (mean := sum(others) / len(others)) < NOISY_CORES:
        return []
    return [
        f"Other processes kept {mean:.0%} of a core busy on average (up to {max(others):.0%}) "
        "while the load ran: the numbers are noisy; compare ratios, or rerun on a quiet machine."
    ]


def _autogroup(info: dict[str, Any]) -> list[str]:
    return [machine.AUTOGROUP_WARNING] if info["sched_autogroup"] else []


def _changed(info: dict[str, Any]) -> list[str]:
    now = machine.source_digest(BENCH_DIR.parent / "backend" / "todo_api")
    if now == info["product_source"]:
        return []
    return [
        "The product's code changed during the run (source digest "
        f"{info['product_source']} -> {now}): apps started after the change ran the new code."
    ]


def _measure_all(session: Session, args: argparse.Namespace, explain: dict[str, Any]) -> None:
    most = max(args.connections)
    for round_ in range(1, args.rounds + 1):
        session.round = round_
        for connections in args.connections:
            for scenario in args.scenarios:
                session.pair("scenarios", scenario, connections)
    session.round = 1
    for scenario in args.eddsa:
        session.pair("eddsa", scenario, most, auth="EdDSA")
    if not args.no_log_check:
        curves.log_level(session, args.workers, most, ["list", "create"])
    if "owner" in args.curves:
        curves.owner_sizes(session, args.workers, args.curve_connections, explain)
    if "workers" in args.curves:
        curves.worker_counts(session, args.worker_counts, args.worker_connections)
    if "others" in args.curves:
        curves.other_rows(session, args.workers, args.curve_connections, args.big_rows, explain)
    else:
        explain[f"{session.db.other_rows():,} other rows"] = session.db.explain_list()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("bench: interrupted (servers stopped, database dropped)")
