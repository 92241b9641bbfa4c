"""The routes that probes and Prometheus call all day, answered below the framework.

`/health`, `/healthz`, `/ready`, `/startup` and `/metrics` are most of the traffic a sidecar sees, and each answer is
already computed (the metrics page by the scraper, readiness by a comparison). Quart builds a request context, a task
and a response object for every request; measured with bench/metrics_bench.py that framework work was most of the CPU a
`/metrics` request cost, and it delays `/health` behind every scrape in flight. So `HotRoutes` answers GET and HEAD
on these paths directly in ASGI and hands everything else to the Quart app unchanged.

These are the only routes answered here. Anything that adds behaviour to every route (auth, request ids, request
metrics) must cover this wrapper as well as the Quart app.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from outrider.errors import error_body
from outrider.runtime import Runtime

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = b"application/json"
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
# Liveness: alive while the process answers; never looks at the engine, so a slow engine cannot get the sidecar
# restarted. Kthena's shape on /health, AIBrix's on /healthz.
HEALTH = json.dumps({"status": "healthy", "service": "runtime"}).encode()
HEALTHZ = json.dumps({"status": "ok"}).encode()
METHOD_NOT_ALLOWED = json.dumps(error_body("method_not_allowed", "only GET and HEAD are allowed here")).encode()

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def accepts_gzip(scope: Scope) -> bool:
    """Whether the client's Accept-Encoding admits gzip (Prometheus always sends it)."""
    for name, value in scope.get("headers", ()):
        if name == b"accept-encoding":
            for item in value.split(b","):
                coding, *params = item.split(b";")
                if coding.strip().lower() in (b"gzip", b"*") and _quality(params) > 0:
                    return True
    return False


def _quality(params: list[bytes]) -> float:
    for param in params:
        key, _, value = param.strip().partition(b"=")
        if key.strip().lower() == b"q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


# Other spellings of a hot route, to the route (see HotRoutes.spellings).
ALIASES = {"/metrics/": "/metrics"}


class HotRoutes:
    """ASGI wrapper: the hot routes here, the rest to `app`."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self._app = app
        self._runtime = runtime
        self._routes: dict[str, Callable[[Scope], Answer]] = {
            "/health": lambda _: (200, [(b"content-type", JSON)], HEALTH),
            "/healthz": lambda _: (200, [(b"content-type", JSON)], HEALTHZ),
            "/ready": self._ready,
            "/startup": self._startup,
            "/metrics": self._metrics,
        }

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(self._routes)

    @property
    def spellings(self) -> dict[str, str]:
        """Each path served here to the route that serves it: the routes, and `/metrics/`, where AIBrix's runtime
        serves its page (its `/metrics` redirects there), so a scrape config written for AIBrix keeps working. The
        guard and the request metrics read this, so `/metrics/` is `/metrics` to them too."""
        return {**{path: path for path in self._routes}, **ALIASES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path") or ""
        route = self._routes.get(ALIASES.get(path, path)) if scope["type"] == "http" else None
        if route is None:
            await self._app(scope, receive, send)
            return
        method = scope["method"]
        if method in ("GET", "HEAD"):
            status, headers, body = route(scope)
        else:
            status, headers, body = 405, [(b"content-type", JSON), (b"allow", b"GET, HEAD")], METHOD_NOT_ALLOWED
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    def _ready(self, _: Scope) -> Answer:
        runtime = self._runtime
        reason = runtime.scraper.not_ready_reason()
        if reason is not None:
            body: dict[str, Any] = {"status": "not ready", "reason": reason}
            return 503, [(b"content-type", JSON)], json.dumps(body).encode()
        body = {"status": "ready", "engine": runtime.settings.engine, "model": runtime.model}
        return 200, [(b"content-type", JSON)], json.dumps(body).encode()

    def _startup(self, _: Scope) -> Answer:
        pod_model = self._runtime.pod_model
        if pod_model is None:
            return 200, [(b"content-type", JSON)], json.dumps({"status": "ready", "source": None}).encode()
        return (200 if pod_model.ready else 503), [(b"content-type", JSON)], json.dumps(pod_model.to_json()).encode()

    def _metrics(self, scope: Scope) -> Answer:
        page = self._runtime.page
        headers = [(b"content-type", PROMETHEUS_TEXT), (b"vary", b"accept-encoding")]
        if accepts_gzip(scope):
            headers.append((b"content-encoding", b"gzip"))
            return 200, headers, page.gzip_body()
        return 200, headers, page.body()
