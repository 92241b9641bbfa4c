"""The outermost ASGI layer: a request id, an access log line and the API request metrics for every answer.

It wraps everything hypercorn serves — the guard's 401/403/413 refusals, the hot routes (probes, /metrics) and the
Quart app — so no answer escapes it.

- Request id: the client's `X-Request-ID` when it is sane (1-128 characters of `[A-Za-z0-9._:-]`), else a new one
  (a per-process random prefix and a counter: unique, and cheaper than a random draw per request). It is returned
  in the `X-Request-ID` header of every answer and set in `outrider.logs.request_id`, so every log event made while
  serving the request carries it (trio copies the contextvar into tasks and threads the request starts).
- Access log (`outrider.access`): method, path (never the query string), route template, status, duration,
  response bytes, request id and client address; never bodies or headers.
- Metrics: `outrider_http_requests_total{method, route, status}` and
  `outrider_http_request_duration_seconds{method, route}`. `route` is the route template in OpenAPI spelling
  (`/v1/adapters/{name}`), found by matching the path against the Quart app's url_map (the hot routes' fixed paths
  by a dict lookup first); a path no route matches is `unmatched`, a method outside a fixed set `other`: the label
  sets stay bounded whatever clients send.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map

from outrider.http.hot import ASGIApp, Message, Receive, Scope, Send
from outrider.logs import request_id
from outrider.metrics.own import HTTP_METHODS, HttpMetrics

access_log = logging.getLogger("outrider.access")

UNMATCHED = "unmatched"
OTHER_METHOD = "other"
REQUEST_ID_HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_CONVERTER = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")  # werkzeug's `<path:name>` -> OpenAPI's `{name}`
_METHODS = {m: m for m in HTTP_METHODS}


def openapi_template(rule: str) -> str:
    """`/v1/adapters/<path:name>` -> `/v1/adapters/{name}`."""
    return _CONVERTER.sub(r"{\1}", rule)


class RouteTable:
    """Maps a request's method and path onto its route template, or `unmatched`."""

    def __init__(self, url_map: Map, fixed: Iterable[str] | Mapping[str, str]) -> None:
        """`fixed`: the hot routes' paths, or each path served there to its route (HotRoutes.spellings)."""
        self.fixed = dict(fixed) if isinstance(fixed, Mapping) else {path: path for path in fixed}
        self._adapter = url_map.bind("localhost")  # no host matching: the server name is never looked at
        self._labels = {rule.rule: openapi_template(rule.rule) for rule in url_map.iter_rules()}

    @property
    def templates(self) -> frozenset[str]:
        return frozenset(self.fixed.values()) | frozenset(self._labels.values())

    def route(self, method: str, path: str) -> str:
        fixed = self.fixed.get(path)
        if fixed is not None:
            return fixed
        try:
            rule, _ = self._adapter.match(path, method=method, return_rule=True)
        except MethodNotAllowed as exc:  # the path is a route's; the method is not one it takes (a 405)
            allowed = next(iter(exc.valid_methods or ()), None)
            if allowed is None:
                return UNMATCHED
            try:
                rule, _ = self._adapter.match(path, method=allowed, return_rule=True)
            except HTTPException:
                return UNMATCHED
        except HTTPException:  # NotFound, or a redirect to the canonical slash form
            return UNMATCHED
        return self._labels.get(rule.rule, UNMATCHED)


class Observe:
    """ASGI middleware: request id, access log, request metrics. See the module docstring."""

    def __init__(self, app: ASGIApp, routes: RouteTable, metrics: HttpMetrics | None) -> None:
        self._app = app
        self._routes = routes
        self._metrics = metrics
        # Children bound once per label set: `labels()` costs a lock and a dict lookup per call otherwise.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}
        self._prefix = os.urandom(6).hex()
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = self._request_id(scope)
        header = (REQUEST_ID_HEADER, rid.encode())
        status = 0
        sent = 0

        async def observed_send(message: Message) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            elif kind == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        token = request_id.set(rid)
        try:
            await self._app(scope, receive, observed_send)
        except BaseException:
            if not status:
                status = 500  # what hypercorn answers for an app that raised before answering
            raise
        finally:
            self._record(scope, rid, status, time.perf_counter() - started, sent)
            request_id.reset(token)

    def _request_id(self, scope: Scope) -> str:
        for name, value in scope.get("headers", ()):
            if name == REQUEST_ID_HEADER:
                if _SANE_ID.fullmatch(value):
                    return str(value.decode("ascii"))
                break
        return f"{self._prefix}-{next(self._ids):x}"

    def _record(self, scope: Scope, rid: str, status: int, seconds: float, sent: int) -> None:
        method = _METHODS.get(scope["method"], OTHER_METHOD)
        path: str = scope.get("path", "")
        route = self._routes.route(method, path)
        if self._metrics is not None:
            key = (method, route, status)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = self._metrics.requests.labels(method, route, str(status))
            counter.inc()
            histogram = self._histograms.get((method, route))
            if histogram is None:
                histogram = self._histograms[(method, route)] = self._metrics.duration.labels(method, route)
            histogram.observe(seconds)
        # Probes and /metrics are called all day by the kubelet and Prometheus: at INFO they would be most of the
        # log and bury the requests that change something, so they are logged at DEBUG only.
        level = logging.DEBUG if route in self._routes.fixed else logging.INFO
        if access_log.isEnabledFor(level):
            raw = scope.get("raw_path")  # as sent, still %-encoded: no control characters can reach the log
            shown = raw.decode("ascii", "replace") if isinstance(raw, bytes) else path
            client = scope.get("client")
            access_log.log(
                level,
                "%s %s %d %.1fms",
                scope["method"],
                shown,
                status,
                seconds * 1000,
                extra={
                    "method": scope["method"],
                    "path": shown,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "bytes": sent,
                    "client": f"{client[0]}:{client[1]}" if client else None,
                },
            )
