"""The Better Auth companion's deployment files: its image, its compose profile, its pinned
packages and the CI step that installs them. No Docker or Node needed."""

import json
import re
import shlex
import subprocess
from typing import Any

from tests.support.deploy_files import (
    COMPOSE,
    REPO,
    compose_environment,
    compose_services,
    dockerfile_stages,
    exec_form,
    load_yaml,
    run_tool,
)

COMPANION = REPO / "deploy" / "better-auth"
DOCKERFILE = COMPANION / "Dockerfile"


def companion_service() -> dict[str, Any]:
    return compose_services()["better-auth"]


def test_dockerfile_passes_hadolint() -> None:
    result = run_tool("hadolint", "--failure-threshold", "style", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_a_pinned_slim_node_running_as_a_numeric_non_root_user() -> None:
    (stage,) = dockerfile_stages(DOCKERFILE)
    assert re.fullmatch(r"node:\d+\.\d+\.\d+-[a-z]+-slim", stage.base), stage.base
    user = stage.last("USER") or ""
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit())
    assert exec_form(stage.last("CMD") or "") == ["node", "server.mjs"]
    assert stage.last("STOPSIGNAL") == "SIGTERM"


def test_dependencies_come_from_the_lock_file_without_dev_packages() -> None:
    (stage,) = dockerfile_stages(DOCKERFILE)
    runs = stage.all("RUN")
    assert any("npm ci" in run and "--omit=dev" in run for run in runs)
    assert not any("npm install" in run for run in runs)
    copies = [shlex.split(args) for args in stage.all("COPY")]
    assert copies[0] == ["package.json", "package-lock.json", "./"], "lock first, for caching"
    ignored = (COMPANION / ".dockerignore").read_text().split()
    assert "node_modules" in ignored
    for words in copies:
        for source in words[:-1]:
            assert (COMPANION / source).exists(), f"{source} is copied but does not exist"
            assert source not in ignored


def test_healthcheck_and_port_match_the_server_and_compose() -> None:
    (stage,) = dockerfile_stages(DOCKERFILE)
    healthcheck = stage.last("HEALTHCHECK") or ""
    assert "/healthz" in healthcheck and "curl" not in healthcheck and "wget" not in healthcheck
    assert "/healthz" in (COMPANION / "server.mjs").read_text()
    port = stage.last("EXPOSE")
    assert port == "3001"
    assert any(str(p).endswith(f":{port}") for p in companion_service()["ports"])


def test_packages_are_pinned_and_locked() -> None:
    manifest = json.loads((COMPANION / "package.json").read_text())
    lock = json.loads((COMPANION / "package-lock.json").read_text())
    dependencies = manifest["dependencies"]
    assert re.fullmatch(r"1\.7\.\d+", dependencies["better-auth"]), "an exact 1.7.x"
    assert re.fullmatch(r"8\.\d+\.\d+", dependencies["pg"])
    for name, version in dependencies.items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version, name
    assert lock["packages"][""]["dependencies"] == dependencies


def test_compose_profile_runs_the_companion_on_the_apis_database_after_migrating() -> None:
    services = compose_services()
    companion, api = services["better-auth"], services["api"]
    assert companion["profiles"] == ["auth"]
    assert all("profiles" not in services[name] for name in ("postgres", "migrate", "api"))
    assert companion["build"]["context"] == "./deploy/better-auth"
    assert companion["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert companion["depends_on"]["postgres"]["condition"] == "service_healthy"
    raw_companion, raw_api = companion["environment"], api["environment"]
    assert raw_companion["DATABASE_URL"] == raw_api["DATABASE_URL"]
    assert raw_companion["BETTER_AUTH_SECRET"] == raw_api["BETTER_AUTH_SECRET"]
    env = compose_environment(companion)
    assert env["BETTER_AUTH_URL"] == "http://localhost:3001"
    assert "BETTER_AUTH_JWKS_URL" in raw_api, "the API reaches the JWKS on the compose network"
    assert companion["read_only"] is True and companion["cap_drop"] == ["ALL"]


def test_env_example_wires_the_api_to_the_companion() -> None:
    example = (REPO / ".env.example").read_text()
    port = compose_services()["better-auth"]["ports"][0].rsplit(":", 1)[1]
    assert f"#   BETTER_AUTH_JWKS_URL=http://better-auth:{port}/api/auth/jwks" in example
    assert "#   BETTER_AUTH_URL=http://localhost:3001" in example
    assert re.search(r"#   CORS_ORIGINS=.*http://localhost:3001", example)
    assert "better-auth" in load_yaml(COMPOSE)["services"]


def test_make_test_installs_the_companions_locked_packages() -> None:
    """`make test` (which .ci/run runs) first runs `npm ci` for the companion, from its lock."""
    dry_run = subprocess.run(
        ["make", "-n", "-W", "deploy/better-auth/package-lock.json", "test"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert re.search(r"cd deploy/better-auth && npm ci\b", dry_run), dry_run
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_the_demo_page_is_one_html_file_with_inline_script_only() -> None:
    page = (COMPANION / "public" / "index.html").read_text()
    assert list((COMPANION / "public").iterdir()) == [COMPANION / "public" / "index.html"]
    assert re.findall(r"<script[^>]*>", page) == ["<script>"], "one inline script, no src"
    assert "/token" in page and "Authorization" in page
