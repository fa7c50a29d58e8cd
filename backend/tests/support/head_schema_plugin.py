"""A pytest plugin for another release's test run (tests/db/test_migration_compat.py): every
database that run's tests create is first migrated by the migrations of HEAD_SCHEMA_BACKEND (a
newer tree), with HEAD_SCHEMA_PYTHON, so that the release's code meets the newer schema; its own
start-up migration is off (MIGRATE_ON_START=false in the run's environment).

Copied as a top-level module next to the run (its `tests` package is the release's own): it
may only use what every release's tests/support has, PostgresServer.create_database.
"""

import os
import subprocess
from typing import Any


def pytest_sessionstart(session: Any) -> None:
    from tests import support  # the release's own helpers

    create = support.PostgresServer.create_database
    as_app_role = getattr(support, "as_app_role", lambda url: url)

    def create_database(self: Any) -> str:
        url = create(self)
        backend = os.environ["HEAD_SCHEMA_BACKEND"]
        env = {**os.environ, "PYTHONPATH": backend, "DATABASE_URL": as_app_role(url)}
        env.pop("DATABASE_URL_DIRECT", None)
        migrated = subprocess.run(
            [os.environ["HEAD_SCHEMA_PYTHON"], "-m", "todo_api.cli", "migrate"],
            cwd=backend,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"head migrations failed:\n{migrated.stdout}{migrated.stderr}")
        return url

    support.PostgresServer.create_database = create_database
