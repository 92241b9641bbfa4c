"""The Quart-Trio application: blueprints plus one error mapping for the whole API."""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import cast

import pydantic
from quart import Response, jsonify
from quart_schema import Info, QuartSchema, RequestSchemaValidationError
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from outrider.errors import OutriderError, error_body
from outrider.http import adapters, compat_lora, docs_assets, downloads, lifecycle
from outrider.http.body import error_field
from outrider.http.guard import Guard
from outrider.http.hot import ASGIApp, HotRoutes
from outrider.http.observe import Observe, RouteTable
from outrider.http.shielded import ShieldedSend
from outrider.http.spec import DOCS_PATH, OPENAPI_PATH, OutriderOpenAPI
from outrider.runtime import Runtime

log = logging.getLogger(__name__)


def create_asgi(runtime: Runtime) -> ASGIApp:
    """What hypercorn serves: request ids, access log and request metrics around everything, then the guard
    (token, body limit), then the hot routes (probes, /metrics), then Quart."""
    settings = runtime.settings
    app = create_app(runtime)
    # Quart types its ASGI signature with TypedDict events; at run time it is the plain ASGI callable.
    quart = ShieldedSend(cast(ASGIApp, app))
    hot = HotRoutes(quart, runtime)
    # One route table for the guard and the request metrics: both must see the route the router will serve.
    routes = RouteTable(app.url_map, hot.spellings)
    guard = Guard(
        hot,
        routes,
        token=settings.api_token,
        protect_metrics=settings.protect_metrics,
        max_body_size=settings.max_body_size,
    )
    return Observe(guard, routes, runtime.metrics.http)


def route_paths(runtime: Runtime) -> set[str]:
    """Every route path outrider answers (the hot routes and the Quart app's), e.g. for checking probe paths."""
    app = create_app(runtime)
    return {rule.rule for rule in app.url_map.iter_rules()} | HotRoutes(cast(ASGIApp, app), runtime).paths


def create_app(runtime: Runtime) -> QuartTrio:
    app = QuartTrio("outrider", static_folder=None)  # no static files: every route is in the spec
    app.config["RUNTIME"] = runtime
    app.config["MAX_CONTENT_LENGTH"] = runtime.settings.max_body_size  # bodies with no declared length
    app.register_blueprint(adapters.blueprint)
    app.register_blueprint(compat_lora.blueprint)
    app.register_blueprint(downloads.blueprint)
    app.register_blueprint(lifecycle.blueprint)
    # /openapi.json and /docs (Swagger UI, its script and style served from here: see http/docs_assets.py).
    app.register_blueprint(docs_assets.blueprint)
    app.config["QUART_SCHEMA_SWAGGER_JS_URL"] = f"{docs_assets.ASSETS_PREFIX}/swagger-ui-bundle.js"
    app.config["QUART_SCHEMA_SWAGGER_CSS_URL"] = f"{docs_assets.ASSETS_PREFIX}/swagger-ui.css"
    QuartSchema(
        app,
        openapi_path=OPENAPI_PATH,
        swagger_ui_path=DOCS_PATH,
        redoc_ui_path=None,
        scalar_ui_path=None,
        info=Info(title="outrider", version=version("outrider")),
        openapi_provider_class=OutriderOpenAPI,
    )

    @app.errorhandler(RequestSchemaValidationError)
    async def _invalid_body(exc: RequestSchemaValidationError) -> tuple[Response, int]:
        # A native body that does not fit its model: one problem, naming its field; never the value. Of the
        # errors a union gives (one per member), the deepest names the field best: `exclude.1`, not `exclude`.
        error = exc.validation_error
        if isinstance(error, pydantic.ValidationError) and error.errors():
            first = max(error.errors(), key=lambda e: len(e["loc"]))
            field = error_field(first["loc"])
            return jsonify(error_body("invalid_request", f"{field}: {first['msg']}", field)), 400
        return jsonify(error_body("invalid_request", "the request does not match its schema", "body")), 400

    @app.errorhandler(OutriderError)
    async def _outrider_error(exc: OutriderError) -> tuple[Response, int]:
        return jsonify(exc.to_json()), exc.status

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        response = jsonify(error_body(name, exc.description or exc.name or "error"))
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response, status

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> tuple[Response, int]:
        # The traceback goes to the log; the caller gets a JSON body with no internals in it.
        log.error("unhandled error", exc_info=exc)
        return jsonify(error_body("internal_error", "internal error; see the outrider log")), 500

    return app
