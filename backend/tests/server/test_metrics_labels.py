"""Metric labels are bounded: no request path, however made up, becomes a label value."""

import random
import string

from prometheus_client.parser import text_string_to_metric_families

from tests.support import auth, running_app, settings_for


def series(client) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    text = client.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def random_paths(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    word = lambda: "".join(rng.choices(string.ascii_lowercase + string.digits, k=12))  # noqa: E731
    shapes = [
        lambda: f"/api/{word()}/tasks/",  # a real route's trailing-slash variant
        lambda: f"/api/{word()}/tasks/{rng.randint(1, 10**6)}/",
        lambda: f"/api/{word()}/tasks/1/complete/",
        lambda: f"/{word()}",
        lambda: f"/{word()}/",
        lambda: f"/api/{word()}",
        lambda: f"/docs/{word()}",
        lambda: f"/livez/{word()}",
    ]
    return [rng.choice(shapes)() for _ in range(count)]


def test_unmatched_paths_share_one_label_and_add_no_series(sqlite_url):
    with running_app(settings_for(sqlite_url)) as client:
        for path in random_paths(20, seed=1):
            client.get(path)
            client.post(path)
        baseline = series(client)
        for path in random_paths(1000, seed=2):
            client.get(path)
            client.post(path)
        after = series(client)
    assert after == baseline, sorted(after - baseline)[:10]
    handlers = {dict(labels)["handler"] for _, labels in after if "handler" in dict(labels)}
    assert handlers <= TEMPLATES | {"none"}, handlers - TEMPLATES


TEMPLATES = {
    "/api/{user_id}/tasks",
    "/api/{user_id}/tasks/{task_id}",
    "/api/{user_id}/tasks/{task_id}/complete",
    "/docs",
    "/docs/assets",
}


def samples(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_each_answer_is_counted_once_under_its_route_method_and_status_class(sqlite_url):
    """The request layer records what prometheus-fastapi-instrumentator recorded: one count and
    one latency sample per answer, by route template, method and status class; CORS preflights
    and the probes are not measured; a created task is a task change."""
    tasks, one = "/api/{user_id}/tasks", "/api/{user_id}/tasks/{task_id}"
    origin = {"Origin": "http://localhost:3000"}
    with running_app(settings_for(sqlite_url)) as client:
        before = samples(client)
        created = client.post("/api/alice/tasks", json={"title": "t"}, headers=auth("alice"))
        assert created.status_code == 201
        task = f"/api/alice/tasks/{created.json()['id']}"
        assert client.get(task, headers=auth("alice") | origin).status_code == 200
        assert client.get(task + "0", headers=auth("alice")).status_code == 404
        assert client.get(task).status_code == 401
        preflight = client.options(
            "/api/alice/tasks", headers=origin | {"Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 200
        client.get("/livez")
        client.get("/readyz")
        after = samples(client)

    def added(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    requests = "http_requests_total"
    assert added(requests, handler=tasks, method="POST", status="2xx") == 1
    assert added(requests, handler=one, method="GET", status="2xx") == 1
    assert added(requests, handler=one, method="GET", status="4xx") == 2
    assert added("http_request_duration_seconds_count", handler=one, method="GET") == 3
    assert added("http_request_duration_highr_seconds_count") == 4
    assert added("todo_task_changes_total", action="created") == 1
    measured = {dict(labels).get("handler") for (name, labels) in after if name == requests}
    assert not measured & {"/livez", "/readyz", "/metrics"}
    assert not any(
        dict(labels).get("method") == "OPTIONS" for (name, labels) in after if name == requests
    )
