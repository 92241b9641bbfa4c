"""outrider's own LoRA API: declare, retract and inspect adapters.

    PUT    /v1/adapters/{name}   {"source", "config"?, "wait"?}   declare (202; 200 once loaded with wait)
    DELETE /v1/adapters/{name}   ?wait=true                       retract (202; 200 once unloaded with wait)
    GET    /v1/adapters                                           every declared adapter and its state
    GET    /v1/adapters/{name}                                    one

A declaration persists until retracted: a failed load is retried with backoff and shows as `failed` with its
last error. With `wait`, the answer comes after the first attempt that ends after the request: success, or the
error with its status (the engine's own status when the engine refused, 503 when it is unreachable).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from pydantic import BaseModel
from quart import Blueprint, Response, current_app, jsonify, request

from outrider.adapters.names import validate_name
from outrider.adapters.reconciler import Reconciler
from outrider.errors import NotFound, OutriderError
from outrider.http import models as m
from outrider.http.body import bool_field, strict_body
from outrider.http.spec import describe
from outrider.runtime import Runtime

blueprint = Blueprint("adapters", __name__)


def reconciler() -> Reconciler:
    runtime: Runtime = current_app.config["RUNTIME"]
    if runtime.adapters is None:
        raise NotFound("LoRA adapter management is not running")
    return runtime.adapters


def _wait_flag(body_wait: bool) -> bool:
    query = request.args.get("wait")
    if query is not None:
        return bool_field({"wait": query}, "wait", blank_is_unset=False)
    return body_wait


def _record(r: Reconciler, name: str) -> dict[str, Any]:
    rec = r.get(name)
    return rec.to_json(trio.current_time()) if rec is not None else {"name": name, "state": "absent"}


async def _answer(
    r: Reconciler,
    name: str,
    wait: bool,
    outcome: Callable[[], Awaitable[object]],
    done: Callable[[], dict[str, Any]],
) -> tuple[Response, int]:
    """The answer to a declare or retract: 202 with the record at once; with `wait`, once `outcome` ends, 200 with
    `done()`, or the failure's status with its error and the record as it is then."""
    if not wait:
        return jsonify(_record(r, name)), 202
    try:
        await outcome()
    except OutriderError as exc:
        return jsonify({**exc.to_json(), "adapter": _record(r, name)}), exc.status
    return jsonify(done()), 200


# Every adapter route is a 404 when LoRA management is not running (no --adapter-root and no engine LoRA API).
_NOT_RUNNING: dict[int | str, type[BaseModel]] = {404: m.ErrorBody}
# What a waited-for load or unload can end with: the adapter's name taken by the adapters file (409), a store's or
# the engine's refusal (their own 4xx), the engine's 5xx relayed as 502, the engine or a store unreachable (503),
# a full disk (507).
_ATTEMPT_FAILURES: dict[int | str, type[BaseModel]] = {
    status: m.AdapterFailure for status in (400, 404, 409, "4XX", 502, 503, 507)
}


@blueprint.get("/v1/adapters")
@describe(responses={200: m.AdapterList, **_NOT_RUNNING})
async def list_adapters() -> Response:
    r = reconciler()
    now = trio.current_time()
    return jsonify({"adapters": [a.to_json(now) for a in r.adapters()]})


@blueprint.get("/v1/adapters/<path:name>")
@describe(responses={200: m.AdapterRecord, 400: m.ErrorBody, **_NOT_RUNNING})
async def get_adapter(name: str) -> Response:
    r = reconciler()
    validate_name(name, "name")
    rec = r.get(name)
    if rec is None:
        raise NotFound(f"adapter {name!r} is not declared", field="name")
    return jsonify(rec.to_json(trio.current_time()))


@blueprint.put("/v1/adapters/<path:name>")
@describe(
    request=m.AdapterDeclare,
    query=m.WaitQuery,
    responses={
        200: m.AdapterRecord,
        202: m.AdapterAnswer,
        **_ATTEMPT_FAILURES,
    },
)
async def put_adapter(name: str) -> tuple[Response, int]:
    r = reconciler()
    validate_name(name, "name")
    body = await strict_body(m.AdapterDeclare)
    config = body.config.model_dump(exclude_none=True) if body.config is not None else None
    wait = _wait_flag(body.wait)
    ticket = r.declare(name, body.source.strip(), config)
    return await _answer(r, name, wait, lambda: r.wait_loaded(ticket), lambda: _record(r, name))


@blueprint.delete("/v1/adapters/<path:name>")
@describe(
    request=m.AdapterRetract,
    query=m.WaitQuery,
    responses={200: m.AdapterAbsent, 202: m.AdapterAnswer, **_ATTEMPT_FAILURES},
)
async def delete_adapter(name: str) -> tuple[Response, int]:
    r = reconciler()
    validate_name(name, "name")
    wait = _wait_flag((await strict_body(m.AdapterRetract, optional=True)).wait)
    ticket = r.retract(name)
    return await _answer(r, name, wait, lambda: r.wait_gone(ticket), lambda: {"name": name, "state": "absent"})
