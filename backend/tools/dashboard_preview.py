"""Draw the Grafana dashboard's panels with matplotlib, from the same queries answered by a real
Prometheus, laid out on the dashboard's own grid (used by test_prometheus_live.py when
DASHBOARD_PREVIEW is set; matplotlib is in the bench dependency group).

Grafana cannot run on our machines (no container engine, no Debian package), so this is how the
README gets a picture of the dashboard from a real run. It draws stats, time series and the alert
table; it is a preview, not a Grafana renderer."""

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from tests.support.prometheus_server import Prometheus
from tests.support.rules_files import GRAFANA_VARIABLES, dashboard, panels

# Grafana's dark theme.
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLOURS = {"green": "#73bf69", "yellow": "#fade2a", "red": "#f2495c"}
# A short rate window shows the run's phases (the live test scrapes every second).
PREVIEW_VARIABLES = {**GRAFANA_VARIABLES, "$__rate_interval": "5s"}
UNITS = {"percentunit": "{:.1%}", "s": "{:.3g} s", "reqps": "{:.3g}/s", "ops": "{:.3g}/s"}


def expression(target: dict[str, Any]) -> str:
    expr: str = target["expr"]
    for variable, replacement in PREVIEW_VARIABLES.items():
        expr = expr.replace(variable, replacement)
    return expr


def legend(template: str, labels: dict[str, str]) -> str:
    if template in ("", "__auto"):
        return ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def formatted(value: float, unit: str, decimals: int | None) -> str:
    if value != value:  # NaN: no traffic in the window
        return "n/a"
    if decimals is not None and unit not in UNITS:
        return f"{value:.{decimals}f}"
    return UNITS.get(unit, "{:.3g}").format(value)


def axis_label(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{value:.1%}"
    if unit == "s":
        return f"{value * 1000:.0f} ms"
    if unit in ("reqps", "ops"):
        return f"{value:g}/s"
    return f"{value:g}"


def threshold_colour(panel: dict[str, Any], value: float) -> str:
    colour = "green"
    for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]:
        if step["value"] is None or value >= step["value"]:
            colour = step["color"]
    return COLOURS.get(colour, colour)


def draw_stat(ax: Axes, panel: dict[str, Any], prometheus: Prometheus, at: float) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    (target,) = panel["targets"]
    result = prometheus.api("query", query=expression(target), time=at)["result"]
    number = float(result[0]["value"][1]) if result else float("nan")
    ax.set_facecolor(threshold_colour(panel, number) if number == number else PANEL)
    text = formatted(number, defaults.get("unit", ""), defaults.get("decimals"))
    ax.text(0.5, 0.42, text, ha="center", va="center", fontsize=20, color="white", weight="bold")


def draw_timeseries(
    ax: Axes, panel: dict[str, Any], prometheus: Prometheus, start: float, end: float
) -> None:
    ax.set_facecolor(PANEL)
    defaults = panel["fieldConfig"]["defaults"]
    unit = defaults.get("unit", "")
    stacked = defaults["custom"]["stacking"]["mode"] == "normal"
    below: dict[float, float] = {}  # the stack's top so far, by timestamp
    for target in panel["targets"]:
        for series in prometheus.query_range(expression(target), start, end, 1):
            stamps = [float(t) for t, _ in series["values"]]
            values = [float(v) for _, v in series["values"]]
            times = [datetime.fromtimestamp(t, UTC) for t in stamps]
            label = legend(target.get("legendFormat", ""), series["metric"])
            if stacked:
                bases = [below.get(t, 0.0) for t in stamps]
                values = [base + v for base, v in zip(bases, values, strict=True)]
                below.update(zip(stamps, values, strict=True))
                ax.fill_between(times, bases, values, alpha=0.25)
            dashed = "objective" in label or "allowed" in label
            ax.plot(times, values, label=label, linewidth=1.2, linestyle="--" if dashed else "-")
    if "min" in defaults:
        ax.set_ylim(bottom=defaults["min"])
    if "max" in defaults:
        ax.set_ylim(top=defaults["max"] * 1.1)
    ax.grid(color=GRID, linewidth=0.5)
    ax.tick_params(colors=TEXT, labelsize=6)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.yaxis.set_major_formatter(lambda v, _: axis_label(v, unit))
    for spine in ax.spines.values():
        spine.set_color(GRID)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(
            fontsize=5, loc="upper left", ncol=2, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT
        )


def draw_table(ax: Axes, panel: dict[str, Any], prometheus: Prometheus, at: float) -> None:
    ax.set_facecolor(PANEL)
    (target,) = panel["targets"]
    rows = prometheus.api("query", query=expression(target), time=at)["result"]
    lines = ["alertname                          state     severity  instance"]
    for row in sorted(rows, key=lambda r: r["metric"]["alertname"]):
        labels = row["metric"]
        lines.append(
            f"{labels['alertname']:<34} {labels.get('alertstate', ''):<9} "
            f"{labels.get('severity', ''):<9} {labels.get('instance', '')}"
        )
    ax.text(0.01, 0.85, "\n".join(lines), va="top", family="monospace", fontsize=7, color=TEXT)


def render(prometheus: Prometheus, start: float, end: float, path: Path) -> None:
    board = dashboard()
    shown = list(panels(board))
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in shown)
    figure = plt.figure(figsize=(16, rows * 0.36), facecolor=BACKGROUND)
    when = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%d %H:%M UTC")
    figure.suptitle(
        f"{board['title']} (preview of deploy/grafana/dashboards/todo-api.json: a real "
        f"`todo-api serve` scraped by Prometheus every second, {when})",
        color=TEXT,
        fontsize=10,
        y=0.998,
    )
    top = 0.985
    for panel in shown:
        grid = panel["gridPos"]
        # Room inside each grid cell for the panel's title and, on graphs, the axes' labels.
        left, bottom = (0.03, 0.018) if panel["type"] == "timeseries" else (0.004, 0.006)
        box = [
            grid["x"] / 24 + left,
            top - (grid["y"] + grid["h"]) / rows * top + bottom,
            grid["w"] / 24 - left - 0.004,
            grid["h"] / rows * top - bottom - 0.014,
        ]
        if panel["type"] == "row":
            figure.text(box[0], box[1] + box[3] / 2, panel["title"], color=TEXT, weight="bold")
            continue
        ax = figure.add_axes(box)
        ax.set_title(panel["title"], color=TEXT, fontsize=8, loc="left")
        if panel["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            draw_stat(ax, panel, prometheus, end)
        elif panel["type"] == "timeseries":
            draw_timeseries(ax, panel, prometheus, start, end)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            draw_table(ax, panel, prometheus, end)
    figure.savefig(path, dpi=110, facecolor=BACKGROUND)
    plt.close(figure)
