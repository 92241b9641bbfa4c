"""The engine lifecycle routes, as AIBrix 0.8.0's runtime serves them to its ModelClaim controller.

  POST /v1/runtime/models/activate   {model_name, artifact_url, engine, port, ipc_name, credentials, engine_config,
                                      claim_ref, additional_config} -> {status, model_name, port, ipc_name, message}
  POST /v1/runtime/models/deactivate {model_name, mode: "stop"}  -> {status: "success"}
  POST /v1/runtime/models/sleep      {model_name, level, operation_id} -> {status, model_name, operation_id, applied,
  POST /v1/runtime/models/wake       {model_name, operation_id}          phase}
  POST /v1/runtime/models/kv-limit   {model_name, limit_bytes, operation_id}
  GET  /v1/runtime/models            -> {models: [{model_name, port, ipc_name, phase, ready, kv_used_bytes, ...}]}
  GET  /v1/runtime/snapshot          -> {observed_at, accelerators, models, cached_artifacts}

Off (501 on every route) unless the operator configured the lifecycle (--engine-launch). Every route, reads too,
needs the API token when one is set (http/guard.py). Errors answer `{"status": "error", "message", "error": {...}}`
with a 4xx for what the request got wrong and a 5xx for what failed, as AIBrix's controller reads them.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import trio
from pydantic import BaseModel
from quart import Blueprint, Response, current_app, g, jsonify
from quart_schema import RequestSchemaValidationError

from outrider.adapters.names import MAX_NAME
from outrider.errors import NotConfigured, OutriderError, error_body
from outrider.http import runtime_models as m
from outrider.http.body import json_object
from outrider.http.models import NAME_PATTERN
from outrider.http.spec import describe
from outrider.lifecycle.phases import shown
from outrider.lifecycle.records import EngineRecord
from outrider.lifecycle.supervisor import Activation, Observation, OperationResult, Supervisor
from outrider.runtime import Runtime
from outrider.transfer import state

blueprint = Blueprint("lifecycle", __name__)

# What a lifecycle call can end with besides success: a bad body (400), a store refusing the artifact (403), an
# unknown model or artifact (404), a conflicting state or an unsupported operation (409), an engine or activation
# failure (500), the lifecycle being off (501), an engine's or a store's failure (502), an engine or a store not
# answering (503), a full disk (507).
_FAILURES: dict[int | str, type[BaseModel]] = {
    status: m.RuntimeFailure for status in (400, 403, 404, 409, 500, 501, 502, 503, 507)
}
_READ_FAILURES: dict[int | str, type[BaseModel]] = {501: m.RuntimeFailure}
# KV figures AIBrix reports when a model has no kvcached segment: 0 in the model list, -1 (unknown) in the snapshot.
KV_UNKNOWN = -1
# outrider does not read GPU memory (no NVML): reported as unknown, never as a measured 0.
HBM_UNKNOWN = -1

log = logging.getLogger(__name__)

View = Callable[[], Awaitable[tuple[Response, int]]]
BodyT = TypeVar("BodyT", bound=pydantic.BaseModel)


def _supervisor() -> Supervisor:
    runtime: Runtime = current_app.config["RUNTIME"]
    if runtime.engines is None:
        raise NotConfigured(
            "the engine lifecycle is off: outrider launches engines only when started with --engine-launch"
        )
    return runtime.engines


def _phase(record: EngineRecord) -> str:
    return shown(record.phase)


def _route(
    method: str, path: str, answer: type[BaseModel], request: type[BaseModel] | None = None, *, activate: bool = False
) -> Callable[[View], View]:
    """A lifecycle route: registered, described for /openapi.json with every failure it can answer (the reads only
    501: they take no body and name no model), and its errors answered in AIBrix's fields."""
    failures = _FAILURES if request is not None else _READ_FAILURES

    def decorator(view: View) -> View:
        described = describe(request=request, responses={200: answer, **failures})(_answers(activate=activate)(view))
        return blueprint.route(path, methods=[method])(described)

    return decorator


def _answers(*, activate: bool = False) -> Callable[[View], View]:
    """Answer a route's errors in AIBrix's error fields plus outrider's (see the module docstring)."""

    def decorator(view: View) -> View:
        @functools.wraps(view)
        async def wrapper() -> tuple[Response, int]:
            try:
                return await view()
            except RequestSchemaValidationError as exc:
                body, status = _invalid(exc), 400
            except OutriderError as exc:
                body, status = exc.to_json(), exc.status
            body = {"status": "error", "message": body["error"]["message"], **body}
            name = g.get("model_name")
            if name is not None:
                body["model_name"] = name
            if activate:
                body.update(port=0, ipc_name="")
            return jsonify(body), status

        return wrapper

    return decorator


def _invalid(exc: RequestSchemaValidationError) -> dict[str, Any]:
    error = exc.validation_error
    if isinstance(error, pydantic.ValidationError) and error.errors():
        first = max(error.errors(), key=lambda e: len(e["loc"]))
        # These models hold no unions but `X | None` (which adds no member name to a location), so every part of
        # the location is a field or a key: kept whole, `--max-model-len` included.
        field = ".".join(str(part) for part in first["loc"]) or "body"
        return error_body("invalid_request", f"{field}: {first['msg']}", field)
    return error_body("invalid_request", "the request does not match its schema", "body")


async def _body(model: type[BodyT]) -> BodyT:
    """The body as `model` (a 400 naming the field otherwise); its model_name, when it is one, goes into any error
    answer, as AIBrix's answers carry it."""
    raw = await json_object()
    name = raw.get("model_name")
    if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) and len(name) <= MAX_NAME:
        g.model_name = name
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise RequestSchemaValidationError(exc) from None


async def _operate(
    model: type[BodyT], call: Callable[[Supervisor, BodyT], Awaitable[OperationResult]]
) -> tuple[Response, int]:
    """Sleep, wake and kv-limit: the lifecycle's state checked before the body (off is a 501 whatever the body),
    then the supervisor's operation answered in AIBrix's shape."""
    supervisor = _supervisor()
    result = await call(supervisor, await _body(model))
    return jsonify(
        {
            "status": "success",
            "model_name": result.model_name,
            "operation_id": result.operation_id,
            "applied": result.applied,
            "phase": shown(result.phase),
        }
    ), 200


@_route("POST", "/v1/runtime/models/activate", m.ActivateAnswer, m.ActivateRequest, activate=True)
async def activate() -> tuple[Response, int]:
    supervisor = _supervisor()
    body: m.ActivateRequest = await _body(m.ActivateRequest)
    args = body.engine_config.args if body.engine_config is not None and body.engine_config.args else {}
    record, settled = await supervisor.activate(
        Activation(
            model_name=body.model_name,
            artifact_url=body.artifact_url,
            engine=body.engine,
            port=body.port,
            ipc_name=body.ipc_name or "",
            credentials=body.credentials,
            engine_args=args,
            legacy_args=body.additional_config or {},
            claim_ref=body.claim_ref.model_dump() if body.claim_ref is not None else None,
        )
    )
    message = None
    if not settled:
        message = f"the engine is still starting ({_phase(record)}): GET /v1/runtime/models says when it is ready"
    answer = {
        "status": "success",
        "model_name": record.model_name,
        "port": record.port,
        "ipc_name": record.ipc_name,
        "message": message,
    }
    return jsonify(answer), 200


@_route("POST", "/v1/runtime/models/deactivate", m.DeactivateAnswer, m.DeactivateRequest)
async def deactivate() -> tuple[Response, int]:
    supervisor = _supervisor()
    body: m.DeactivateRequest = await _body(m.DeactivateRequest)
    if body.mode != "stop":
        log.info("deactivate %s: mode %r is taken as stop, as AIBrix takes it", body.model_name, body.mode)
    if await supervisor.deactivate(body.model_name):
        return jsonify({"status": "success"}), 200
    # Success all the same, as AIBrix answers: a controller retrying a deactivation whose answer it lost must not
    # read the second answer as a refusal. The message says nothing was running.
    return jsonify({"status": "success", "message": f"model {body.model_name!r} was not active"}), 200


@_route("POST", "/v1/runtime/models/sleep", m.OperationAnswer, m.SleepRequest)
async def sleep() -> tuple[Response, int]:
    return await _operate(m.SleepRequest, lambda s, b: s.sleep(b.model_name, b.level, b.operation_id))


@_route("POST", "/v1/runtime/models/wake", m.OperationAnswer, m.WakeRequest)
async def wake() -> tuple[Response, int]:
    return await _operate(m.WakeRequest, lambda s, b: s.wake(b.model_name, b.operation_id))


@_route("POST", "/v1/runtime/models/kv-limit", m.OperationAnswer, m.KVLimitRequest)
async def kv_limit() -> tuple[Response, int]:
    return await _operate(m.KVLimitRequest, lambda s, b: s.kv_limit(b.model_name, b.limit_bytes, b.operation_id))


@_route("GET", "/v1/runtime/models", m.RuntimeModelList)
async def list_models() -> tuple[Response, int]:
    if current_app.config["RUNTIME"].engines is None:  # AIBrix's runtime lists none until it launched one
        return jsonify({"models": []}), 200
    observed = await _supervisor().observe()
    models = []
    for o in observed:
        total, used, prealloc = o.kv if o.kv is not None else (0, 0, 0)
        r = o.record
        models.append(
            {
                "model_name": r.model_name,
                "port": r.port,
                "ipc_name": r.ipc_name,
                "phase": _phase(r),
                "ready": o.ready,
                "kv_used_bytes": used + prealloc,
                "kv_total_bytes": total,
            }
        )
    return jsonify({"models": models}), 200


@_route("GET", "/v1/runtime/snapshot", m.Snapshot)
async def snapshot() -> tuple[Response, int]:
    supervisor = _supervisor()
    observed = await supervisor.observe()
    cached = await trio.to_thread.run_sync(_cached_artifacts, Path(supervisor.model_root))
    answer = {
        "observed_at": _iso(datetime.datetime.now(datetime.UTC).timestamp()),
        "accelerators": [],
        "models": [_snapshot_model(o) for o in observed],
        "cached_artifacts": cached,
    }
    return jsonify(answer), 200


def _snapshot_model(o: Observation) -> dict[str, Any]:
    r = o.record
    if o.kv is None:
        used = capacity = KV_UNKNOWN
    else:
        total, in_use, prealloc = o.kv
        used, capacity = in_use + prealloc, total
    return {
        "model_name": r.model_name,
        "artifact_url": r.artifact_url,
        "claim_ref": r.claim_ref,
        "port": r.port,
        "ipc_name": r.ipc_name,
        "phase": _phase(r),
        "ready": o.ready,
        "alive": o.alive,
        "restart_count": 0,  # outrider reports an exit (phase failed) and does not restart engines itself
        "last_error": r.last_error,
        "last_transition": _iso(r.last_transition),
        "kv_used_bytes": used,
        "kv_capacity_bytes": capacity,
        "hbm_peak_bytes": HBM_UNKNOWN,
        "sleeping_footprint_bytes": None,  # unknown, as AIBrix reports a reading it cannot attribute
        "request_metrics_observed": o.activity.observed,
        "requests_running": o.activity.running,
        "requests_waiting": o.activity.waiting,
        "request_success_total": o.activity.success_total,
    }


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()


def _cached_artifacts(root: Path) -> list[str]:
    """Thread: the sources of the finished downloads directly under the model root (what an activation of them
    would find already here)."""
    found: set[str] = set()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            record = state.load_record(Path(entry.path))
            if record is not None and record.complete:
                found.add(record.source)
    return sorted(found)
