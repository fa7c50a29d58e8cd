"""Readers for the deployment files (Dockerfile, compose, Kubernetes, Fly), shared by the tests."""

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO

BIN = Path(sys.executable).parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_TEST = REPO / "docker-compose.test.yml"
ENV_EXAMPLE = REPO / ".env.example"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
K8S = REPO / "deploy" / "k8s"
SERVICEMONITOR = K8S / "servicemonitor"
FLY = REPO / "deploy" / "fly" / "fly.toml"
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"

# The oldest Kubernetes the manifests support (the preStop `sleep` action is on by default from
# 1.30), and the newest schema kubernetes-validate ships (its default).
K8S_VERSIONS = ["1.30.0", None]
# Neon's max_connections at 0.25 CU (README: pool sizing); the base must fit the smallest compute.
NEON_MAX_CONNECTIONS = 104
# Compose `${NAME}`, `${NAME:-default}`, `${NAME:?message}`; `$${...}` is a literal dollar.
COMPOSE_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def run_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    tool = BIN / name
    if not tool.exists():
        pytest.fail(f"{tool} is missing: run `uv sync` in backend/ (it is a dev dependency)")
    return subprocess.run(
        [str(tool), *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def strings(node: Any) -> list[str]:
    """Every string in a parsed YAML document (keys and values), comments excluded."""
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in strings(key) + strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


def seconds(value: int | str) -> float:
    """A duration as compose, Kubernetes or Fly write it: 30, "30", "30s", "1m30s", "500ms"."""
    if isinstance(value, int):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)?", value.strip())
    if not parts or "".join(n + (u or "") for n, u in parts) != value.strip():
        raise ValueError(f"not a duration: {value!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}
    return sum(float(number) * scale[unit] for number, unit in parts)


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The stages of a Dockerfile, each with its (KEYWORD, arguments) instructions in order."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit inside a continued instruction, as in Docker
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            words = [word for word in words if not word.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def parse_env(args: str) -> dict[str, str]:
    """`ENV A=1 B="two words"` (or the legacy `ENV A 1`) as a dict."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def stage_env(stages: list[Stage], stage: Stage) -> dict[str, str]:
    """The ENV a stage declares, after the ENV of the stages it is built FROM."""
    parents = {s.name: s for s in stages if s.name}
    env = stage_env(stages, parents[stage.base]) if stage.base in parents else {}
    for args in stage.all("ENV"):
        env.update(parse_env(args))
    return env


def runtime_stage() -> tuple[Stage, dict[str, str]]:
    """The image `docker build .` produces (the last stage), and its environment."""
    stages = dockerfile_stages()
    return stages[-1], stage_env(stages, stages[-1])


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def compose_services(path: Path = COMPOSE) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = load_yaml(path)["services"]
    return services


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment with compose defaults applied; required values become ''."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)

    def resolve(match: re.Match[str]) -> str:
        operator, default = match.group(2), match.group(3)
        return default if operator in (":-", "-") else ""

    return {key: COMPOSE_VARIABLE.sub(resolve, str(value)) for key, value in raw.items()}


def k8s_resources() -> list[Path]:
    return [K8S / name for name in load_yaml(K8S / "kustomization.yaml")["resources"]]


def k8s_objects() -> dict[str, dict[str, Any]]:
    """The base's objects by kind (each kind appears once in this base)."""
    objects: dict[str, dict[str, Any]] = {}
    for path in k8s_resources():
        for doc in load_documents(path):
            assert doc["kind"] not in objects, f"second {doc['kind']} in {path.name}"
            objects[doc["kind"]] = doc
    return objects


def pod_spec(kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = k8s_objects()[kind]["spec"]["template"]["spec"]
    return spec


def configmap() -> dict[str, str]:
    data: dict[str, str] = k8s_objects()["ConfigMap"]["data"]
    return data


def fly() -> dict[str, Any]:
    return tomllib.loads(FLY.read_text())


def secret_refs(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        for index, part in enumerate(pattern.split("/")):
            sep = "" if index == 0 else "/"
            if part == "**":
                regex += "(?:/.*)?" if index else "(?:.*/)?"
                continue
            chunk = re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            chunk = re.sub(r"\\\[(.*?)\\\]", lambda m: "[" + m.group(1) + "]", chunk)
            regex += ("" if regex.endswith("/)?") else sep) + chunk
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def dockerignored(relative: str) -> bool:
    """Whether .dockerignore keeps a path out of the context (a parent's match counts too)."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in dockerignore_patterns():
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


# --- Dockerfile -----------------------------------------------------------------------------------


def metrics_dir(service: dict[str, Any], image_env: dict[str, str]) -> str:
    """A compose service's PROMETHEUS_MULTIPROC_DIR: its own setting, else the image's."""
    own = (service.get("environment") or {}).get("PROMETHEUS_MULTIPROC_DIR")
    return str(own or image_env["PROMETHEUS_MULTIPROC_DIR"])


def compose_tmpfs(service: dict[str, Any]) -> dict[str, dict[str, str]]:
    """A service's tmpfs mounts, short (`/tmp:size=64m,mode=1777`) and long syntax alike, as
    {target: {option: value}} (a flag option such as `noexec` maps to '')."""
    mounts: dict[str, dict[str, str]] = {}
    short = service.get("tmpfs") or []
    for entry in [short] if isinstance(short, str) else short:
        target, _, options = entry.partition(":")
        mounts[target] = dict(option.partition("=")[::2] for option in options.split(",") if option)
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict) and volume.get("type") == "tmpfs":
            mounts[volume["target"]] = {k: str(v) for k, v in (volume.get("tmpfs") or {}).items()}
    return mounts


def writable_by(options: dict[str, str], uid: int, gid: int) -> bool:
    """Whether a tmpfs with these mount options is writable by uid:gid, by its explicit mode
    (what the engine does without one is what differs between engines and runc versions)."""
    if "mode" not in options:
        return False
    mode = int(options["mode"], 8)
    owner = int(options.get("uid", 0)), int(options.get("gid", 0))
    if owner[0] == uid and mode & 0o300 == 0o300:
        return True
    if owner[1] == gid and mode & 0o030 == 0o030:
        return True
    return mode & 0o003 == 0o003


def run_mount_options(args: str) -> list[dict[str, str]]:
    """The `--mount=` options of a RUN instruction, each as a dict."""
    return [
        dict(part.partition("=")[::2] for part in spec.split(","))
        for spec in re.findall(r"--mount=(\S+)", args)
    ]


def runtime_user() -> tuple[int, int]:
    stage, _ = runtime_stage()
    uid, _, gid = (stage.last("USER") or "").partition(":")
    return int(uid), int(gid or uid)
