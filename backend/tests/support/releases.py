"""Another release of this repository, for the migration tests: taken from the repository's own
git history, unpacked into a temporary directory, and its API tests run against a database that
a newer tree's migrations built (tests/support/head_schema_plugin.py)."""

import io
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from alembic.script import ScriptDirectory

from tests.support import BACKEND, REPO, missing
from todo_api.migrate import alembic_config

PLUGIN = Path(__file__).with_name("head_schema_plugin.py")


def git(*args: str) -> str:
    return git_bytes(*args).decode().strip()


def git_bytes(*args: str) -> bytes:
    # A checkout owned by another user (a CI container) is still this repository.
    command = ["git", "-c", f"safe.directory={REPO}", *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.stdout


def head_migration() -> tuple[str, str | None, Path]:
    """The newest migration of this tree: (revision, the revision it revises, its file)."""
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_revision(script.get_current_head())
    assert head is not None and isinstance(head.down_revision, str | None)
    return head.revision, head.down_revision, Path(head.path)


def previous_release() -> str:
    """The commit before the newest migration arrived: the code that still serves while a
    release applies that migration. HEAD itself when the newest migration is not committed yet.
    """
    if shutil.which("git") is None or not (REPO / ".git").exists():
        missing("the migration tests need this repository's git history (a git checkout)")
    _, _, path = head_migration()
    added = git("log", "--diff-filter=A", "--format=%H", "--", str(path.relative_to(REPO)))
    if not added:
        return git("rev-parse", "HEAD")
    commit = added.splitlines()[-1]
    try:
        return git("rev-parse", "--verify", f"{commit}^")
    except RuntimeError:
        shallow = git("rev-parse", "--is-shallow-repository") == "true"
        raise AssertionError(
            f"the commit before {commit[:12]} (which added {path.name}) is not in this clone"
            + (
                ": it is shallow; clone with full history (git fetch --unshallow, or "
                "actions/checkout with fetch-depth: 0)"
                if shallow
                else ""
            )
        ) from None


@dataclass
class Release:
    commit: str
    backend: Path  # its backend/ directory
    python: str  # an interpreter with its locked dependencies


def unpack(commit: str, directory: Path) -> Release:
    """backend/ as it was at `commit`, with an interpreter for it: this virtualenv when its
    uv.lock is the same as this tree's (the usual case), else a new one synced from its lock."""
    archive = git_bytes("archive", "--format=tar", commit, "backend")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    backend = directory / "backend"
    python = sys.executable
    if (backend / "uv.lock").read_bytes() != (BACKEND / "uv.lock").read_bytes():
        python = _own_virtualenv(backend)
    return Release(commit, backend, python)


def _own_virtualenv(backend: Path) -> str:
    uv = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    if not os.access(uv, os.X_OK):
        missing("the previous release locks other dependencies and no uv is here to install them")
    environment = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(backend / ".venv")}
    environment["UV_PYTHON_DOWNLOADS"] = "never"
    subprocess.run(
        [uv, "sync", "--frozen", "--quiet"], cwd=backend, env=environment, check=True, timeout=600
    )
    return str(backend / ".venv" / "bin" / "python")


def run_api_tests(
    release: Release, schema_backend: Path, admin_url: str, plugin_dir: Path
) -> subprocess.CompletedProcess[str]:
    """`release`'s own tests/**/test_tasks_api.py, PostgreSQL only, on databases built by the
    migrations in `schema_backend` (this tree's, or a copy with an extra migration)."""
    (tests,) = sorted(release.backend.glob("tests/**/test_tasks_api.py"))
    plugin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGIN, plugin_dir / "head_schema_plugin.py")
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{plugin_dir}{os.pathsep}{release.backend}",
        "TEST_DATABASE_URL": admin_url,
        # A missing PostgreSQL fails rather than skips: CI=true now, REQUIRE_POSTGRES=1 in
        # releases before the suite had one switch for every component.
        "CI": "true",
        "REQUIRE_POSTGRES": "1",
        "MIGRATE_ON_START": "false",
        "HEAD_SCHEMA_BACKEND": str(schema_backend),
        "HEAD_SCHEMA_PYTHON": sys.executable,
    }
    plugins = ["-p", "head_schema_plugin", "-p", "no:cacheprovider"]
    selection = ["-q", "-x", "-k", "postgresql", str(tests.relative_to(release.backend))]
    return subprocess.run(
        [release.python, "-m", "pytest", *plugins, *selection],
        cwd=release.backend,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_with_migration(directory: Path, name: str, source: str) -> Path:
    """This tree's backend/todo_api in `directory`, with one more migration file."""
    backend = directory / "backend"
    shutil.copytree(
        BACKEND / "todo_api", backend / "todo_api", ignore=shutil.ignore_patterns("__pycache__")
    )
    (backend / "todo_api" / "migrations" / "versions" / name).write_text(source)
    return backend
