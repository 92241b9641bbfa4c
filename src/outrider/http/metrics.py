"""`GET /metrics`: the cached engine page (with unified families) plus outrider's own metrics."""

from __future__ import annotations

from quart import Blueprint, Response, current_app

from outrider.runtime import Runtime

blueprint = Blueprint("metrics", __name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@blueprint.get("/metrics")
async def metrics() -> Response:
    runtime: Runtime = current_app.config["RUNTIME"]
    return Response(runtime.page.body(), status=200, content_type=CONTENT_TYPE)
