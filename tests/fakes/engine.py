"""A stand-in engine for integration tests: a real HTTP server on a loopback socket, steerable from the test.

It serves `GET /metrics` (a real fixture page) and `GET /v1/models`, and can be made slow, made to fail with a
status, taken down (its listening socket closed, so connections are refused) and brought back on the same port.
It speaks just enough HTTP/1.1 for httpx: one request per connection, `Connection: close`.
"""

from __future__ import annotations

import json
import math

import trio

from tests.fakes.loopback import LoopbackServer

MAX_HEAD = 64 * 1024


class FakeEngine(LoopbackServer):
    def __init__(self, page: str, model: str = "tiny") -> None:
        super().__init__()
        self.page = page
        self.model = model
        self.delay = 0.0  # seconds before answering /metrics
        self.status = 200
        self.metrics_requests = 0
        self.seen_headers: list[dict[str, str]] = []
        self.kv_event_sources: dict[str, object] | None = None  # vLLM's GET /kv_event_sources answer; None: 404

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                head += chunk
            request_line, *header_lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            self.seen_headers.append(
                {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if ":" in h)}
            )
            status, ctype, body = await self._answer(method, path)
            reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}.get(status, "Status")
            await stream.send_all(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method == "GET" and path == "/metrics":
            self.metrics_requests += 1
            if self.delay and not math.isinf(self.delay):
                await trio.sleep(self.delay)
            elif math.isinf(self.delay):
                await trio.sleep_forever()
            if self.status != 200:
                return self.status, "text/plain", b"engine error"
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.page.encode()
        if method == "GET" and path == "/v1/models":
            body = {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "root": "/m", "parent": None}],
            }
            return 200, "application/json", json.dumps(body).encode()
        if method == "GET" and path == "/kv_event_sources" and self.kv_event_sources is not None:
            return 200, "application/json", json.dumps(self.kv_event_sources).encode()
        return 404, "application/json", b'{"detail": "Not Found"}'
