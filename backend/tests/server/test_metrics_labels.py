"""Metric labels are bounded: no request path, however made up, becomes a label value."""

import random
import string

from prometheus_client.parser import text_string_to_metric_families

from tests.support import running_app, settings_for


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
