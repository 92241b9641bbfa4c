"""A ThreadingHTTPServer on 127.0.0.1:<free port>, run in a daemon thread, that tests start and stop."""

from __future__ import annotations

import http.client
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class QuietHandler(BaseHTTPRequestHandler):
    """Keep-alive handler that does not log every request to stderr, with small reply helpers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def forward(handler: BaseHTTPRequestHandler, upstream: tuple[str, int]) -> tuple[int, bytes, dict[str, str]]:
    """Send the handler's request on to `upstream` unchanged (Host header included, so SigV4 signatures made for
    the proxy's address still verify there); its answer's status, body and end-to-end headers."""
    length = int(handler.headers.get("Content-Length") or 0)
    body = handler.rfile.read(length) if length else None
    connection = http.client.HTTPConnection(*upstream, timeout=30)
    try:
        connection.request(handler.command, handler.path, body=body, headers=dict(handler.headers.items()))
        response = connection.getresponse()
        data = response.read()
        headers = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
    finally:
        connection.close()
    return response.status, data, headers


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end] inclusive for a single `bytes=` range, or None for no/ignored Range; ValueError: unsatisfiable."""
    if not header:
        return None
    match = _RANGE_RE.match(header.strip())
    if match is None or match.group(0) == "bytes=-":
        return None  # a malformed or multi-range header is ignored, as RFC 9110 allows
    first, last = match.groups()
    if first == "":
        length = int(last)
        if length == 0:
            raise ValueError("unsatisfiable")
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise ValueError("unsatisfiable")
    return start, end


class ThreadedServer:
    """Owns the listening socket and its thread; `handler.server.app` reaches the owner from a handler."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.app = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
