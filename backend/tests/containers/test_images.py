"""The images, built by a real engine from the repository's Dockerfiles unchanged: who they run
as, a read-only root, the HEALTHCHECK, and what a code-only change costs to rebuild."""

import json
import shutil
from pathlib import Path

import pytest

from tests.support.container_engine import Engine, Images, settle_times

pytestmark = [pytest.mark.container, pytest.mark.slow]

READ_ONLY = {
    "read_only": True,
    "tmpfs": {"/tmp": "size=16m,mode=1777"},
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
}


def run(engine: Engine, image: str, command: list[str], **options: object) -> str:
    output = engine.client.containers.run(image, command, remove=True, **options)
    return output.decode().strip()


def test_runtime_image_runs_as_uid_10001_with_a_read_only_root(
    container_engine: Engine, images: Images
) -> None:
    config = container_engine.client.api.inspect_image(images.runtime)["Config"]
    assert config["User"] == "10001:10001"
    probe = (
        "import os, pathlib\n"
        "print(os.getuid(), os.getgid())\n"
        "try:\n    pathlib.Path('/app/x').write_text('x')\n"
        "except OSError as e:\n    print(e.errno)\n"
        "pathlib.Path('/tmp/x').write_text('x')\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0])\n"
        "import todo_api.main\nprint('imports')\n"
    )
    lines = run(container_engine, images.runtime, ["python", "-c", probe], **READ_ONLY).splitlines()
    # uid 10001, /app refuses a write (EROFS = 30), /tmp takes one, no capabilities, the app loads.
    assert lines == ["10001 10001", "30", "0000000000000000", "imports"]


@pytest.mark.parametrize("which", ["runtime", "companion"])
def test_the_image_keeps_its_healthcheck(
    container_engine: Engine, images: Images, which: str
) -> None:
    # The CLI's inspect: podman 4.3's Docker API leaves Healthcheck out of an image's Config.
    raw = container_engine.run(
        "image", "inspect", "--format", "{{json .Config.Healthcheck}}", getattr(images, which)
    )
    check = json.loads(raw) or {}
    path = "/livez" if which == "runtime" else "/healthz"
    assert check.get("Test", [None])[0] == "CMD" and path in " ".join(check["Test"])
    assert check.get("Interval", 0) > 0


def test_the_companion_runs_as_uid_10002_with_a_read_only_root(
    container_engine: Engine, images: Images
) -> None:
    script = (
        "console.log(process.getuid());"
        "require('fs').writeFile('/app/x', '', (e) => console.log(e.code))"
    )
    lines = run(
        container_engine, images.companion, ["node", "-e", script], **READ_ONLY
    ).splitlines()
    assert lines == ["10002", "EROFS"]


def test_a_code_only_change_rebuilds_one_small_layer(
    container_engine: Engine, images: Images, repo_copy: Path, tmp_path: Path
) -> None:
    changed = shutil.copytree(repo_copy, tmp_path / "todo-api", symlinks=True)
    module = changed / "backend" / "todo_api" / "__init__.py"
    module.write_text(module.read_text() + "# a code-only change\n")
    settle_times(changed)
    container_engine.build(changed, "todo-api:code-change", target="runtime")
    before = container_engine.client.api.inspect_image(images.runtime)["RootFS"]["Layers"]
    after = container_engine.client.api.inspect_image("todo-api:code-change")["RootFS"]["Layers"]
    sizes = container_engine.layers("todo-api:code-change")
    shipped = run(
        container_engine,
        "todo-api:code-change",
        ["python", "-c", "import todo_api; print(open(todo_api.__file__).read().splitlines()[-1])"],
    )
    container_engine.client.images.remove("todo-api:code-change", noprune=False)
    # Every layer but the last is the same layer: the base, the user, the 100 MB virtualenv.
    assert after[:-1] == before[:-1] and after[-1] != before[-1]
    assert shipped == "# a code-only change"
    data_layers = [size for _, size in sizes if size > 0]
    assert max(data_layers) > 50_000_000, sizes  # the dependency layer, reused
    assert data_layers[-1] < 1_000_000, sizes
    print(f"dependency layer {max(data_layers)} bytes, rebuilt layer {data_layers[-1]} bytes")
