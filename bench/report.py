"""Results on disk: <timestamp>.json and latest.json (everything), latest.md (the tables a person
reads) and latest.png (requests/s and p99 per scenario, product against floor)."""

import json
import shutil
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RSS_TARGET_MIB = 120


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Product / floor for each condition both were measured under (medians over --rounds).

    Besides requests/s, the workers' CPU per request: it moves much less than throughput
    when something else on the machine takes CPU, so it is the steadier comparison.
    """
    groups: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        if run["app"] in ("floor", "fastapi-floor", "product"):
            groups.setdefault(_key(run), {}).setdefault(run["app"], []).append(run)
    pairs = []
    for apps in groups.values():
        if len(apps) < 2:
            continue
        product, floor = apps["product"], apps["floor"]
        first = product[0]
        pair = {key: first[key] for key in ("section", "scenario", "connections", "auth", "point")}
        pair["rounds"] = min(len(product), len(floor))
        for name, measured in (("product", product), ("floor", floor)):
            pair[f"{name}_rps"] = _median([r["rps"] for r in measured])
            pair[f"{name}_p99_ms"] = _median([r["latency_ms"]["p99"] for r in measured])
            pair[f"{name}_cpu_ms_per_request"] = _median([_cpu_ms(r) for r in measured])
        pair["rps_ratio"] = (
            round(pair["product_rps"] / pair["floor_rps"], 3) if pair["floor_rps"] else None
        )
        if "fastapi-floor" in apps:  # bench/floor_fastapi.py: FastAPI's own cost
            framework = apps["fastapi-floor"]
            pair["fastapi_floor_rps"] = _median([r["rps"] for r in framework])
            pair["fastapi_floor_cpu_ms_per_request"] = _median([_cpu_ms(r) for r in framework])
            pair["fastapi_floor_ratio"] = round(pair["fastapi_floor_rps"] / pair["floor_rps"], 3)
            pair["product_to_fastapi_floor"] = round(
                pair["product_rps"] / pair["fastapi_floor_rps"], 3
            )
        pairs.append(pair)
    return pairs


def _cpu_ms(run: dict[str, Any]) -> float:
    """Milliseconds of worker CPU per request."""
    cores = run.get("cpu", {}).get("workers_total", 0.0)
    return round(cores * 1000 / run["rps"], 3) if run["rps"] else 0.0


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _key(run: dict[str, Any]) -> tuple[Any, ...]:
    return (
        run["section"],
        run["scenario"],
        run["connections"],
        run["auth"],
        run["point"],
        run["workers"],
    )


def write(results: dict[str, Any], directory: Path, stamp: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / f"{stamp}.json", directory / "latest.json", directory / "latest.md"]
    written[0].write_text(json.dumps(results, indent=2) + "\n")
    shutil.copyfile(written[0], written[1])
    written[2].write_text(markdown(results))
    chart = directory / "latest.png"
    if render_chart(results, chart):
        written.append(chart)
    return written


# ---------------------------------------------------------------------------------------------
# Markdown


def _autogroup(on: bool | None) -> str:
    return "" if on is None else f" · kernel autogroup {'on' if on else 'off'}"


def markdown(results: dict[str, Any]) -> str:
    m, cfg, runs = results["machine"], results["config"], results["runs"]
    out = [
        "# Benchmark results",
        "",
        f"{m['date']} · {m['nproc']} x {m['cpu_model']} · {m['memory_gib']} GiB · "
        f"Python {m['python']} · PostgreSQL {m['postgresql']} · commit {m['git_commit'][:10]}"
        f"{' (dirty tree)' if m['git_dirty'] else ''} · load average at start "
        f"{m['load_average'][0]}" + _autogroup(m.get("sched_autogroup")),
        "",
        f"{cfg['workers']} worker(s) per app · {cfg['duration']} s per run after "
        f"{cfg['warmup']} s of warm-up · wrk with {cfg['wrk_threads']} thread(s) · "
        f"run took {results['elapsed_s'] / 60:.1f} min",
        "",
        "CPU is in cores over the measured window (100% = one core; the machine has "
        f"{m['nproc'] * 100}%). *other* is machine-wide busy time that none of the watched "
        "processes explains (another job on the machine makes every number noisy).",
        "",
    ]
    sections = [
        ("Scenarios", "scenarios"),
        ("EdDSA tokens (verified through the JWKS)", "eddsa"),
        ("Access logs: LOG_LEVEL info (default) against warning", "log_level"),
        ("List latency by the user's own task count", "owner_tasks"),
        ("List latency by rows of other users", "other_rows"),
        ("List throughput by worker count", "workers"),
    ]
    for title, section in sections:
        rows = [r for r in runs if r["section"] == section]
        if rows:
            out += [f"## {title}", "", *_runs_table(rows), ""]
    pairs = results["ratios"]
    if pairs:
        out += ["## Product / floor", "", *_ratio_table(pairs), ""]
    out += _memory(runs)
    for title, plan in results.get("explain", {}).items():
        if isinstance(plan, str):
            out += [f"## EXPLAIN of the product's list query ({title})", "", "```", plan, "```", ""]
    if results["byte_check"]:
        same = ", ".join(
            f"{k}: {'same' if v else 'DIFFERENT'}" for k, v in results["byte_check"].items()
        )
        out += [f"Floor and product bodies compared byte for byte: {same}.", ""]
    if results.get("notes"):
        out += ["## Notes", "", *(f"- {n}" for n in results["notes"]), ""]
    if results["warnings"]:
        out += ["## Warnings", "", *(f"- {w}" for w in results["warnings"]), ""]
    return "\n".join(out)


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _runs_table(runs: list[dict[str, Any]]) -> list[str]:
    header = [
        "scenario",
        "point",
        "conns",
        "workers",
        "app",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "errors",
        "CPU workers (conns)",
        "CPU postgres",
        "CPU wrk",
        "CPU other",
    ]
    rounds = any(r.get("round", 1) > 1 for r in runs)
    if rounds:
        header.insert(0, "round")
    rows = []
    for r in runs:
        cpu, lat = r.get("cpu", {}), r["latency_ms"]
        row = [
            r["scenario"],
            _point(r["point"]),
            str(r["connections"]),
            str(r["workers"]),
            r["app"],
            f"{r['rps']:,.0f}",
            f"{lat['p50']:.2f}",
            f"{lat['p90']:.2f}",
            f"{lat['p99']:.2f}",
            str(r["error_count"]),
            _per_worker(cpu.get("workers", []), r.get("connections_per_worker")),
            f"{cpu.get('postgres_total', 0):.0%}",
            f"{cpu.get('wrk', 0):.0%}",
            f"{cpu.get('other', 0):.0%}",
        ]
        rows.append([str(r.get("round", 1)), *row] if rounds else row)
    return _table(header, rows)


def _point(point: Any) -> str:
    if point is None:
        return ""
    return f"{point:,}" if isinstance(point, int) else str(point)


def _per_worker(shares: list[float], connections: list[int] | None) -> str:
    """Each worker's CPU, with the wrk connections it held in parentheses."""
    if not connections or len(connections) != len(shares):
        return " + ".join(f"{c:.0%}" for c in shares)
    return " + ".join(f"{c:.0%} ({n})" for c, n in zip(shares, connections, strict=True))


def _ratio_table(pairs: list[dict[str, Any]]) -> list[str]:
    header = [
        "section",
        "scenario",
        "point",
        "conns",
        "auth",
        "product req/s",
        "floor req/s",
        "product/floor",
        "product p99 ms",
        "floor p99 ms",
        "product CPU ms/req",
        "floor CPU ms/req",
    ]
    rows = [
        [
            p["section"],
            p["scenario"],
            "" if p["point"] is None else str(p["point"]),
            str(p["connections"]),
            p["auth"],
            f"{p['product_rps']:,.0f}",
            f"{p['floor_rps']:,.0f}",
            f"{p['rps_ratio']:.2f}" if p["rps_ratio"] is not None else "-",
            f"{p['product_p99_ms']:.2f}",
            f"{p['floor_p99_ms']:.2f}",
            f"{p['product_cpu_ms_per_request']:.2f}",
            f"{p['floor_cpu_ms_per_request']:.2f}",
        ]
        for p in pairs
    ]
    if any("fastapi_floor_rps" in p for p in pairs):
        header += ["FastAPI floor req/s", "FastAPI floor/floor", "product/FastAPI floor"]
        for row, p in zip(rows, pairs, strict=True):
            row += (
                [
                    f"{p['fastapi_floor_rps']:,.0f}",
                    f"{p['fastapi_floor_ratio']:.2f}",
                    f"{p['product_to_fastapi_floor']:.2f}",
                ]
                if "fastapi_floor_rps" in p
                else ["-", "-", "-"]
            )
    return _table(header, rows)


def _memory(runs: list[dict[str, Any]]) -> list[str]:
    mixed = [r for r in runs if r["section"] == "scenarios" and r["scenario"] == "mixed"]
    if not mixed:
        return []
    last = {r["app"]: r for r in mixed}  # after the last (largest) mixed run of each app
    rows = []
    for app, r in sorted(last.items()):
        worst = max((v for v in r["rss_mib"] if v is not None), default=0.0)
        verdict = "ok" if worst < RSS_TARGET_MIB else "OVER"
        per_worker = ", ".join(f"{v:.1f}" for v in r["rss_mib"] if v is not None)
        rows.append([app, per_worker, f"{verdict} (target < {RSS_TARGET_MIB} MiB)"])
    return [
        "## Memory after the mixed workload (VmRSS per worker, MiB)",
        "",
        *_table(["app", "workers' RSS", "product target"], rows),
        "",
    ]


# ---------------------------------------------------------------------------------------------
# Chart


def render_chart(results: dict[str, Any], path: Path) -> bool:
    """requests/s and p99 per scenario, product beside floor. Needs matplotlib (optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: write the file only
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is not installed; no chart (see bench/README.md)")
        return False
    pairs = [p for p in results["ratios"] if p["section"] in ("scenarios", "eddsa")]
    if not pairs:
        return False
    labels = [
        f"{p['scenario']}\nc={p['connections']}" + ("\nEdDSA" if p["auth"] != "HS256" else "")
        for p in pairs
    ]
    positions = list(range(len(pairs)))
    width = 0.38
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(pairs) * 0.9), 8))
    for axis, field, title in (
        (top, "rps", "requests/s (higher is better)"),
        (bottom, "p99_ms", "p99 latency, ms (lower is better)"),
    ):
        for offset, app, color in (
            (-width / 2, "floor", "#9aa5b1"),
            (width / 2, "product", "#2f6fdf"),
        ):
            values = [p[f"{app}_{field}"] for p in pairs]
            axis.bar([x + offset for x in positions], values, width, label=app, color=color)
        axis.set_title(title)
        axis.set_xticks(positions, labels, fontsize=8)
        axis.grid(axis="y", alpha=0.3)
        axis.legend()
    for x, p in zip(positions, pairs, strict=True):
        if p["rps_ratio"] is not None:
            top.annotate(
                f"{p['rps_ratio']:.2f}x",
                (x + width / 2, p["product_rps"]),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    m = results["machine"]
    figure.suptitle(
        f"Todo API: product vs floor · {results['config']['workers']} worker(s) · "
        f"{m['nproc']} CPUs · {m['date'][:10]} · {m['git_commit'][:8]}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
