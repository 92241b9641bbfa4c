"""The Quart-Trio application: blueprints plus one error mapping for the whole API."""

from __future__ import annotations

import logging
from typing import cast

from quart import Response, jsonify
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from outrider.errors import OutriderError, error_body
from outrider.http import adapters, compat_lora, downloads
from outrider.http.guard import Guard
from outrider.http.hot import ASGIApp, HotRoutes
from outrider.http.observe import Observe, RouteTable
from outrider.runtime import Runtime

log = logging.getLogger(__name__)


def create_asgi(runtime: Runtime) -> ASGIApp:
    """What hypercorn serves: request ids, access log and request metrics around everything, then the guard
    (token, body limit), then the hot routes (probes, /metrics), then Quart."""
    settings = runtime.settings
    app = create_app(runtime)
    # Quart types its ASGI signature with TypedDict events; at run time it is the plain ASGI callable.
    hot = HotRoutes(cast(ASGIApp, app), runtime)
    guard = Guard(
        hot, token=settings.api_token, protect_metrics=settings.protect_metrics, max_body_size=settings.max_body_size
    )
    return Observe(guard, RouteTable(app.url_map, hot.paths), runtime.metrics.http)


def route_paths(runtime: Runtime) -> set[str]:
    """Every route path outrider answers (the hot routes and the Quart app's), e.g. for checking probe paths."""
    app = create_app(runtime)
    return {rule.rule for rule in app.url_map.iter_rules()} | HotRoutes(cast(ASGIApp, app), runtime).paths


def create_app(runtime: Runtime) -> QuartTrio:
    app = QuartTrio("outrider")
    app.config["RUNTIME"] = runtime
    app.config["MAX_CONTENT_LENGTH"] = runtime.settings.max_body_size  # bodies with no declared length
    app.register_blueprint(adapters.blueprint)
    app.register_blueprint(compat_lora.blueprint)
    app.register_blueprint(downloads.blueprint)

    @app.errorhandler(OutriderError)
    async def _outrider_error(exc: OutriderError) -> tuple[Response, int]:
        return jsonify(exc.to_json()), exc.status

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        return jsonify(error_body(name, exc.description or exc.name or "error")), status

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> tuple[Response, int]:
        # The traceback goes to the log; the caller gets a JSON body with no internals in it.
        log.error("unhandled error", exc_info=exc)
        return jsonify(error_body("internal_error", "internal error; see the outrider log")), 500

    return app
