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

from typing import Any

import trio
from quart import Blueprint, Response, current_app, jsonify, request

from outrider.adapters.names import validate_name
from outrider.adapters.reconciler import Reconciler
from outrider.errors import NotFound, OutriderError
from outrider.http.body import bool_field, config_field, json_object, string_field
from outrider.runtime import Runtime

blueprint = Blueprint("adapters", __name__)


def reconciler() -> Reconciler:
    runtime: Runtime = current_app.config["RUNTIME"]
    if runtime.adapters is None:
        raise NotFound("LoRA adapter management is not running")
    return runtime.adapters


def _wait_flag(body: dict[str, Any]) -> bool:
    query = request.args.get("wait")
    if query is not None:
        return bool_field({"wait": query}, "wait")
    return bool_field(body, "wait")


def _record(r: Reconciler, name: str) -> dict[str, Any]:
    rec = r.get(name)
    return rec.to_json(trio.current_time()) if rec is not None else {"name": name, "state": "absent"}


@blueprint.get("/v1/adapters")
async def list_adapters() -> Response:
    r = reconciler()
    now = trio.current_time()
    return jsonify({"adapters": [a.to_json(now) for a in r.adapters()]})


@blueprint.get("/v1/adapters/<path:name>")
async def get_adapter(name: str) -> Response:
    r = reconciler()
    validate_name(name, "name")
    rec = r.get(name)
    if rec is None:
        raise NotFound(f"adapter {name!r} is not declared", field="name")
    return jsonify(rec.to_json(trio.current_time()))


@blueprint.put("/v1/adapters/<path:name>")
async def put_adapter(name: str) -> tuple[Response, int]:
    r = reconciler()
    validate_name(name, "name")
    body = await json_object()
    source = string_field(body, "source")
    assert source is not None
    config = config_field(body)
    wait = _wait_flag(body)
    ticket = r.declare(name, source.strip(), config)
    if not wait:
        return jsonify(_record(r, name)), 202
    try:
        await r.wait_loaded(ticket)
    except OutriderError as exc:
        return jsonify({**exc.to_json(), "adapter": _record(r, name)}), exc.status
    return jsonify(_record(r, name)), 200


@blueprint.delete("/v1/adapters/<path:name>")
async def delete_adapter(name: str) -> tuple[Response, int]:
    r = reconciler()
    validate_name(name, "name")
    wait = _wait_flag(await json_object(optional=True))
    ticket = r.retract(name)
    if not wait:
        return jsonify(_record(r, name)), 202
    try:
        await r.wait_gone(ticket)
    except OutriderError as exc:
        return jsonify({**exc.to_json(), "adapter": _record(r, name)}), exc.status
    return jsonify({"name": name, "state": "absent"}), 200
