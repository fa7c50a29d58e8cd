"""The Grafana dashboard and its provisioning, and compose's Grafana service. No Grafana runs here:
what the panels query is checked against a real Prometheus in test_prometheus_live.py."""

import re
from pathlib import PurePosixPath
from typing import Any

from tests.support.deploy_files import (
    COMPOSE_VARIABLE,
    PROMETHEUS,
    REPO,
    compose_services,
    load_yaml,
)
from tests.support.rules_files import (
    DASHBOARD,
    GRAFANA,
    dashboard,
    panel_queries,
    panels,
    selectors,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What an on-call engineer needs on the dashboard (issue: traffic, errors, latency, auth failures,
# task changes, pool use against its size, readiness failures, instances up).
METRICS = {
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "http_request_duration_highr_seconds_bucket",
    "http_request_duration_highr_seconds_count",
    "todo_auth_failures_total",
    "todo_task_changes_total",
    "todo_db_pool_connections_in_use",
    "todo_db_pool_connections_limit",
    "todo_readiness_failures_total",
    "up",
}


def grafana() -> dict[str, Any]:
    return compose_services()["grafana"]


def mounts() -> dict[str, str]:
    """Grafana's bind mounts: container path -> repository path (read-only ones only)."""
    found = {}
    for volume in grafana()["volumes"]:
        source, target, *mode = volume.split(":")
        if source.startswith("./"):
            assert mode == ["ro"], volume
            found[target] = source
    return found


def in_repository(container_path: str) -> str:
    """The repository file behind a path inside the Grafana container."""
    path = PurePosixPath(container_path)
    for target, source in mounts().items():
        if path.is_relative_to(target):
            return str(PurePosixPath(source) / path.relative_to(target))
    raise AssertionError(f"{container_path} is not mounted from the repository")


def test_dashboard_has_a_fixed_uid_and_a_prometheus_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] == "todo-api" and board["title"]
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["name"] == "datasource" and variable["query"] == "prometheus"
    assert "id" not in board or board["id"] is None, "an exported id would clash on import"


def test_every_panel_queries_through_the_datasource_variable_and_says_what_it_shows() -> None:
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel.get("description"), f"{panel['title']}: tell the on-call what it shows"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: set[tuple[int, int]] = set()
    ids = set()
    for panel in panels():
        assert panel["id"] not in ids, panel["title"]
        ids.add(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_dashboard_shows_every_metric_the_api_exports() -> None:
    shown = {selector.split("{")[0] for _, expr in panel_queries() for selector in selectors(expr)}
    assert METRICS - shown == set()


def test_latency_panels_cover_p50_p95_p99_by_route() -> None:
    (panel,) = [p for p in panels() if p["title"].startswith("Latency p50")]
    quantiles = set()
    for target in panel["targets"]:
        pattern = r"histogram_quantile\((0\.\d+), sum by \(le, method, handler\)"
        match = re.match(pattern, target["expr"])
        assert match, target["expr"]
        quantiles.add(match.group(1))
    assert quantiles == {"0.5", "0.95", "0.99"}


# --- Provisioning and compose ---------------------------------------------------------------------


def test_compose_grafana_is_pinned_with_admin_credentials_from_env_and_no_anonymous() -> None:
    service = grafana()
    image, _, tag = service["image"].rpartition(":")
    assert image == "grafana/grafana" and re.fullmatch(r"\d+\.\d+\.\d+", tag), service["image"]
    environment = service["environment"]
    for name in ("GF_SECURITY_ADMIN_USER", "GF_SECURITY_ADMIN_PASSWORD"):
        assert COMPOSE_VARIABLE.fullmatch(environment[name]), f"{name} must come from .env"
    # Optional, so not `${VAR:?}` (compose checks that for disabled services too): the service
    # sits behind its profile and refuses to start without a password.
    assert service["profiles"] == ["grafana"]
    guard = " ".join(service["entrypoint"])
    assert '[ -n "$$GF_SECURITY_ADMIN_PASSWORD" ] ||' in guard and "exit 1" in guard, guard
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert service["restart"] == "unless-stopped"
    assert service["cap_drop"] == ["ALL"]
    assert "prometheus" in service["depends_on"]


def test_grafana_opens_on_the_provisioned_dashboard() -> None:
    environment = grafana()["environment"]
    home = in_repository(environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (REPO / home).resolve() == DASHBOARD
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "todo-api.yml")["providers"]
    assert (REPO / in_repository(provider["options"]["path"])).resolve() == DASHBOARD.parent
    assert provider["allowUiUpdates"] is False
    provisioning = (REPO / in_repository("/etc/grafana/provisioning")).resolve()
    assert provisioning == GRAFANA / "provisioning"


def test_grafana_datasource_is_compose_prometheus() -> None:
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"]).groups()  # type: ignore[union-attr]
    prometheus = compose_services()[host]
    assert any(str(p).endswith(f":{port}") for p in prometheus["ports"])
    # $__rate_interval is derived from it: it must be the real scrape interval.
    assert source["jsonData"]["timeInterval"] == load_yaml(PROMETHEUS)["global"]["scrape_interval"]
