"""The Prometheus rules: promtool's check and unit tests, a firing and a silent case for every
alert, SLO targets in one place, and the same rules for compose and Kubernetes.

What the rules select is checked against real series in test_prometheus_live.py.
"""

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.deploy_files import (
    COMPOSE,
    PROMETHEUS,
    REPO,
    SERVICEMONITOR,
    compose_services,
    k8s_objects,
    load_yaml,
)
from tests.support.prometheus_server import require
from tests.support.rules_files import (
    PROMETHEUS_RULE,
    RULE_TESTS,
    RULES,
    alerts,
    prometheus_rule_text,
    recordings,
    rules,
    selectors,
)
from todo_api.observability import ALL_LATENCY_BUCKETS

SEVERITIES = {"page", "ticket"}
OBJECTIVES = {"job:slo_availability:objective", "job:slo_latency:objective"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("promtool"), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@pytest.mark.slow  # seconds of waiting (outside `make test-fast`)
def test_rule_unit_tests_pass() -> None:
    assert [path.name for path in RULE_TESTS] == ["rules.slow-burn.test.yml", "rules.test.yml"]
    result = promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_load_the_rules_file() -> None:
    for path in RULE_TESTS:
        assert load_yaml(path)["rule_files"] == [RULES.name], path.name


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "alerts without a case where they fire"
    assert names - silent == set(), "alerts without a case where they stay silent"
    assert (firing | silent) - names == set(), "cases for alerts that do not exist"


def test_alerts_have_a_severity_a_summary_and_a_runbook_line() -> None:
    readme = (REPO / "README.md").read_text()
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert {"summary", "description"} <= rule["annotations"].keys(), name
        assert f"`{name}`" in readme, f"README has no runbook line for {name}"


def test_slo_objectives_are_two_recording_rules_that_every_burn_alert_uses() -> None:
    objectives = {rule["record"]: rule for rule in recordings() if rule["record"] in OBJECTIVES}
    assert objectives.keys() == OBJECTIVES
    for rule in objectives.values():
        target = float(re.fullmatch(r"vector\(([0-9.]+)\)", rule["expr"]).group(1))  # type: ignore[union-attr]
        assert 0.9 <= target < 1
    for rule in alerts():
        if "slo" in rule["labels"]:
            used = {s.split("{")[0] for s in selectors(rule["expr"])} & OBJECTIVES
            assert used == {f"job:slo_{rule['labels']['slo']}:objective"}, rule["alert"]
            # No target written out again beside the objective rule.
            assert not re.search(r"0\.99", rule["expr"]), rule["alert"]


def test_the_burn_rate_alerts_use_the_workbooks_windows_and_factors() -> None:
    expected = {
        "page": {("1h", "5m", "14.4"), ("6h", "30m", "6")},
        "ticket": {("1d", "2h", "3"), ("3d", "6h", "1")},
    }
    pair = re.compile(
        r"ratio_rate(\w+) > on \(job\) \(([\d.]+) \*.*?\n\s*and\n\s*"
        r"job:slo_\w+:ratio_rate(\w+) > on \(job\) \(([\d.]+) \*"
    )
    burn_alerts = [rule for rule in alerts() if "slo" in rule["labels"]]
    assert len(burn_alerts) == 4
    for rule in burn_alerts:
        found = set()
        for long, factor, short, same in pair.findall(rule["expr"]):
            assert factor == same, rule["alert"]
            found.add((long, short, factor))
        assert found == expected[rule["labels"]["severity"]], rule["alert"]


def test_every_series_an_alert_reads_is_recorded_or_exported() -> None:
    recorded = {rule["record"] for rule in recordings()}
    for rule in alerts():
        for selector in selectors(rule["expr"]):
            name = selector.split("{")[0]
            if ":" in name:
                assert name in recorded, f"{rule['alert']} reads {name}, which no rule records"


def test_the_latency_threshold_is_one_bucket_bound_of_the_fine_histogram() -> None:
    bounds = set()
    for rule in rules():
        for selector in selectors(rule["expr"]):
            if selector.startswith("http_request_duration_highr_seconds_bucket"):
                match = re.search(r'le="([^"]+)"', selector)
                assert match, selector
                bounds.add(match.group(1))
    assert len(bounds) == 1, f"the latency SLI rules disagree on the threshold: {bounds}"
    (bound,) = bounds
    # The client writes bounds as Python floats ("0.25", "1.0"), and Prometheus matches text.
    assert bound in {str(float(b)) for b in ALL_LATENCY_BUCKETS}


# --- One source for compose and Kubernetes --------------------------------------------------------


def test_compose_prometheus_loads_the_rules_file() -> None:
    (rule_file,) = load_yaml(PROMETHEUS)["rule_files"]
    prometheus = compose_services(COMPOSE)["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    # A relative rule file is read beside the configuration file.
    target = Path(config_flag.split("=", 1)[1]).parent / rule_file
    assert f"./{RULES.relative_to(REPO)}:{target}:ro" in prometheus["volumes"]


def test_the_prometheusrule_is_generated_from_the_rules_file() -> None:
    assert PROMETHEUS_RULE.read_text() == prometheus_rule_text(), (
        "deploy/k8s/servicemonitor/prometheusrule.yaml is stale: "
        "run `cd backend && .venv/bin/python -m tests.support.rules_files`"
    )
    document = load_yaml(PROMETHEUS_RULE)
    assert document["spec"]["groups"] == load_yaml(RULES)["groups"]
    # kubernetes-validate has no schema for this CRD: check the fields that matter here.
    assert document["apiVersion"] == "monitoring.coreos.com/v1"
    assert document["kind"] == "PrometheusRule"
    monitor = load_yaml(SERVICEMONITOR / "servicemonitor.yaml")
    assert document["metadata"]["labels"] == monitor["metadata"]["labels"]


def test_the_servicemonitor_component_carries_the_prometheusrule() -> None:
    component = load_yaml(SERVICEMONITOR / "kustomization.yaml")
    assert PROMETHEUS_RULE.name in component["resources"]


def test_rules_select_the_api_job_of_compose_and_kubernetes() -> None:
    # Compose's scrape job, and the job label the ServiceMonitor gives: the Service's name.
    jobs = load_yaml(PROMETHEUS)["scrape_configs"]
    (job,) = [j for j in jobs if any(d["names"] == ["api"] for d in j.get("dns_sd_configs", []))]
    assert job["job_name"] == k8s_objects()["Service"]["metadata"]["name"]
    for rule in rules():
        for selector in selectors(rule["expr"]):
            if ":" not in selector.split("{")[0]:  # recorded series carry the job already
                assert f'job="{job["job_name"]}"' in selector, selector
