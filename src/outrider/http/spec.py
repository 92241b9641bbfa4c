"""The OpenAPI description of the whole API, served at /openapi.json (and browsable at /docs) by quart-schema.

Routes say what they take and answer with `describe`, which records the models where quart-schema's spec builder
reads them (the same attributes its `validate_*` decorators set) without wrapping the route: native bodies are
checked by http/body.py's `strict_body`, and answers are never re-validated at run time.

`OutriderOpenAPI` adds what quart-schema cannot see:
- the hot routes (`/health`, `/healthz`, `/ready`, `/startup`, `/metrics`), answered in ASGI below Quart
  (http/hot.py), and the documentation routes themselves, so that the spec lists exactly the routes outrider answers;
- the answers of the layers around every route: 401/403 from the guard where the running settings need a token
  (the same `Guard.needs_token` rule that enforces it), 413 for bodies over the limit and 400 for a body that is
  not a JSON object;
- text answers (the AIBrix load routes and /metrics are text/plain) and path parameter constraints.

The spec describes the running configuration: with no API token set, no route carries a security requirement.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

from pydantic import BaseModel
from quart_schema import OpenAPIProvider
from quart_schema.conversion import model_schema
from quart_schema.validation import (
    QUART_SCHEMA_QUERYSTRING_ATTRIBUTE,
    QUART_SCHEMA_REQUEST_ATTRIBUTE,
    QUART_SCHEMA_RESPONSE_ATTRIBUTE,
    DataSource,
)
from werkzeug.routing.rules import Rule

from outrider.adapters.names import MAX_NAME
from outrider.http import docs_assets, models
from outrider.http.guard import Guard
from outrider.http.hot import HotRoutes, Receive, Scope, Send
from outrider.http.observe import RouteTable
from outrider.runtime import Runtime

F = TypeVar("F", bound=Callable[..., Any])

TEXT_STATUSES = "_outrider_text_statuses"
TEXT_TOO_STATUSES = "_outrider_text_too_statuses"
BEARER = "bearer"
OPENAPI_PATH = "/openapi.json"
_TEXT_SCHEMA = {"schema": {"type": "string"}}
DOCS_PATH = "/docs"
_REF = "#/components/schemas/{model}"

# Path parameters, constrained as the routes check them (a name outside these is a 400 or a 404, never a 500).
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": models.ADAPTER_NAME_PATTERN},
    "job_id": {"type": "string", "minLength": 1, "maxLength": 64, "examples": ["dl-1-a1b2c3"]},
}


def describe(
    *,
    responses: Mapping[int | str, type[BaseModel]],
    request: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    text: Iterable[int] = (),
    text_too: Iterable[int] = (),
) -> Callable[[F], F]:
    """Record a route's request body, query and answers (by status; "4XX" for statuses an engine chooses).

    `text` lists statuses answered as text/plain rather than JSON (their model is `str`-rooted); `text_too` those
    answered as text/plain in one mode of the route and as their JSON model in another (AIBrix's plain and
    delegation modes)."""

    def decorator(func: F) -> F:
        if request is not None:
            setattr(func, QUART_SCHEMA_REQUEST_ATTRIBUTE, (request, DataSource.JSON))
        if query is not None:
            setattr(func, QUART_SCHEMA_QUERYSTRING_ATTRIBUTE, query)
        # String keys: the JSON encoder sorts keys, and ints and strings do not sort together.
        setattr(func, QUART_SCHEMA_RESPONSE_ATTRIBUTE, {str(s): (m, None) for s, m in responses.items()})
        setattr(func, TEXT_STATUSES, frozenset(str(s) for s in text))
        setattr(func, TEXT_TOO_STATUSES, frozenset(str(s) for s in text_too))
        return func

    return decorator


def _schema(model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model's serialization schema and the definitions it refers to."""
    schema = model_schema(model, schema_mode="serialization")
    definitions = schema.pop("$defs", {})
    return schema, definitions


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    schema, _ = _schema(model)
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


async def _nothing(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover - never called
    raise AssertionError("the spec's guard only answers needs_token")


class OutriderOpenAPI(OpenAPIProvider):
    """quart-schema's spec builder, completed with the hot routes and the layers around the Quart routes."""

    def _runtime(self) -> Runtime:
        runtime: Runtime = self._app.config["RUNTIME"]
        return runtime

    def _guard(self) -> Guard:
        runtime = self._runtime()
        settings = runtime.settings
        routes = RouteTable(self._app.url_map, HotRoutes(_nothing, runtime).spellings)
        return Guard(
            _nothing, routes, token=settings.api_token, protect_metrics=settings.protect_metrics, max_body_size=1
        )

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        text = cast(frozenset[str], getattr(func, TEXT_STATUSES, frozenset()))
        text_too = cast(frozenset[str], getattr(func, TEXT_TOO_STATUSES, frozenset()))
        guard = self._guard()
        for path, operations in paths.items():
            for method, shared in list(operations.items()):
                operation = copy.deepcopy(shared)  # quart-schema shares one object between a rule's methods
                for parameter in operation["parameters"]:
                    if parameter["in"] == "path" and parameter["name"] in PATH_PARAMETERS:
                        parameter["schema"] = dict(PATH_PARAMETERS[parameter["name"]])
                if not operation["parameters"]:
                    del operation["parameters"]
                responses: dict[str, Any] = operation["responses"]
                for status in text:
                    responses[status]["content"] = {"text/plain": {"schema": {"type": "string"}}}
                for status in text_too:
                    responses[status]["content"]["text/plain"] = {"schema": {"type": "string"}}
                if "requestBody" in operation:
                    operation["requestBody"]["required"] = not _body_optional(operation)
                    responses.setdefault("400", _json(models.ErrorBody, "The body is not a valid JSON object"))
                    responses["413"] = _json(models.ErrorBody, "The body is over --max-body-size")
                self._secure(operation, guard, method.upper(), path)
                operations[method] = operation
        return paths, components

    @staticmethod
    def _secure(operation: dict[str, Any], guard: Guard, method: str, path: str) -> None:
        if not guard.needs_token(method, path):
            return
        operation["security"] = [{BEARER: []}]
        operation["responses"]["401"] = _json(models.ErrorBody, "No bearer token (an API token is set)")
        operation["responses"]["403"] = _json(models.ErrorBody, "The bearer token is wrong")

    def schema(self) -> dict[str, Any]:
        spec = super().schema()
        components = spec["components"]["schemas"]
        components.update(_schema(models.ErrorBody)[1])  # what the added error answers refer to
        guard = self._guard()
        paths: dict[str, Any] = spec["paths"]
        hot = self._hot_paths()
        described = set(hot)
        runtime_paths = HotRoutes(_nothing, self._runtime()).paths
        if described != runtime_paths:  # a hot route added without describing it here
            raise RuntimeError(f"hot routes {sorted(runtime_paths ^ described)} are not described in http/spec.py")
        for path, operation in {**hot, **self._documentation_paths()}.items():
            self._secure(operation, guard, "GET", path)
            paths[path] = {"get": operation}
        if self._runtime().settings.api_token:
            components_root = spec["components"]
            components_root["securitySchemes"] = {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "--api-token / OUTRIDER_API_TOKEN; needed by every route that changes state",
                }
            }
        spec["paths"] = dict(sorted(paths.items()))
        return spec

    @staticmethod
    def _hot_paths() -> dict[str, dict[str, Any]]:
        return {
            "/health": {
                "operationId": "get_health",
                "summary": "Liveness (Kthena's shape): 200 while the process answers",
                "responses": {"200": _json(models.Health, "Alive")},
            },
            "/healthz": {
                "operationId": "get_healthz",
                "summary": "Liveness (AIBrix's shape)",
                "responses": {"200": _json(models.Healthz, "Alive")},
            },
            "/ready": {
                "operationId": "get_ready",
                "summary": "Readiness: the engine answers and its metrics are fresh",
                "responses": {
                    "200": _json(models.Ready, "Ready"),
                    "503": _json(models.NotReady, "Not ready, and why"),
                },
            },
            "/startup": {
                "operationId": "get_startup",
                "summary": "Startup: the pod's own model (--pod-model) is complete on disk (a startupProbe's path)",
                "responses": {
                    "200": _json(models.Startup, "Complete, or no pod model configured"),
                    "503": _json(models.Startup, "Still downloading (with its progress), or failed for good (why)"),
                },
            },
            "/metrics": {
                "operationId": "get_metrics",
                "summary": "The engine's metrics, standardized, plus outrider's own (Prometheus text format)",
                "responses": {"200": _text("The metrics page (gzip when the client accepts it)")},
            },
        }

    @staticmethod
    def _documentation_paths() -> dict[str, dict[str, Any]]:
        return {
            OPENAPI_PATH: {
                "operationId": "get_openapi",
                "summary": "This description of the API (OpenAPI 3.1)",
                "responses": {
                    "200": {
                        "description": "The spec",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            },
            DOCS_PATH: {
                "operationId": "get_docs",
                "summary": "A browsable page of this API (Swagger UI)",
                "responses": {
                    "200": {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            },
            f"{docs_assets.ASSETS_PREFIX}/{{asset}}": {
                "operationId": "get_docs_asset",
                "summary": "The page's script and style (Swagger UI, from the swagger-ui-bundle package)",
                "parameters": [
                    {
                        "name": "asset",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": sorted(docs_assets.ASSETS)},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {
                            kind.split(";")[0]: {"schema": {"type": "string"}} for kind in docs_assets.ASSETS.values()
                        },
                    },
                    "404": _json(models.ErrorBody, "No such asset"),
                },
            },
        }


def _body_optional(operation: dict[str, Any]) -> bool:
    # DELETE's body is optional (an empty body is `{}`); every other body is required.
    return str(operation.get("operationId", "")).startswith("delete_")
