"""The OpenAPI document and the running API agree: schemathesis, every check, on both databases.

Run as a fuzzer would run it (`schemathesis run --checks all`, every phase) against the real
app over real HTTP, as a fixed user (`alice`) with a valid token. Generation is deterministic
(the same cases every run) and the examples per operation bounded, so it stays quick.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import BACKEND, auth, hs256

# Seconds of fuzzing or of stalled databases per test: outside the fast tier.
pytestmark = pytest.mark.slow
ALICE = auth("alice")

EXAMPLES_PER_OPERATION = 40
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")

CONFIG = """
[parameters]
"path.user_id" = "alice"

# The defaults, and 412: a well-formed If-Match that names an old version of the task.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]
"""
# A fresh Idempotency-Key for each request meant to be valid (see the module).
HOOKS = "tests.support.schemathesis_hooks"


def test_api_honours_its_openapi_document(api, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    token = hs256("alice", exp=2**31 - 1)
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{api.base_url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--generation-deterministic",
            "--workers",
            "1",
            "--header",
            f"Authorization: Bearer {token}",
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(BACKEND)},
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    # Not a vacuous pass: every operation was exercised, in every phase that has cases.
    assert "Tested: 6" in result.stdout, result.stdout[-3000:]
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in result.stdout, result.stdout[-3000:]


def test_update_schema_has_no_null_title_or_completed_and_the_server_agrees(api):
    spec = api.get("/openapi.json").json()
    update = spec["components"]["schemas"]["TaskUpdate"]["properties"]
    for field in ("title", "completed"):
        assert "null" not in str(update[field]), update[field]
        assert "default" not in update[field]
    assert {"type": "null"} in update["description"]["anyOf"]  # null clears the description
    task = api.post("/api/alice/tasks", json={"title": "t"}, headers=ALICE).json()
    for field in ("title", "completed"):
        response = api.put(f"/api/alice/tasks/{task['id']}", json={field: None}, headers=ALICE)
        assert response.status_code == 422
    cleared = api.put(f"/api/alice/tasks/{task['id']}", json={"description": None}, headers=ALICE)
    assert cleared.status_code == 200


def test_no_route_documents_or_answers_400(api):
    spec = api.get("/openapi.json").json()
    for operations in spec["paths"].values():
        for operation in operations.values():
            assert "400" not in operation["responses"]


@pytest.mark.parametrize(
    "title",
    [
        "a",
        " a ",
        "\x0b",
        "\u3000",
        "   ",
        "x" * 200,
        " " + "y" * 200 + "\n",
        "x" * 201,
        "a\x00b",
        "\x1c a \x1c",
        "🦆" * 200,
        "🦆" * 201,
    ],
)
def test_title_schema_accepts_exactly_what_the_server_accepts(api, title):
    spec = api.get("/openapi.json").json()
    pattern = spec["components"]["schemas"]["TaskCreate"]["properties"]["title"]["pattern"]
    response = api.post("/api/alice/tasks", json={"title": title}, headers=ALICE)
    assert response.status_code in (201, 422)
    assert (response.status_code == 201) == bool(re.search(pattern, title)), response.text
