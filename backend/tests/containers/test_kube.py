"""deploy/k8s run by `podman kube play`: the kustomize output (or, without kubectl, the files the
kustomization lists) with the image set to the one built here, a real Secret, and a throwaway
PostgreSQL on the same network. What kube play does not run (the Service, HPA, PDB,
ServiceAccount; a Job as such) is left out; the Job's pod template is played as a Pod."""

import base64
import json
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from tests.support import hs256, missing
from tests.support.container_engine import REPO, Engine, Images, checked
from todo_api.db import normalise_url

pytestmark = [pytest.mark.container, pytest.mark.slow]

K8S = REPO / "deploy" / "k8s"
SECRET_NAME = "todo-api-secrets"


def manifests() -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/k8s`, else the kustomization's resources as they are."""
    if shutil.which("kubectl"):
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True
        ).stdout
        return [doc for doc in yaml.safe_load_all(rendered) if doc]
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    return [doc for name in listed for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(doc for doc in docs if doc["kind"] == kind)


def with_image(template: dict[str, Any], image: str) -> dict[str, Any]:
    """What `kustomize edit set image todo-api=...` does, for this run's image."""
    for container in template["spec"]["containers"]:
        container["image"] = image
        container["imagePullPolicy"] = "Never"
    return template


@pytest.fixture(scope="module")
def podman(container_engine: Engine) -> list[str]:
    if container_engine.kind != "podman":
        missing("kube tests: `podman kube play` needs the podman engine")
    return container_engine.podman


class Kube:
    """Runs podman with our settings; collects what to take down."""

    def __init__(self, engine: Engine, podman: list[str], scratch: Path) -> None:
        self.engine, self.podman, self.scratch = engine, podman, scratch
        self.played: list[Path] = []

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        return checked([*self.podman, *args], self.engine.env, timeout=timeout, check=check)

    def play(self, name: str, doc: dict[str, Any], configmap: Path) -> None:
        path = self.scratch / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        self.played.append(path)
        self("kube", "play", "--configmap", str(configmap), str(path))

    def pod_ip(self, pod: str) -> str:
        infra = json.loads(self("pod", "inspect", pod))
        infra = infra[0] if isinstance(infra, list) else infra
        inspected = json.loads(self("inspect", infra["InfraContainerID"]))[0]
        networks = inspected["NetworkSettings"]["Networks"]
        return str(next(iter(networks.values()))["IPAddress"])

    def down(self) -> None:
        for path in reversed(self.played):
            self("kube", "down", str(path), check=False)


@dataclass
class Played:
    kube: Kube
    api_container: str
    api_url: str
    secret: str
    deployment: dict[str, Any]
    migration_exit_code: str
    migration_log: str
    database_url: str


def wait_for(check: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as error:
            last = error
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout}s (last: {last!r})")


@pytest.fixture(scope="module")
def played(
    container_engine: Engine,
    podman: list[str],
    images: Images,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Played]:
    kube = Kube(container_engine, podman, tmp_path_factory.mktemp("kube"))
    docs = manifests()
    configmap = kube.scratch / "configmap.yaml"
    configmap.write_text(yaml.safe_dump(of_kind(docs, "ConfigMap")))
    image = f"localhost/{images.runtime}"
    password = secrets.token_hex(16)
    database = container_engine.client.containers.run(
        "postgres:17-alpine",
        detach=True,
        name=f"kube-postgres-{uuid.uuid4().hex[:8]}",
        environment={"POSTGRES_USER": "todo", "POSTGRES_PASSWORD": password, "POSTGRES_DB": "todo"},
    )
    secret_file = kube.scratch / "secret.json"
    try:
        database.reload()
        host = next(iter(database.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        url = f"postgresql://todo:{password}@{host}:5432/todo"
        check = sa.create_engine(normalise_url(url))
        wait_for(lambda: check.connect().close() is None, "PostgreSQL answers")
        check.dispose()
        # podman 4.3's kube play reads secretKeyRef from a podman secret holding a JSON map of
        # base64 values (not from a `kind: Secret` document).
        values = {
            "DATABASE_URL": url,
            "DATABASE_URL_DIRECT": url,
            "BETTER_AUTH_SECRET": secrets.token_hex(32),
            "METRICS_TOKEN": secrets.token_hex(16),
        }
        encoded = {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}
        secret_file.write_text(json.dumps(encoded))
        kube("secret", "rm", SECRET_NAME, check=False)
        kube("secret", "create", SECRET_NAME, str(secret_file))

        job = of_kind(docs, "Job")
        job_pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": job["metadata"]["name"],
                "labels": job["spec"]["template"]["metadata"]["labels"],
            },
            "spec": job["spec"]["template"]["spec"],
        }
        kube.play("migration-job", with_image(job_pod, image), configmap)
        migrate = f"{job['metadata']['name']}-{job_pod['spec']['containers'][0]['name']}"
        wait_for(
            lambda: kube("inspect", "--format", "{{.State.Status}}", migrate).strip() == "exited",
            "the migration pod completes",
            timeout=120,
        )
        migrated = kube("inspect", "--format", "{{.State.ExitCode}}", migrate).strip()
        migrate_log = kube("logs", migrate, check=False)

        deployment = of_kind(docs, "Deployment")
        deployment["spec"]["template"] = with_image(deployment["spec"]["template"], image)
        kube.play("deployment", deployment, configmap)
        pod = f"{deployment['metadata']['name']}-pod-0"
        container = f"{pod}-{deployment['spec']['template']['spec']['containers'][0]['name']}"
        port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        api_url = f"http://{kube.pod_ip(pod)}:{port}"
        yield Played(
            kube,
            container,
            api_url,
            values["BETTER_AUTH_SECRET"],
            deployment,
            migrated,
            migrate_log,
            url,
        )
    finally:
        kube.down()
        kube("secret", "rm", SECRET_NAME, check=False)
        database.remove(force=True, v=True)


def test_the_migration_jobs_pod_completes(played: Played) -> None:
    assert played.migration_exit_code == "0", played.migration_log
    database = sa.create_engine(normalise_url(played.database_url))
    with database.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    database.dispose()
    assert version


def test_the_pod_becomes_ready_by_its_probes(played: Played) -> None:
    spec = played.deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = spec[probe]["httpGet"]["path"]
        wait_for(
            lambda path=path: httpx.get(f"{played.api_url}{path}", timeout=3).status_code == 200,
            f"{probe} {path} answers 200",
        )
    # kube play carries the liveness probe over as the container's healthcheck, as a `curl`
    # command inside the container: our image has no curl, so under podman it would report
    # unhealthy; the probes' own requests above are what a kubelet sends.
    inspected = json.loads(played.kube("inspect", played.api_container))[0]
    check = " ".join(inspected["Config"]["Healthcheck"]["Test"])
    assert spec["livenessProbe"]["httpGet"]["path"] in check, check


def test_the_security_context_holds(played: Played) -> None:
    inspected = json.loads(played.kube("inspect", played.api_container))[0]
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    status = played.kube("exec", played.api_container, "cat", "/proc/1/status")
    assert "CapEff:\t0000000000000000" in status
    ids = played.kube("exec", played.api_container, "id", "-u").strip()
    assert ids == "10001"
    touched = subprocess.run(
        [*played.kube.podman, "exec", played.api_container, "touch", "/app/x"],
        env=played.kube.engine.env,
        capture_output=True,
        text=True,
    )
    assert touched.returncode != 0 and "Read-only file system" in touched.stderr


def test_the_api_answers_through_the_pods_port(played: Played) -> None:
    headers = {"Authorization": f"Bearer {hs256('alice', secret=played.secret)}"}
    tasks = f"{played.api_url}/api/alice/tasks"
    created = httpx.post(tasks, json={"title": "kube"}, headers=headers)
    assert created.status_code == 201, created.text
    assert [task["title"] for task in httpx.get(tasks, headers=headers).json()] == ["kube"]
