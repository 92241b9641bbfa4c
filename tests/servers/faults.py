"""S3-dialect endpoints that answer with errors: the 5xx and throttling answers moto cannot be made to give.

- `FaultServer` fails every request with one status and an S3 XML error body (and a Retry-After when given). It
  records each request's Authorization header, so a test can see what credentials a client sent to an endpoint.
- `ThrottlingProxy` stands in front of a real endpoint (moto) and answers the first `throttle_lists` listings,
  `throttle_heads` HEADs and `throttle` ranged GETs with
  503 SlowDown and a Retry-After, as S3 does under load; everything else is passed through, ranged GETs after
  `delay` seconds (a store under load is slow too, and a download then still has reads to start after the
  throttled one). It records when each ranged GET arrived, so a test can see how a client spaced its requests.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

from tests.servers._threaded import QuietHandler, ThreadedServer, forward

_CODES = {500: "InternalError", 503: "SlowDown", 429: "TooManyRequests", 403: "AccessDenied"}


def error_body(status: int, message: str) -> bytes:
    code = _CODES.get(status, "InternalError")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>fault</RequestId><HostId>fault</HostId></Error>"
    ).encode()


class FaultServer(ThreadedServer):
    def __init__(self, status: int = 500, retry_after: str | None = None) -> None:
        super().__init__(_FaultHandler)
        self.status = status
        self.retry_after = retry_after
        self.requests = 0
        self.seen_auth: list[str | None] = []  # the Authorization header of each request, None when unsigned


class _FaultHandler(QuietHandler):
    def _fail(self) -> None:
        app: FaultServer = self.server.app  # type: ignore[attr-defined]
        app.requests += 1
        app.seen_auth.append(self.headers.get("Authorization"))
        headers = {"Content-Type": "application/xml"}
        if app.retry_after is not None:
            headers["Retry-After"] = app.retry_after
        self.reply(app.status, error_body(app.status, f"injected {app.status}"), headers)

    do_GET = do_HEAD = do_PUT = do_POST = _fail


class ThrottlingProxy(ThreadedServer):
    def __init__(
        self,
        upstream: str,
        *,
        throttle: int,
        retry_after: str,
        delay: float = 0.0,
        throttle_lists: int = 0,
        throttle_heads: int = 0,
    ) -> None:
        super().__init__(_ThrottlingHandler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.throttle = throttle  # ranged GETs still to answer with SlowDown
        self.retry_after = retry_after
        self.delay = delay
        self.throttled: list[float] = []  # time.monotonic() of each SlowDown answer
        self.gets: list[float] = []  # time.monotonic() at which each ranged GET arrived
        # Listings (GETs without a Range) and HEADs still to answer with SlowDown, and when each of them came.
        self.throttle_metadata = {"GET": throttle_lists, "HEAD": throttle_heads}
        self.metadata: list[tuple[float, str, bool]] = []  # (time.monotonic(), method, throttled)
        self._lock = threading.Lock()


class _ThrottlingHandler(QuietHandler):
    def _handle(self) -> None:
        app: ThrottlingProxy = self.server.app  # type: ignore[attr-defined]
        if self.command in ("GET", "HEAD") and not self.headers.get("Range"):
            with app._lock:
                throttle = app.throttle_metadata[self.command] > 0
                app.throttle_metadata[self.command] -= throttle
                app.metadata.append((time.monotonic(), self.command, throttle))
            if throttle:
                headers = {"Content-Type": "application/xml", "Retry-After": app.retry_after}
                self.reply(503, b"" if self.command == "HEAD" else error_body(503, "Slow down."), headers)
                return
        if self.command == "GET" and self.headers.get("Range"):
            with app._lock:
                app.gets.append(time.monotonic())
                throttle = app.throttle > 0
                if throttle:
                    app.throttle -= 1
                    app.throttled.append(time.monotonic())
            if throttle:
                if self.headers.get("Content-Length"):
                    self.rfile.read(int(self.headers["Content-Length"]))
                headers = {"Content-Type": "application/xml", "Retry-After": app.retry_after}
                self.reply(503, error_body(503, "Please reduce your request rate."), headers)
                return
            time.sleep(app.delay)  # the slow store this stands for, not synchronization
        self.reply(*forward(self, app.upstream))

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle
