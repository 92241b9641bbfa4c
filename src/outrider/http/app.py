"""The Quart-Trio application: blueprints plus one error mapping for the whole API."""

from __future__ import annotations

import logging

from quart import Response, jsonify
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from outrider.errors import OutriderError, error_body
from outrider.http import downloads, health, metrics
from outrider.runtime import Runtime

log = logging.getLogger(__name__)


def create_app(runtime: Runtime) -> QuartTrio:
    app = QuartTrio("outrider")
    app.config["RUNTIME"] = runtime
    app.register_blueprint(health.blueprint)
    app.register_blueprint(metrics.blueprint)
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
