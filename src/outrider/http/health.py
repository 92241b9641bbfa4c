"""Liveness and readiness in both peers' shapes.

`/health` (Kthena) and `/healthz` (AIBrix) say the process is alive and never look at the engine, so a slow engine
cannot make Kubernetes restart the sidecar. `/ready` says whether the engine behind us is usable.
"""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify

from outrider.runtime import Runtime

blueprint = Blueprint("health", __name__)


@blueprint.get("/health")
async def health() -> Response:
    return jsonify({"status": "healthy", "service": "runtime"})


@blueprint.get("/healthz")
async def healthz() -> Response:
    return jsonify({"status": "ok"})


@blueprint.get("/ready")
async def ready() -> tuple[Response, int]:
    runtime: Runtime = current_app.config["RUNTIME"]
    reason = runtime.scraper.not_ready_reason()
    if reason is not None:
        return jsonify({"status": "not ready", "reason": reason}), 503
    return jsonify({"status": "ready", "engine": runtime.settings.engine, "model": runtime.model}), 200
