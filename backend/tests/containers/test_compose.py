"""docker-compose.yml as a user runs it, with a real Compose v2 CLI against a real engine: one
`up -d` of the default stack with the `auth` and `lb` profiles and two API replicas (chosen in
.env, as the README says), shared by the checks below; then `down`/`up` keeps the data, and
`down -v` leaves nothing behind."""

import contextlib
import csv
import json
import secrets
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support import free_port
from tests.support.better_auth_stack import PASSWORD
from tests.support.container_engine import REPO, Engine, Images, checked, compose_command

pytestmark = [pytest.mark.container, pytest.mark.slow]

# Compose commands that bring the project to the same state when run again (see checked()).
CONVERGENT = ("up", "down", "ps", "port", "logs")


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    directory: Path
    settings: dict[str, str]
    engine: Engine
    # The first API replica's published port (each replica has its own), found after each `up`.
    api: str = ""

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        command = [*self.compose, *args]
        return checked(
            command,
            self.env,
            cwd=self.directory,
            timeout=timeout,
            check=check,
            again_on_exit_race=args[0] in CONVERGENT,
        )

    def up(self) -> None:
        """`up -d` as the README says, then every API replica healthy."""
        self("up", "--detach", timeout=400)
        self.wait_healthy("api")
        self.api = f"http://{self.published('api', 8000)}"

    def published(self, service: str, port: int, index: int = 1) -> str:
        """host:port where replica `index` of `service` publishes `port`."""
        return self("port", "--index", str(index), service, str(port)).strip()

    @property
    def balancer(self) -> str:
        return f"http://127.0.0.1:{self.settings['LB_PORT']}"

    @property
    def companion(self) -> str:
        return f"http://localhost:{self.settings['AUTH_PORT']}"

    def containers(self) -> list[dict[str, object]]:
        lines = self("ps", "--all", "--format", "json").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def wait_healthy(self, service: str, timeout: float = 120) -> None:
        """Every container of `service` (each replica) healthy."""
        deadline = time.monotonic() + timeout
        status: list[str] = []
        while time.monotonic() < deadline:
            found = [c for c in self.containers() if c["Service"] == service]
            status = [str(c.get("Health") or c.get("State")) for c in found]
            if status and set(status) == {"healthy"}:
                return
            time.sleep(1)
        raise AssertionError(f"{service} not healthy in {timeout}s ({status}):\n{self.logs()}")

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "60", check=False)[-6000:]

    def project_objects(self) -> dict[str, list[str]]:
        """What the engine still holds for this project (containers, networks, volumes)."""
        label = f"com.docker.compose.project={self.env['COMPOSE_PROJECT_NAME']}"
        client = self.engine.client
        return {
            "containers": [
                c.name for c in client.containers.list(all=True, filters={"label": label})
            ],
            "networks": [n.name for n in client.networks.list(filters={"label": label})],
            "volumes": [v.name for v in client.volumes.list(filters={"label": label})],
        }


def write_env(directory: Path) -> dict[str, str]:
    """.env from .env.example, filled in as the README says, on free ports, with the `auth`
    profile and the companion wired to the API, and the `lb` profile: HAProxy in front of two
    API replicas, each on a free port of its own (API_PORT empty)."""
    auth_port = free_port()
    settings = {
        "POSTGRES_PASSWORD": secrets.token_hex(24),
        "BETTER_AUTH_SECRET": secrets.token_hex(32),
        "METRICS_TOKEN": secrets.token_hex(32),
        "API_PORT": "",
        "API_REPLICAS": "2",
        "LB_PORT": str(free_port()),
        "LB_STATS_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
        "AUTH_PORT": str(auth_port),
        "COMPOSE_PROFILES": "auth,lb",
        "BETTER_AUTH_URL": f"http://localhost:{auth_port}",
        "BETTER_AUTH_JWKS_URL": "http://better-auth:3001/api/auth/jwks",
        "CORS_ORIGINS": f"http://localhost:{auth_port}",
    }
    lines = []
    for line in (directory / ".env.example").read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={settings[name]}" if name in settings and "=" in line else line)
    present = {line.split("=", 1)[0] for line in lines if "=" in line}
    lines += [f"{name}={value}" for name, value in settings.items() if name not in present]
    (directory / ".env").write_text("\n".join(lines) + "\n")
    return settings


@pytest.fixture(scope="module")
def stack(container_engine: Engine, images: Images, repo_copy: Path) -> Iterator[Stack]:
    env = dict(container_engine.env, COMPOSE_PROJECT_NAME=f"todo-ct-{uuid.uuid4().hex[:8]}")
    running = Stack(
        compose_command(container_engine), env, repo_copy, write_env(repo_copy), container_engine
    )
    try:
        running.up()
        yield running
    finally:
        running("down", "--volumes", "--remove-orphans", check=False, timeout=300)
        (repo_copy / ".env").unlink(missing_ok=True)


def readme_token(stack: Stack, user: str) -> str:
    return stack("exec", "-T", "api", "todo-api", "token", user).strip()


class TestDefaultStack:
    def test_migrate_exits_0_and_the_api_becomes_healthy_through_its_healthcheck(
        self, stack: Stack
    ) -> None:
        by_service = {c["Service"]: c for c in stack.containers()}
        assert by_service["migrate"]["State"] == "exited"
        assert by_service["migrate"]["ExitCode"] == 0
        assert by_service["api"]["Health"] == "healthy"
        assert httpx.get(f"{stack.api}/readyz").json() == {"status": "ok"}

    def test_a_missing_optional_image_does_not_block_the_stack(
        self, stack: Stack, container_engine: Engine
    ) -> None:
        # Grafana is behind its profile: the stack came up without it (and here without its image).
        services = {c["Service"] for c in stack.containers()}
        assert {"postgres", "migrate", "api", "prometheus", "better-auth"} <= services
        assert "grafana" not in services

    def test_the_readme_token_and_curl_round_trip(self, stack: Stack) -> None:
        headers = {"Authorization": f"Bearer {readme_token(stack, 'alice')}"}
        created = httpx.post(f"{stack.api}/api/alice/tasks", json={"title": "ci"}, headers=headers)
        assert created.status_code == 201, created.text
        listed = httpx.get(f"{stack.api}/api/alice/tasks", headers=headers).json()
        assert [task["title"] for task in listed] == ["ci"]

    def test_metrics_answer_only_with_the_metrics_token(self, stack: Stack) -> None:
        url = f"{stack.api}/metrics"
        assert httpx.get(url).status_code == 401
        token = stack.settings["METRICS_TOKEN"]
        answered = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert answered.status_code == 200 and "http_requests" in answered.text

    def test_prometheus_scrapes_every_replica(self, stack: Stack) -> None:
        """Each replica is a target of its own (with API_REPLICAS=2 in .env): one target for
        the service name would see whichever replica answered each scrape."""
        replicas = [c["Service"] for c in stack.containers()].count("api")
        assert replicas == 2
        url = f"http://127.0.0.1:{stack.settings['PROMETHEUS_PORT']}/api/v1/targets"
        health: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with httpx.Client() as client:
                targets = client.get(url).json()["data"]["activeTargets"]
            health = [t["health"] for t in targets if t["labels"]["job"] == "todo-api"]
            if health == ["up"] * replicas:
                return
            time.sleep(2)
        raise AssertionError(f"Prometheus reports the API targets {health!r}")

    def test_the_containers_run_unprivileged_on_a_read_only_root(
        self, stack: Stack, container_engine: Engine
    ) -> None:
        api = next(c for c in stack.containers() if c["Service"] == "api")
        inspected = container_engine.client.api.inspect_container(api["ID"])
        assert inspected["Config"]["User"] == "10001:10001"
        assert inspected["HostConfig"]["ReadonlyRootfs"] is True
        status = stack("exec", "-T", "api", "cat", "/proc/1/status")
        assert "CapEff:\t0000000000000000" in status


class TestAuthProfile:
    def test_sign_up_through_the_companion_then_crud_with_its_jwt(self, stack: Stack) -> None:
        stack.wait_healthy("better-auth")
        with httpx.Client() as browser:
            signed_up = browser.post(
                f"{stack.companion}/api/auth/sign-up/email",
                json={
                    "email": f"{uuid.uuid4().hex[:8]}@example.com",
                    "password": PASSWORD,
                    "name": "C",
                },
                headers={"Origin": stack.companion},
            )
            assert signed_up.status_code == 200, signed_up.text
            user = signed_up.json()["user"]["id"]
            token = browser.get(f"{stack.companion}/api/auth/token").json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        created = httpx.post(
            f"{stack.api}/api/{user}/tasks", json={"title": "jwt"}, headers=headers
        )
        assert created.status_code == 201, created.text
        listed = httpx.get(f"{stack.api}/api/{user}/tasks", headers=headers).json()
        assert [task["title"] for task in listed] == ["jwt"]
        # Another user's path with this token: refused.
        assert httpx.get(f"{stack.api}/api/alice/tasks", headers=headers).status_code == 403

    def test_cors_preflight_from_the_companions_origin(self, stack: Stack) -> None:
        preflight = httpx.options(
            f"{stack.api}/api/alice/tasks",
            headers={
                "Origin": stack.companion,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == stack.companion


def haproxy_stats(stack: Stack) -> list[dict[str, str]]:
    """HAProxy's /stats;csv, one row per frontend, backend and server."""
    url = f"http://127.0.0.1:{stack.settings['LB_STATS_PORT']}/stats;csv"
    return list(csv.DictReader(httpx.get(url).text.removeprefix("# ").splitlines()))


def replica_states(stack: Stack) -> dict[str, str]:
    """HAProxy's view of the `replicas` backend: server name -> status, for the slots that
    hold an address (an empty slot of server-template is in MAINT)."""
    return {
        row["svname"]: row["status"]
        for row in haproxy_stats(stack)
        if row["pxname"] == "replicas"
        and row["svname"] not in {"FRONTEND", "BACKEND"}
        and not row["status"].startswith("MAINT")
    }


def wait_replicas_up(stack: Stack, count: int, timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            states = replica_states(stack)
            if list(states.values()).count("UP") == count:
                return states
        time.sleep(0.5)
    raise AssertionError(f"HAProxy does not see {count} replicas UP: {states}\n{stack.logs()}")


class TestLoadBalancerProfile:
    def test_haproxy_finds_both_replicas_by_dns_and_checks_them_up(self, stack: Stack) -> None:
        replicas = [c for c in stack.containers() if c["Service"] == "api"]
        assert len(replicas) == 2
        states = wait_replicas_up(stack, 2)
        assert list(states.values()) == ["UP", "UP"], states
        # Only the backend LB_BACKEND names: the other one's servers would be checked for nothing.
        assert {row["pxname"] for row in haproxy_stats(stack)} == {"api", "replicas", "stats"}

    def test_a_token_and_task_round_trip_through_haproxy(self, stack: Stack) -> None:
        wait_replicas_up(stack, 2)
        headers = {"Authorization": f"Bearer {readme_token(stack, 'carol')}"}
        with httpx.Client(base_url=stack.balancer, headers=headers) as client:
            created = client.post("/api/carol/tasks", json={"title": "balanced"})
            assert created.status_code == 201, created.text
            # Several reads: leastconn spreads them, and every replica sees the same database.
            for _ in range(4):
                listed = client.get("/api/carol/tasks")
                assert [task["title"] for task in listed.json()] == ["balanced"]

    def test_haproxy_runs_unprivileged_on_a_read_only_root(
        self, stack: Stack, container_engine: Engine
    ) -> None:
        haproxy = next(c for c in stack.containers() if c["Service"] == "haproxy")
        inspected = container_engine.client.api.inspect_container(haproxy["ID"])
        assert inspected["HostConfig"]["ReadonlyRootfs"] is True
        status = stack("exec", "-T", "haproxy", "cat", "/proc/1/status")
        assert "CapEff:\t0000000000000000" in status
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        assert uid != "0", status

    def test_a_stopped_replica_drains_while_requests_through_haproxy_succeed(
        self, stack: Stack, container_engine: Engine
    ) -> None:
        """`docker stop` of one replica, as a release does: SIGTERM, /readyz 503 during the
        drain, HAProxy takes it out, and no request through HAProxy fails meanwhile."""
        wait_replicas_up(stack, 2)
        second = f"http://{stack.published('api', 8000, index=2)}"
        replica = next(
            c for c in stack.containers() if c["Service"] == "api" and str(c["Name"]).endswith("-2")
        )
        headers = {"Authorization": f"Bearer {readme_token(stack, 'dave')}"}
        stopped = threading.Event()

        def stop() -> None:
            container_engine.client.containers.get(str(replica["ID"])).stop(timeout=30)
            stopped.set()

        started = time.monotonic()
        stopper = threading.Thread(target=stop)
        stopper.start()
        answers: list[int] = []
        draining: set[int] = set()
        with httpx.Client(base_url=stack.balancer, headers=headers) as client:
            while not stopped.is_set() and time.monotonic() - started < 40:
                answers.append(client.get("/api/dave/tasks").status_code)
                with contextlib.suppress(httpx.HTTPError):
                    draining.add(httpx.get(f"{second}/readyz", timeout=1).status_code)
                time.sleep(0.05)
            stopper.join()
            elapsed = time.monotonic() - started
            after = [client.get("/api/dave/tasks").status_code for _ in range(5)]
        assert 503 in draining, f"the replica never answered /readyz with 503: {draining}"
        assert elapsed >= 4, f"stopped in {elapsed:.1f}s: no drain (SHUTDOWN_DRAIN_SECONDS 5)"
        assert answers and set(answers) == {200}, answers
        assert after == [200] * 5
        inspected = container_engine.client.api.inspect_container(str(replica["ID"]))
        assert inspected["State"]["ExitCode"] == 0, inspected["State"]
        assert list(replica_states(stack).values()).count("UP") == 1
        print(f"drain: {len(answers)} requests through HAProxy in {elapsed:.1f}s, all 200")


class TestLifecycle:
    def test_data_survives_down_and_up_and_down_v_leaves_nothing(self, stack: Stack) -> None:
        headers = {"Authorization": f"Bearer {readme_token(stack, 'bob')}"}
        created = httpx.post(f"{stack.api}/api/bob/tasks", json={"title": "kept"}, headers=headers)
        assert created.status_code == 201
        # `down` as the README says: with the profile chosen in .env, the companion goes too.
        stack("down", timeout=300)
        left = stack.project_objects()
        assert left["containers"] == [] and left["networks"] == [], left
        assert left["volumes"], "down without -v keeps the volumes"
        stack.up()
        # API_REPLICAS in .env: a later `up` keeps both replicas (a one-off --scale would not).
        assert [c["Service"] for c in stack.containers()].count("api") == 2
        listed = httpx.get(f"{stack.api}/api/bob/tasks", headers=headers).json()
        assert [task["title"] for task in listed] == ["kept"]
        stack("down", "--volumes", timeout=300)
        assert stack.project_objects() == {"containers": [], "networks": [], "volumes": []}


def workflow_step(name: str) -> str:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    return str(next(step["run"] for step in steps if step.get("name") == name))


def test_the_workflows_env_makes_a_valid_compose_config(
    container_engine: Engine, tmp_path: Path
) -> None:
    """The workflow's .env, written by its own lines, and `docker compose config -q` on it."""
    script = workflow_step("Start the compose stack")
    writes_env = script[: script.index("> .env") + len("> .env")]
    shutil.copy(REPO / "docker-compose.yml", tmp_path)
    subprocess.run(["bash", "-euo", "pipefail", "-c", writes_env], cwd=tmp_path, check=True)
    assert "POSTGRES_PASSWORD=" in (tmp_path / ".env").read_text()
    config = subprocess.run(
        [*compose_command(container_engine), "config", "-q"],
        cwd=tmp_path,
        env=container_engine.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stderr


def test_the_test_image_passes_its_suite_with_nothing_skipped(
    container_engine: Engine, images: Images, repo_copy: Path
) -> None:
    """docker-compose.test.yml as the README runs it: the image's suite, green, no skip."""
    compose = [*compose_command(container_engine), "-f", "docker-compose.test.yml"]
    env = dict(container_engine.env, COMPOSE_PROJECT_NAME=f"todo-ct-test-{uuid.uuid4().hex[:8]}")
    try:
        done = subprocess.run(
            [*compose, "run", "tests"],
            cwd=repo_copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    finally:
        subprocess.run(
            [*compose, "down", "-v", "--remove-orphans"],
            cwd=repo_copy,
            env=env,
            capture_output=True,
            timeout=300,
        )
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else done.stderr[-2000:]
    # The summary as well as the exit code: `compose run --rm` through podman 4.3's Docker API
    # exits 0 for a suite that failed (hence no --rm in the README's command either).
    failures = "\n".join(line for line in lines if line.startswith(("FAILED", "ERROR")))
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in summary, summary
    assert not {"failed", "error", "skipped"} & set(summary.replace(",", " ").split()), (
        f"{summary}\n{failures}\n{done.stdout[-6000:]}"
    )
    print(f"test image: {summary}")
