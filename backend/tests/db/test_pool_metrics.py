"""todo_db_pool_connections_in_use on a real PostgreSQL, held and through an outage: the
dashboard's pool panel and the pool saturation alert read it."""

import threading
import time

import httpx
import sqlalchemy as sa

from tests.support import PostgresServer, auth, running_app, settings_for
from tests.support.outage import database_outage
from todo_api.db import normalise_url


def connections_in_use(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("todo_db_pool_connections_in_use "):
            return float(line.split()[1])
    raise AssertionError("todo_db_pool_connections_in_use is not exported")


def test_a_request_waiting_on_the_database_counts_as_one_connection_in_use(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database()
    engine = sa.create_engine(normalise_url(url))
    try:
        with running_app(settings_for(url)) as client:
            headers = auth("alice")
            task = client.post("/api/alice/tasks", json={"title": "t"}, headers=headers).json()
            assert connections_in_use(client) == 0
            # A row lock held here makes the update wait inside the server, on its connection.
            with engine.connect() as blocker:
                blocker.execute(
                    sa.text("SELECT id FROM tasks WHERE id = :id FOR UPDATE"), {"id": task["id"]}
                )
                update = threading.Thread(
                    target=client.put,
                    args=(f"/api/alice/tasks/{task['id']}",),
                    kwargs={"json": {"title": "u"}, "headers": headers},
                )
                update.start()
                deadline = time.monotonic() + 10
                while connections_in_use(client) != 1:
                    assert time.monotonic() < deadline, "the waiting update was not counted"
                    time.sleep(0.05)
                blocker.rollback()
            update.join(timeout=30)
            assert connections_in_use(client) == 0
    finally:
        engine.dispose()
        postgres.drop_database(url)


def test_connections_in_use_return_to_zero_after_a_database_outage(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database()
    try:
        with running_app(settings_for(url)) as client:
            headers = auth("alice")
            tasks = "/api/alice/tasks"
            assert client.post(tasks, json={"title": "t"}, headers=headers).status_code == 201
            with database_outage(postgres, url):
                # Each request finds its pooled connection cut, or cannot open a new one.
                for _ in range(5):
                    assert client.get(tasks, headers=headers).status_code == 503
            deadline = time.monotonic() + 10
            while client.get(tasks, headers=headers).status_code != 200:
                assert time.monotonic() < deadline, "the API did not recover"
                time.sleep(0.1)
            assert connections_in_use(client) == 0
    finally:
        postgres.drop_database(url)
