"""The task routes' direct handler (todo_api/direct.py) answers exactly as FastAPI's own would.

Two real servers on the same PostgreSQL: the product, and the product with every task route
served by FastAPI's handler alone. Every request, valid or not, gets the same answer from both
(status, JSON body and headers, once the values a server makes up for itself are set aside).
"""

import copy
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from typing import Annotated, Any

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, Header
from fastapi.routing import APIRoute, request_response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from tests.support import as_app_role, auth, running_app, settings_for
from todo_api.main import create_app
from todo_api.work import Work, WorkRoute

USER = "direct-user"
HEADERS = auth(USER)
TASKS = f"/api/{USER}/tasks"
# What a server makes up for each answer, or the database for each row.
VARYING_HEADERS = {"date", "x-request-id", "etag", "location", "content-length"}
VARYING_FIELDS = {"id", "created_at", "updated_at"}


def fastapi_only(app: fastapi.FastAPI) -> fastapi.FastAPI:
    """`app` with every task route served by the handler FastAPI itself builds for it (on
    copies: the route objects are the task router's, shared by every app of the process)."""
    routes = app.router.routes
    replaced = 0
    for index, route in enumerate(routes):
        if isinstance(route, WorkRoute):
            routes[index] = copy.copy(route)
            routes[index].app = request_response(APIRoute.get_route_handler(route))
            replaced += 1
    assert replaced == 6
    return app


@pytest.fixture(scope="module")
def servers(pg_url: str) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    settings = settings_for(as_app_role(pg_url))
    with (
        running_app(settings) as product,
        running_app(settings, fastapi_only(create_app(settings))) as reference,
    ):
        yield product, reference


@pytest.fixture
def task_ids(servers: tuple[httpx.Client, httpx.Client]) -> list[int]:
    product, _ = servers
    created = [product.post(TASKS, json={"title": f"task {n}"}, headers=HEADERS) for n in range(3)]
    assert all(response.status_code == 201 for response in created)
    return [response.json()["id"] for response in created]


def answer(client: httpx.Client, request: httpx.Request) -> tuple[int, Any, dict[str, str]]:
    response = client.send(client.build_request(request.method, request.url, **_parts(request)))
    headers = {
        name: value for name, value in response.headers.items() if name not in VARYING_HEADERS
    }
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return response.status_code, _without_varying(body), headers


def _parts(request: httpx.Request) -> dict[str, Any]:
    return {"headers": dict(request.headers), "content": request.content}


def _without_varying(body: Any) -> Any:
    if isinstance(body, dict):
        return {key: value for key, value in body.items() if key not in VARYING_FIELDS}
    if isinstance(body, list):
        return [_without_varying(item) for item in body]
    return body


def same_answer(servers: tuple[httpx.Client, httpx.Client], request: httpx.Request) -> None:
    product, reference = servers
    expected = answer(product, request)
    # Sent twice to the product: a toggle flips the task back, so the reference server meets
    # the task as the product did.
    answer(product, request)
    assert expected == answer(reference, request), request


def build(method: str, url: str, content: bytes = b"", **headers: str) -> httpx.Request:
    return httpx.Request(method, url, content=content, headers={**HEADERS, **headers})


# Requests chosen at the edges of what each parameter accepts.
EDGES = [
    ("GET", TASKS, b"", {}),
    ("GET", TASKS + "?limit=2&offset=1&sort=title&order=asc&status=open", b"", {}),
    ("GET", TASKS + "?limit=2&limit=3", b"", {}),
    ("GET", TASKS + "?limit=", b"", {}),
    ("GET", TASKS + "?limit=0", b"", {}),
    ("GET", TASKS + "?limit=1.0", b"", {}),
    ("GET", TASKS + "?unknown=1&status=done", b"", {}),
    ("GET", TASKS + "?status=bogus&sort=bogus", b"", {}),
    ("GET", TASKS + "/{id}", b"", {}),
    ("GET", TASKS + "/0", b"", {}),
    ("GET", TASKS + "/+1", b"", {}),
    ("GET", TASKS + "/1_0", b"", {}),
    ("GET", TASKS + "/2147483648", b"", {}),
    ("GET", TASKS + "/abc", b"", {}),
    ("GET", TASKS + "/{id}", b'{"ignored": true}', {"content-type": "application/json"}),
    ("POST", TASKS, b'{"title": "a"}', {"content-type": "application/json"}),
    ("POST", TASKS, b'{"title": "a"}', {"content-type": "Application/JSON; charset=utf-8"}),
    ("POST", TASKS, b'{"title": "a"}', {"content-type": "application/merge-patch+json"}),
    ("POST", TASKS, b'{"title": "a"}', {"content-type": "text/plain"}),
    ("POST", TASKS, b'{"title": "a"}', {}),
    ("POST", TASKS, b"", {"content-type": "application/json"}),
    ("POST", TASKS, b"{", {"content-type": "application/json"}),
    ("POST", TASKS, b"\xff\xfe", {"content-type": "application/json"}),
    ("POST", TASKS, b"[" * 5000 + b"]" * 5000, {"content-type": "application/json"}),
    ("POST", TASKS, b'{"title": NaN}', {"content-type": "application/json"}),
    ("POST", TASKS, b'{"title": "a", "title": ""}', {"content-type": "application/json"}),
    ("POST", TASKS, b'{"title": "a", "extra": 1}', {"content-type": "application/json"}),
    ("POST", TASKS, b'"a"', {"content-type": "application/json"}),
    ("PUT", TASKS + "/{id}", b'{"description": null}', {"content-type": "application/json"}),
    ("PUT", TASKS + "/{id}", b"{}", {"content-type": "application/json"}),
    ("PUT", TASKS + "/{id}", b"", {"content-type": "application/json"}),
    ("PUT", TASKS + "/{id}", b'{"completed": "yes"}', {"content-type": "application/json"}),
    ("PUT", TASKS + "/0", b'{"title": "b"}', {"content-type": "application/json"}),
    ("PATCH", TASKS + "/{id}/complete", b"", {}),
    ("PATCH", TASKS + "/{id}/complete", b"null", {"content-type": "application/json"}),
    (
        "PATCH",
        TASKS + "/{id}/complete",
        b'{"completed": true}',
        {"content-type": "application/json"},
    ),
    ("PATCH", TASKS + "/{id}/complete", b'{"completed": 2}', {"content-type": "application/json"}),
    ("PATCH", TASKS + "/{id}/complete", b"true", {"content-type": "text/plain"}),
    ("DELETE", TASKS + "/2147483647", b"", {}),
    ("DELETE", TASKS + "/-1", b"", {}),
]


@pytest.mark.parametrize(("method", "url", "content", "headers"), EDGES)
def test_edges_answered_as_fastapi_does(servers, task_ids, method, url, content, headers):
    url = url.replace("{id}", str(task_ids[0]))
    same_answer(servers, build(method, url, content, **headers))


def test_other_users_and_missing_tokens_answered_as_fastapi_does(servers, task_ids):
    url = f"{TASKS}/{task_ids[0]}"
    for request in (
        httpx.Request("GET", url),
        httpx.Request("GET", url, headers=auth("someone-else")),
        httpx.Request("GET", url, headers={"authorization": "Bearer nonsense"}),
        httpx.Request("POST", TASKS, content=b"{", headers={"content-type": "application/json"}),
    ):
        same_answer(servers, request)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
# Bodies near the task models: their own keys with any JSON value, and any JSON at all.
model_bodies = st.dictionaries(
    st.sampled_from(["title", "description", "completed", "other"]), json_values, max_size=3
)
path_ids = st.one_of(
    st.integers(-3, 2**31 + 3).map(str),
    st.text(alphabet="0123456789+-_. a", min_size=1, max_size=6),
)
query_values = st.text(alphabet="0123456789-_.abcdeilmnoprstuvwxyz", max_size=8)
queries = st.lists(
    st.tuples(st.sampled_from(["status", "sort", "order", "limit", "offset", "x"]), query_values),
    max_size=4,
)


@pytest.mark.slow
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(["list", "create", "get", "update", "complete", "delete"]),
    task=path_ids,
    query=queries,
    body=st.one_of(model_bodies, json_values).map(json.dumps),
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", ""]),
)
def test_any_request_answered_as_fastapi_does(
    servers, task_ids, route, task, query, body, content_type
):
    # A delete of a real task only ever aims at one that does not exist, so that both servers
    # meet the same tasks.
    if route == "delete" and re.fullmatch(r"\d+", task) and 0 < int(task) < 2**31 - 1:
        task = "2147483647"
    method, path = {
        "list": ("GET", TASKS),
        "create": ("POST", TASKS),
        "get": ("GET", f"{TASKS}/{task}"),
        "update": ("PUT", f"{TASKS}/{task}"),
        "complete": ("PATCH", f"{TASKS}/{task}/complete"),
        "delete": ("DELETE", f"{TASKS}/{task}"),
    }[route]
    url = httpx.URL(path, params=query)
    headers = {"content-type": content_type} if content_type else {}
    same_answer(servers, build(method, str(url), body.encode(), **headers))


def test_a_body_cut_short_by_the_client_is_answered_as_fastapi_does(servers, caplog):
    """The client leaves while its body is arriving: FastAPI's answer (a 400 nobody reads),
    not the catch-all's 500 and its error log."""
    product, _ = servers
    head = (
        f"POST {TASKS} HTTP/1.1\r\nHost: test\r\nAuthorization: {HEADERS['Authorization']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    with caplog.at_level(logging.INFO, logger="todo_api"):
        address = (product.base_url.host, product.base_url.port)
        with socket.create_connection(address) as client:
            client.sendall(head.encode() + b'{"title"')
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while not (logged := [r for r in caplog.records if r.name == "todo_api.access"]):
            assert time.monotonic() < deadline, "the request was never logged"
            time.sleep(0.02)
    assert [getattr(record, "status", None) for record in logged] == [400]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_body_it_cannot_solve_is_parsed_once(servers, monkeypatch):
    """FastAPI's handler takes the body the direct one parsed: a second parse would cost twice,
    and run one call deeper (at the recursion limit, a body could parse once and not twice)."""
    product, _ = servers
    body = b'{"title": "", "parsed": "once"}'
    parses = []
    real = json.loads

    def counting(text: str | bytes, **kwargs: Any) -> Any:
        if text == body:
            parses.append(text)
        return real(text, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    headers = {**HEADERS, "content-type": "application/json"}
    response = product.post(TASKS, content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "title"]
    assert len(parses) == 1


def test_a_request_without_a_body_is_not_read(servers, task_ids, monkeypatch):
    """A PATCH /complete with no Content-Length nor Transfer-Encoding has no body (RFC 9112):
    the handler answers it without awaiting the empty message; one with a body is read."""
    product, _ = servers
    reads = []
    real = Request.body

    async def counting(request: Request) -> bytes:
        reads.append(request.url.path)
        return await real(request)

    monkeypatch.setattr(Request, "body", counting)
    complete = f"{TASKS}/{task_ids[1]}/complete"
    before = product.get(f"{TASKS}/{task_ids[1]}", headers=HEADERS).json()["completed"]
    flipped = product.patch(complete, headers=HEADERS)
    assert flipped.status_code == 200 and flipped.json()["completed"] is not before
    assert product.patch(complete, headers={**HEADERS, "content-length": "0"}).is_success
    assert reads == []
    assert product.patch(complete, json={"completed": True}, headers=HEADERS).json()["completed"]
    assert reads == [complete]


def test_valid_requests_skip_fastapis_solver(servers, task_ids, monkeypatch):
    """Each task route answers a valid request without FastAPI's parameter solver, and hands an
    invalid one to it."""
    product, _ = servers
    solved = []
    real = fastapi.routing.solve_dependencies

    async def counting(**kwargs: Any) -> Any:
        solved.append(kwargs["dependant"].call)
        return await real(**kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    task = f"{TASKS}/{task_ids[1]}"
    for method, url, body in (
        ("GET", TASKS + "?limit=5", None),
        ("POST", TASKS, {"title": "direct"}),
        ("GET", task, None),
        ("PUT", task, {"title": "direct again"}),
        ("PATCH", task + "/complete", None),
        ("PATCH", task + "/complete", {"completed": False}),
    ):
        response = product.request(method, url, json=body, headers=HEADERS)
        assert response.is_success, response.text
    created = product.post(TASKS, json={"title": "to delete"}, headers=HEADERS).json()["id"]
    assert product.delete(f"{TASKS}/{created}", headers=HEADERS).status_code == 204
    assert solved == []

    assert product.get(TASKS + "?limit=0", headers=HEADERS).status_code == 422
    assert len(solved) == 1


def test_a_route_it_cannot_solve_is_refused_when_declared():
    router = APIRouter(route_class=WorkRoute)

    with pytest.raises(TypeError, match="header parameters"):

        @router.get("/api/{user_id}/things")
        def things(work: Work, x_thing: Annotated[str, Header()]) -> None:
            raise AssertionError("never called")


def test_an_async_route_with_a_unit_of_work_is_refused_when_declared():
    """The direct handler runs the endpoint in the threadpool: WorkRoute takes only plain def."""
    router = APIRouter(route_class=WorkRoute)

    with pytest.raises(TypeError, match="plain def"):

        @router.get("/api/{user_id}/things")
        async def things(work: Work) -> None:
            raise AssertionError("never called")
