"""A real Prometheus, configured as compose's (deploy/prometheus/prometheus.yml, with the rules),
scrapes a real `todo-api serve` (2 workers, a throwaway PostgreSQL database) every second during
a short run: writes, client errors, refused tokens, and a real database outage that the API
answers with 503. Then every rule and every dashboard query is evaluated through Prometheus' HTTP
API and must parse and return series, and so must every selector inside them: a misspelt metric,
label or bucket matches nothing.

With DASHBOARD_PREVIEW=path.png (and matplotlib, in the bench group) the run also draws the
dashboard's panels from the same queries (deploy/grafana/README.md).
"""

import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.test_server_process import Server, gunicorn
from tests.support import SECRET, PostgresServer, auth, bearer, hs256
from tests.support.deploy_files import PROMETHEUS, load_yaml
from tests.support.outage import database_outage
from tests.support.prometheus_server import Prometheus, require, running_prometheus
from tests.support.rules_files import RULES, alerts, panel_queries, recordings, rules, selectors
from todo_api.config import Settings

pytestmark = pytest.mark.slow

WORKERS = 2  # test_server_process.gunicorn's WEB_CONCURRENCY
USERS = [f"live-{n}" for n in range(4)]


@dataclass
class Run:
    prometheus: Prometheus
    start: float
    end: float
    sent: Counter[str]  # what the clients sent and got, by kind


def scrape_config(server: Server, token_file: Path) -> dict[str, Any]:
    """Compose's Prometheus configuration, pointed at this server, scraping every second."""
    config: dict[str, Any] = load_yaml(PROMETHEUS)
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "todo-api"]
    # One server here, where compose finds every replica by the service's name.
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [server.url.removeprefix("http://")]}]
    job["authorization"]["credentials_file"] = str(token_file)
    config["scrape_configs"] = [job]
    return config


def session(client: httpx.Client, user: str, sent: Counter[str]) -> None:
    """One user's round: a task's life, and the mistakes clients make."""
    headers = auth(user)
    tasks = f"/api/{user}/tasks"

    def call(kind: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = client.request(method, path, **kwargs)
        sent[f"{kind} {response.status_code}"] += 1
        return response

    created = call("create", "POST", tasks, json={"title": "write the runbook"}, headers=headers)
    if created.status_code == 201:
        task = f"{tasks}/{created.json()['id']}"
        call("update", "PUT", task, json={"title": "write the runbook, again"}, headers=headers)
        call("complete", "PATCH", f"{task}/complete", headers=headers)
        call("get", "GET", task, headers=headers)
        call("delete", "DELETE", task, headers=headers)
    call("list", "GET", tasks, headers=headers)
    call("missing task", "GET", f"{tasks}/999999999", headers=headers)
    call("invalid body", "POST", tasks, json={"title": ""}, headers=headers)
    call("someone else's", "GET", "/api/someone-else/tasks", headers=headers)
    call("no token", "GET", tasks)
    call("bad signature", "GET", tasks, headers=bearer(hs256(user, secret="x" * 64)))
    call("expired", "GET", tasks, headers=bearer(hs256(user, exp=int(time.time()) - 3600)))


def drive(server: Server, seconds: float, sent: Counter[str], probe: bool = False) -> None:
    """Sessions from four concurrent clients for `seconds` (and readiness probes if `probe`)."""
    deadline = time.monotonic() + seconds

    def client_loop(user: str) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while time.monotonic() < deadline:
                session(client, user, sent)
                if probe:
                    sent[f"readyz {client.get('/readyz').status_code}"] += 1
                time.sleep(0.05)

    with ThreadPoolExecutor(len(USERS)) as pool:
        for future in [pool.submit(client_loop, user) for user in USERS]:
            future.result()


@pytest.fixture(scope="module")
def run(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    require("prometheus")
    directory = tmp_path_factory.mktemp("prometheus-live")
    url = postgres.create_database()
    token = "scrape-" + SECRET[-16:]
    token_file = directory / "metrics_token"
    token_file.write_text(token + "\n")
    sent: Counter[str] = Counter()
    preview = os.environ.get("DASHBOARD_PREVIEW")
    try:
        with gunicorn(url, directory, METRICS_TOKEN=token) as server:
            config = scrape_config(server, token_file)
            with running_prometheus(config, directory) as prometheus:
                prometheus.wait_for('up{job="todo-api"} == 1')
                # A picture needs a longer run than a check: three times as long, same phases.
                scale = 3 if preview else 1
                start = time.time()
                drive(server, 5 * scale, sent)
                with database_outage(postgres, url):
                    drive(server, 3 * scale, sent, probe=True)
                drive(server, 4 * scale, sent)
                # The last requests scraped, and the rules evaluated on them.
                time.sleep(3)
                end = time.time()
                if preview:
                    from tools.dashboard_preview import render

                    render(prometheus, start, end, Path(preview))
                yield Run(prometheus, start, end, sent)
    finally:
        postgres.drop_database(url)


def value(prometheus: Prometheus, expr: str) -> float:
    (sample,) = prometheus.query(expr)
    return float(sample["value"][1])


def assert_matches_series(prometheus: Prometheus, where: str, expr: str) -> None:
    assert prometheus.query(expr), f"{where}: no series for {expr}"
    for selector in selectors(expr):
        assert prometheus.query(selector), f"{where}: {selector} matches no series"


# --- The run itself -------------------------------------------------------------------------------


def test_the_run_had_writes_client_errors_refused_tokens_and_an_outage(run: Run) -> None:
    got = {kind.rsplit(" ", 1)[1] for kind in run.sent}
    assert {"200", "201", "204", "401", "403", "404", "422", "503"} <= got, run.sent
    assert run.sent["readyz 503"] >= 3, run.sent
    # The outage ended: the API served again without a restart.
    assert run.sent["create 201"] > 0 and run.sent["create 503"] > 0


def test_prometheus_counts_every_request_the_clients_made(run: Run) -> None:
    measured = sum(n for kind, n in run.sent.items() if not kind.startswith("readyz"))
    assert value(run.prometheus, 'sum(http_requests_total{job="todo-api"})') == measured
    statuses = run.prometheus.query('sum by (status) (http_requests_total{job="todo-api"})')
    assert {sample["metric"]["status"] for sample in statuses} == {"2xx", "4xx", "5xx"}


def test_the_apis_own_metrics_agree_with_what_the_clients_saw(run: Run) -> None:
    prometheus = run.prometheus
    for reason, kind in [("missing", "no token"), ("bad_signature", "bad signature")]:
        expr = f'todo_auth_failures_total{{job="todo-api",reason="{reason}"}}'
        assert value(prometheus, expr) == run.sent[f"{kind} 401"], reason
    expr = 'todo_auth_failures_total{job="todo-api",reason="expired"}'
    assert value(prometheus, expr) == run.sent["expired 401"]
    for action, kind, status in [
        ("created", "create", 201),
        ("updated", "update", 200),
        ("completed", "complete", 200),
        ("deleted", "delete", 204),
    ]:
        expr = f'todo_task_changes_total{{job="todo-api",action="{action}"}}'
        assert value(prometheus, expr) == run.sent[f"{kind} {status}"], action
    failures = value(prometheus, 'todo_readiness_failures_total{job="todo-api"}')
    assert failures == run.sent["readyz 503"]
    defaults = Settings.model_fields
    per_worker = defaults["db_pool_size"].default + defaults["db_max_overflow"].default
    limit = value(prometheus, 'todo_db_pool_connections_limit{job="todo-api"}')
    assert limit == WORKERS * per_worker
    assert value(prometheus, 'todo_db_pool_connections_in_use{job="todo-api"}') == 0


# --- Every rule and every dashboard query ---------------------------------------------------------


def test_every_rule_is_loaded_and_evaluates_without_error(run: Run) -> None:
    loaded = {
        rule["name"]: rule
        for group in run.prometheus.api("rules")["groups"]
        for rule in group["rules"]
    }
    names = [rule.get("record") or rule["alert"] for rule in rules()]
    assert sorted(loaded) == sorted(names)
    for name, rule in loaded.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"


def test_every_recording_rule_returns_series(run: Run) -> None:
    for rule in recordings():
        assert_matches_series(run.prometheus, rule["record"], rule["expr"])
        assert run.prometheus.query(rule["record"]), f"{rule['record']} was not recorded"


def test_every_alert_expression_parses_and_reads_only_existing_series(run: Run) -> None:
    for rule in alerts():
        run.prometheus.query(rule["expr"])  # parses and evaluates (may be empty: not firing)
        for selector in selectors(rule["expr"]):
            assert run.prometheus.query(selector), f"{rule['alert']}: {selector} matches nothing"


def test_every_dashboard_query_returns_series(run: Run) -> None:
    queries = panel_queries()
    assert len(queries) >= 15
    for title, expr in queries:
        assert_matches_series(run.prometheus, title, expr)


def test_the_outage_pages_through_the_availability_burn_rate_alert(run: Run) -> None:
    firing = run.prometheus.query('ALERTS{alertstate="firing"}')
    assert {alert["metric"]["alertname"] for alert in firing} >= {"TodoApiAvailabilityFastBurn"}
    (page,) = [a for a in firing if a["metric"]["alertname"] == "TodoApiAvailabilityFastBurn"]
    assert page["metric"]["severity"] == "page" and page["metric"]["job"] == "todo-api"
