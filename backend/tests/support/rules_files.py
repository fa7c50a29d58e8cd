"""The Prometheus rules, their unit tests, the Grafana dashboard, and the PrometheusRule generated
from the rules file (one source for compose and Kubernetes).

After editing deploy/prometheus/rules.yml, regenerate the Kubernetes copy (the suite fails until
they match):

    cd backend && .venv/bin/python -m tests.support.rules_files
"""

import json
import re
from collections.abc import Iterator
from typing import Any

import promql_parser

from tests.support.deploy_files import REPO, SERVICEMONITOR, load_yaml

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULE_TESTS = sorted(PROMETHEUS_DIR.glob("*.test.yml"))
PROMETHEUS_RULE = SERVICEMONITOR / "prometheusrule.yaml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "todo-api.json"

# A PrometheusRule's spec is a rules file's content (`groups:`), so the generated object is this
# header and the rules file's groups, indented: comments and block scalars survive unchanged.
# kustomize cannot do this (a configMapGenerator makes a ConfigMap, which the Operator ignores).
_PROMETHEUS_RULE_HEADER = """\
# GENERATED from deploy/prometheus/rules.yml (the one source of the rules): do not edit here.
# After changing the rules:  cd backend && .venv/bin/python -m tests.support.rules_files
# The suite fails while this file and the rules file differ.
#
# The Prometheus Operator loads PrometheusRules its Prometheus selects by label (the
# kube-prometheus-stack chart wants `release: <release name>` unless
# ruleSelectorNilUsesHelmValues is false): add that label here, as on the ServiceMonitor.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: todo-api
  labels:
    app.kubernetes.io/name: todo-api
    app.kubernetes.io/component: api
spec:
"""


def prometheus_rule_text() -> str:
    text = RULES.read_text()
    start = re.search(r"(?m)^groups:", text)
    assert start, f"{RULES.name} has no top-level `groups:`"
    lines = text[start.start() :].splitlines(keepends=True)
    indented = ("  " + line if line.strip() else line for line in lines)
    return _PROMETHEUS_RULE_HEADER + "".join(indented)


def rules() -> list[dict[str, Any]]:
    """Every rule of the rules file, recording and alerting, in order."""
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recordings() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "record" in rule]


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(board: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard, rows' collapsed children included."""
    for panel in (board or dashboard())["panels"]:
        yield panel
        yield from panel.get("panels", [])


# Grafana's variables in the dashboard's queries, and what the live test puts in their place.
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "5m"}


def panel_queries(board: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query target, with Grafana's variables filled in."""
    queries = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def selectors(expr: str) -> list[str]:
    """The instant-vector selectors of a PromQL expression (those inside range selectors too),
    as PromQL: each must match series of its own for the expression to mean what it says."""
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(str(node))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


if __name__ == "__main__":
    PROMETHEUS_RULE.write_text(prometheus_rule_text())
    print(f"wrote {PROMETHEUS_RULE.relative_to(REPO)}")
