"""The outermost layer of the API: the optional bearer token and the request body limit.

It wraps everything hypercorn serves (the hot routes and the Quart app), so no route escapes it. In a pod network
anyone can reach the sidecar; with `--api-token` set, every request that changes state (any method but GET, HEAD
and OPTIONS), and every request to the engine lifecycle routes (`/v1/runtime/...`, whose reads name artifacts and
their owners), must carry `Authorization: Bearer <token>`: none, or another scheme, is 401 with a
`WWW-Authenticate` challenge; a wrong token is 403. Probes and, unless `--protect-metrics`, `/metrics` stay open:
Kubernetes and Prometheus must reach them without a secret. The token is compared in constant time and never logged.

Which route a read reaches is decided as the router decides it, not on the spelling of the path: the hot routes
take `scope["path"]` as it is, and Quart hands it to werkzeug, which drops leading slashes (`//v1/runtime/snapshot`
serves the snapshot) and redirects merged slashes. So a read is protected when its path, or the route the
`RouteTable` (the same url_map) finds for it, is protected; a spelling that reaches no route is a 404 or a redirect,
which serves nothing.

Bodies declared larger than `--max-body-size` are refused here with 413 before a byte is read; bodies without a
declared length are capped by Quart's MAX_CONTENT_LENGTH (set to the same limit), which answers 413 the same way.
"""

from __future__ import annotations

import hmac
import json

from pydantic import SecretStr

from outrider.errors import error_body
from outrider.http.hot import ASGIApp, Receive, Scope, Send
from outrider.http.observe import RouteTable

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PROBES = frozenset({"/health", "/healthz", "/ready"})
METRICS = "/metrics"
# Routes that need the token for every method, reads included.
PROTECTED_PREFIXES = ("/v1/runtime/",)


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        routes: RouteTable,
        *,
        token: SecretStr | None,
        protect_metrics: bool,
        max_body_size: int,
    ) -> None:
        self._app = app
        self._routes = routes
        self._token = token.get_secret_value().encode() if token else None
        self._protect_metrics = protect_metrics
        self._max_body = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                status, headers, body = refusal
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self._app(scope, receive, send)

    def needs_token(self, method: str, path: str) -> bool:
        if self._token is None:
            return False
        if method not in READ_METHODS:
            return path not in PROBES
        # The route that will answer: a hot route by its exact path (as HotRoutes looks it up), else the Quart
        # rule werkzeug matches, else `unmatched` (a 404 or a redirect to the canonical spelling: nothing served).
        route = self._routes.route(method, path)
        if route in PROBES:
            return False
        if self._protect_metrics and route == METRICS:
            return True
        return path.startswith(PROTECTED_PREFIXES) or route.startswith(PROTECTED_PREFIXES)

    def _refusal(self, scope: Scope) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        headers = dict(scope.get("headers", ()))  # ASGI header names are lower-case bytes
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self._max_body:
            message = f"request body of {int(declared)} bytes is over the limit of {self._max_body}"
            return _json(413, error_body("payload_too_large", message, "body"))
        if not self.needs_token(scope["method"], scope.get("path", "")):
            return None
        assert self._token is not None
        scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not credentials.strip():
            status, head, body = _json(
                401, error_body("unauthorized", "this route needs Authorization: Bearer <token>")
            )
            return status, [*head, (b"www-authenticate", b'Bearer realm="outrider"')], body
        if not hmac.compare_digest(credentials.strip(), self._token):
            return _json(403, error_body("forbidden", "the bearer token is not valid for this API"))
        return None


def _json(status: int, body: dict[str, object]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    data = json.dumps(body).encode()
    return status, [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))], data
