"""A task route's requests, solved without FastAPI's generic parameter solver when they are valid.

On every request FastAPI solves a route's parameters with code written for every kind of
parameter: it builds the query parameters, the headers and the cookies once per dependency,
asks each parameter's annotation whether it is a sequence, parses the Content-Type like a MIME
header, and makes a response object for dependencies that never use it. On a GET of one task
that was about a sixth of a worker's CPU (py-spy, bench/results/2026-12-06-where-the-time-goes.md).

A task route's parameters are few and always of the same kinds: the request, the unit of work
(an async dependency of the request and the path's user id, todo_api/work.py), path
parameters, at most one query model and at most one JSON body. `direct_handler` solves those
with the very fields FastAPI built from the route's declaration, so a value is accepted and
converted exactly as FastAPI would, and calls the endpoint in the threadpool as FastAPI does.
A request it cannot solve (any invalid value, a body that is not plainly JSON) goes to
FastAPI's own handler, which answers it as it always has: every 422, its order and its shape,
and the OpenAPI document stay FastAPI's. A route whose parameters are of another kind is
refused when it is declared, so the fast path never silently stops being taken.

It relies on names beyond FastAPI's and Starlette's documented API: the route's `Dependant` (its
parsed declaration), its fields' `validate`, which FastAPI's own solver calls, and the attribute
where Starlette's request keeps its parsed JSON body. An upgrade that changes any of them fails
tests/api/test_direct.py, which also checks every answer against FastAPI's handler.
"""

import copy
import inspect
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import params
from fastapi.dependencies.models import Dependant
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
# The body was read and held nothing.
_EMPTY = object()


class Unsolved(Exception):
    """The fast path cannot solve this request: FastAPI's handler answers it."""


def direct_handler(dependant: Dependant, declared: Handler) -> Handler:
    """`declared` (FastAPI's handler for the route), with valid requests solved directly.

    The endpoint is plain `def` (WorkRoute refuses any other): it runs in the threadpool."""
    _require_supported(dependant)
    endpoint = dependant.call
    assert endpoint is not None
    (work,) = dependant.dependencies
    work_call, work_name = work.call, work.name
    assert work_call is not None and work_name is not None
    work_request = work.request_param_name
    work_path = [(field.name, field) for field in work.path_params]
    path = [(field.name, field) for field in dependant.path_params]
    query = dependant.query_params[0] if dependant.query_params else None
    body = dependant.body_params[0] if dependant.body_params else None
    request_name = dependant.request_param_name

    async def handle(request: Request) -> Response:
        try:
            content = await _json_body(request) if body is not None else _EMPTY
            path_params = request.path_params
            arguments = _path_values(work_path, path_params)
            if work_request is not None:
                arguments[work_request] = request
            values = _path_values(path, path_params)
            if query is not None:
                values[query.name] = _query_model(query, request)
            if body is not None:
                values[body.name] = _body_value(body, content)
        except Unsolved:
            return await declared(request)
        # Last, as the answer is the same either way (FastAPI's handler checks the token first):
        # a request handed to FastAPI's handler has its token checked there, once.
        values[work_name] = await work_call(**arguments)
        if request_name is not None:
            values[request_name] = request
        response = await run_in_threadpool(endpoint, **values)
        if not isinstance(response, Response):
            raise TypeError(f"{endpoint.__name__} must return a Response")
        return response

    return handle


def _require_supported(dependant: Dependant) -> None:
    unsupported = [
        kind
        for kind, present in (
            ("header parameters", dependant.header_params),
            ("cookie parameters", dependant.cookie_params),
            ("more than one query parameter", len(dependant.query_params) > 1),
            ("a query parameter that is not a model ignoring extras", not _query_models(dependant)),
            ("more than one body parameter", len(dependant.body_params) > 1),
            ("an embedded or form body", not _plain_bodies(dependant)),
            ("a dependency other than the unit of work", len(dependant.dependencies) != 1),
            ("a Response, BackgroundTasks or SecurityScopes parameter", _extras(dependant)),
        )
        if present
    ]
    if dependant.dependencies:
        work = dependant.dependencies[0]
        if not _is_async(work.call) or work.dependencies or _has_inputs_beyond_path(work):
            unsupported.append("a unit of work that takes more than the request and the path")
    if unsupported:
        raise TypeError(f"{dependant.call}: the direct handler does not solve {unsupported}")


def _query_models(dependant: Dependant) -> bool:
    # A model that ignores unknown parameters: FastAPI gives it a repeated one as a list.
    return all(
        isinstance(model := field.field_info.annotation, type)
        and issubclass(model, BaseModel)
        and model.model_config.get("extra", "ignore") == "ignore"
        for field in dependant.query_params
    )


def _plain_bodies(dependant: Dependant) -> bool:
    return all(
        not getattr(field.field_info, "embed", False)
        and not isinstance(field.field_info, params.Form)
        for field in dependant.body_params
    )


def _extras(dependant: Dependant) -> bool:
    return any(
        name is not None
        for name in (
            dependant.response_param_name,
            dependant.background_tasks_param_name,
            dependant.security_scopes_param_name,
            dependant.websocket_param_name,
            dependant.http_connection_param_name,
        )
    )


def _has_inputs_beyond_path(dependant: Dependant) -> bool:
    return bool(
        dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or _extras(dependant)
    )


def _is_async(call: object) -> bool:
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
        getattr(call, "__call__", None)  # noqa: B004
    )


def _path_values(fields: list[tuple[str, Any]], path_params: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for name, field in fields:
        value, errors = field.validate(path_params[field.alias], {}, loc=("path", field.alias))
        if errors:
            raise Unsolved
        values[name] = value
    return values


def _query_model(field: Any, request: Request) -> Any:
    # A repeated parameter's last value, as FastAPI takes it for a model's field.
    value, errors = field.validate(dict(request.query_params), {}, loc=("query",))
    if errors:
        raise Unsolved
    return value


async def _json_body(request: Request) -> Any:
    headers = request.headers
    if "transfer-encoding" not in headers and headers.get("content-length", "0") == "0":
        # A request without either header has no body (RFC 9112, 6.3), nor has one of length 0:
        # nothing to read (awaiting the empty message cost a toggle 35 us, a twentieth of it).
        return _EMPTY
    try:
        raw = await request.body()
    except HTTPException:
        raise  # the request layer's refusal (401 before the body, 413), as FastAPI lets it out
    except Exception:
        raise Unsolved from None  # a body that cannot be read (the client left): FastAPI's 400
    if not raw:
        return _EMPTY
    content_type = headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        raise Unsolved
    try:
        content = json.loads(raw)
    except (ValueError, RecursionError):
        raise Unsolved from None
    # Kept where Starlette's request keeps the body it parsed: FastAPI's handler, answering a
    # request this one cannot solve, takes it from there instead of parsing it again (twice the
    # work, and one call deeper: at the recursion limit a body could parse here and not there).
    request._json = content
    return content


def _body_value(field: Any, content: Any) -> Any:
    if content is _EMPTY:
        if field.field_info.is_required() or field.field_info.validate_default:
            raise Unsolved
        return copy.deepcopy(field.default)
    value, errors = field.validate(content, {}, loc=("body",))
    if errors:
        raise Unsolved
    return value
