"""A tiny HTTP object store over real sockets, a fault-injecting TCP proxy, and a `Source` that reads from them.

The store (`RangeServer`, a threaded `http.server`) serves `files` at `/files/<path>` with `Range: bytes=a-b`
(206 + Content-Range, as S3 does) and lists them at `/_list` as JSON (path, size, sha256, version). It counts every
ranged GET per path, and can answer the next N GETs with 500, refuse paths with 403, and throttle its sends.
Differences from S3: no auth, no XML, one flat listing; none of that matters to the transfer engine.

`FaultProxy` sits between the source and the store; each new connection takes the next action: "pass", "reset"
(forward part of the answer, then close with RST) or "stall" (hold the answer until released or closed).

`HttpRangeSource` is the engine's view: ranged GETs with `http.client`, a per-read socket timeout (a stall becomes a
SourceTransientError), 5xx/resets as transient, 403/404 as permanent, bodies read in PIECE_SIZE pieces.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import http.client
import http.server
import json
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping

from outrider.errors import InvalidSource, SourceAccessDenied, SourceError, SourceNotFound, SourceTransientError
from outrider.sources.base import PIECE_SIZE, Checksum, RemoteFile, Source

_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")
_SEND = 64 * 1024


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients reset connections on purpose in these tests; a traceback per reset is noise


class RangeServer:
    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = dict(files)
        self.versions: dict[str, str] = {}
        self.gets: list[tuple[str, int, int]] = []
        self.fail_next = 0  # answer this many coming GETs with 500
        self.forbidden: set[str] = set()
        self.bytes_per_second: float | None = None  # per connection, when set
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer._handle(self)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> RangeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets_of(self, path: str) -> list[tuple[int, int]]:
        with self._lock:
            return [(s, e) for p, s, e in self.gets if p == path]

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        if url.path == "/_list":
            listing = [
                {
                    "path": p,
                    "size": len(d),
                    "sha256": hashlib.sha256(d).hexdigest(),
                    "version": self.versions.get(p, "1"),
                }
                for p, d in sorted(self.files.items())
            ]
            self._send(h, 200, json.dumps(listing).encode(), {"Content-Type": "application/json"})
            return
        path = urllib.parse.unquote(url.path.removeprefix("/files/"))
        data = self.files.get(path)
        match = _RANGE.match(h.headers.get("Range", ""))
        if data is None:
            self._send(h, 404, b"NoSuchKey")
            return
        if path in self.forbidden:
            self._send(h, 403, b"AccessDenied")
            return
        start, end = (int(match.group(1)), int(match.group(2)) + 1) if match else (0, len(data))
        with self._lock:
            self.gets.append((path, start, end))
            failing = self.fail_next > 0
            self.fail_next -= 1 if failing else 0
        if failing:
            self._send(h, 500, b"InternalError")
            return
        end = min(end, len(data))
        headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"} if match else {}
        self._send(h, 206 if match else 200, memoryview(data)[start:end], headers)

    def _send(
        self,
        h: http.server.BaseHTTPRequestHandler,
        status: int,
        body: bytes | memoryview,
        headers: Mapping[str, str] = {},
    ) -> None:
        try:
            h.send_response(status)
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            for i in range(0, len(body), _SEND):
                h.wfile.write(body[i : i + _SEND])
                if self.bytes_per_second:
                    time.sleep(_SEND / self.bytes_per_second)
        except (BrokenPipeError, ConnectionResetError):
            pass


class FaultProxy:
    """A TCP proxy whose connections each follow the next scripted action (default "pass")."""

    def __init__(self, upstream_port: int, reset_after: int = 300_000) -> None:
        self.upstream_port = upstream_port
        self.reset_after = reset_after
        self.actions: collections.deque[str] = collections.deque()
        self.release = threading.Event()
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self._closed = True
        self.release.set()
        self.sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            action = self.actions.popleft() if self.actions else "pass"
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, None, "pass"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, client, action), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, client: socket.socket | None, action: str) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if action == "stall":
                    self.release.wait(60)
                    break
                if action == "reset" and sent + len(data) >= self.reset_after:
                    dst.sendall(data[: max(0, self.reset_after - sent)])
                    assert client is not None
                    # SO_LINGER 0: close with RST, as a dropped connection looks to the reader.
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()


class HttpRangeSource(Source):
    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme != "http" or not url.hostname or not url.port:
            raise InvalidSource(f"expected http://host:port, got {base_url!r}", field="source")
        self.host, self.port = url.hostname, url.port
        self.timeout = timeout
        self.display = f"http://{self.host}:{self.port}"

    def _get(
        self, path: str, headers: Mapping[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", path, headers=dict(headers))
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise SourceTransientError(f"{self.display}{path}: {exc!r}") from None
        if response.status >= 500:
            conn.close()
            raise SourceTransientError(f"{self.display}{path}: {response.status} {response.reason}")
        if response.status == 403:
            conn.close()
            raise SourceAccessDenied(f"{self.display}{path}: 403 AccessDenied")
        if response.status == 404:
            conn.close()
            raise SourceNotFound(f"{self.display}{path}: 404 NoSuchKey")
        return conn, response

    def list_files(self) -> list[RemoteFile]:
        conn, response = self._get("/_list", {})
        try:
            listing = json.loads(response.read())
        finally:
            conn.close()
        return [RemoteFile(e["path"], e["size"], Checksum("sha256", e["sha256"]), e["version"]) for e in listing]

    def read_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        quoted = "/files/" + urllib.parse.quote(path)
        conn, response = self._get(quoted, {"Range": f"bytes={start}-{end - 1}"})
        return self._pieces(conn, response, quoted, end - start)

    def _pieces(
        self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, path: str, length: int
    ) -> Iterator[bytes]:
        try:
            if response.status != 206:
                raise SourceError(f"{self.display}{path}: expected 206 for a ranged GET, got {response.status}")
            left = length
            while left > 0:
                try:
                    piece = response.read(min(PIECE_SIZE, left))
                except (OSError, http.client.HTTPException) as exc:
                    raise SourceTransientError(f"{self.display}{path}: {exc!r}") from None
                if not piece:
                    raise SourceTransientError(f"{self.display}{path}: connection closed early")
                left -= len(piece)
                yield piece
        finally:
            conn.close()


def http_opener(source: str, config: Mapping[str, object] | None) -> Source:
    """A SourceOpener for `http://127.0.0.1:PORT` stores; config may set `timeout` (seconds per read)."""
    timeout = (config or {}).get("timeout", 5.0)
    if not isinstance(timeout, int | float):
        raise InvalidSource("timeout must be a number", field="config")
    return HttpRangeSource(source, float(timeout))
