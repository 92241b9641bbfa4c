"""What the request middleware (http/observe.py) costs per request, measured in-process without sockets.

Usage: python bench/observe_bench.py [--requests N]

The hot routes are driven directly as ASGI apps, with and without `Observe` around them, so the difference is the
middleware alone: the request id, the send wrapper, the route lookup, the metric updates and the (disabled at
INFO) access log check. It also times the route lookup of a Quart route (a werkzeug match) and of an unmatched path,
and one access log event formatted as JSON (what an INFO-level API request adds). Each figure is the best of 5 runs
(the least disturbed by other work on the machine). No network, no engine: the runtime's scraper never runs.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import trio

from outrider import logs
from outrider.http.app import create_app
from outrider.http.guard import Guard
from outrider.http.hot import ASGIApp, HotRoutes, Message, Scope
from outrider.http.observe import Observe, RouteTable
from outrider.service import build_runtime
from outrider.settings import Settings

ROUNDS = 5


def scope(path: str) -> Scope:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:9000"), (b"user-agent", b"Prometheus/2.53"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50000),
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Message) -> None:
    pass


async def per_request(app: ASGIApp, path: str, n: int) -> float:
    """Best-of-ROUNDS seconds per request."""
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(n):
            await app(scope(path), receive, send)
        best = min(best, (time.perf_counter() - started) / n)
    return best


def per_call(fn: Callable[[], Any], n: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n)
    return best


async def main(n: int) -> None:
    logs.configure("info", "json", io.StringIO())
    runtime = build_runtime(Settings(engine="vllm", engine_base_url="http://127.0.0.1:9"))
    app = create_app(runtime)
    hot = HotRoutes(cast(ASGIApp, app), runtime)
    routes = RouteTable(app.url_map, hot.paths)
    guard = Guard(hot, routes, token=None, protect_metrics=False, max_body_size=1 << 20)
    observed = Observe(guard, routes, runtime.metrics.http)
    print(f"{n} requests x best of {ROUNDS}; microseconds per request")
    for path in ("/health", "/metrics"):
        bare = await per_request(guard, path, n)
        wrapped = await per_request(observed, path, n)
        print(
            f"GET {path:9} guard+hot {bare * 1e6:7.2f}  with Observe {wrapped * 1e6:7.2f}  "
            f"middleware {(wrapped - bare) * 1e6:6.2f}"
        )
    print(f"route lookup, hot path       {per_call(lambda: routes.route('GET', '/metrics'), n) * 1e6:6.2f}")
    print(f"route lookup, Quart route    {per_call(lambda: routes.route('GET', '/v1/adapters/x'), n) * 1e6:6.2f}")
    print(f"route lookup, unmatched path {per_call(lambda: routes.route('GET', '/no/such/path'), n) * 1e6:6.2f}")
    access = logging.getLogger("outrider.access")
    extra = {"method": "GET", "path": "/v1/adapters/x", "route": "/v1/adapters/{name}", "status": 200}
    one_event = per_call(lambda: access.info("GET /v1/adapters/x 200 1.0ms", extra=extra), max(1, n // 10))
    print(f"one INFO access event (JSON) {one_event * 1e6:6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    trio.run(main, parser.parse_args().requests)
