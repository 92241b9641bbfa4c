"""A stand-in inference engine for the benchmark: a lean asyncio HTTP/1.1 server on loopback (stdlib only).

Routes:
  GET /metrics                  the fixture page given by --page (a real vLLM page), text format 0.0.4
  GET /v1/models                a minimal OpenAI-style model list
  GET /_bench/delay?seconds=S   from now on, wait S seconds before answering /metrics and /v1/models
  GET /_bench/stats             {"delay": S, "requests": {"/metrics": n, ...}}

It keeps connections alive (HTTP/1.1, Content-Length framing), so a sidecar's connection pool is honoured,
and it answers every connection independently: a delay on one scrape does not hold up another. Run it as
`python bench/fake_engine.py --page FILE --port P [--delay S]`; it exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_TYPE = "application/json"
MAX_HEAD = 64 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class Engine:
    def __init__(self, page: bytes, model: str, delay: float) -> None:
        self.page = page
        self.models = json.dumps(
            {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "vllm", "root": model}]}
        ).encode()
        self.delay = delay
        self.requests: Counter[str] = Counter()

    async def answer(self, method: str, target: str) -> tuple[int, str, bytes]:
        url = urlsplit(target)
        path = url.path
        if path.startswith("/_bench/"):
            return self._control(path, parse_qs(url.query))
        self.requests[path] += 1
        if method not in ("GET", "HEAD"):
            return 405, JSON_TYPE, b'{"error": "method not allowed"}'
        if path not in ("/metrics", "/v1/models"):
            return 404, JSON_TYPE, b'{"error": "not found"}'
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        if path == "/metrics":
            return 200, METRICS_TYPE, self.page
        return 200, JSON_TYPE, self.models

    def _control(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        if path == "/_bench/delay":
            try:
                delay = float(query["seconds"][0])
            except (KeyError, IndexError, ValueError):
                return 400, JSON_TYPE, b'{"error": "give ?seconds=S"}'
            if not 0 <= delay <= 600:
                return 400, JSON_TYPE, b'{"error": "seconds must be within [0, 600]"}'
            self.delay = delay
        elif path != "/_bench/stats":
            return 404, JSON_TYPE, b'{"error": "not found"}'
        return 200, JSON_TYPE, json.dumps({"delay": self.delay, "requests": dict(self.requests)}).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    return
                method, target, version = parts
                headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:] if ":" in h)}
                length = int(headers.get("content-length", "0") or "0")
                if length:
                    await reader.readexactly(length)  # bodies are ignored, but must be consumed
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                status, ctype, body = await self.answer(method, target)
                head_out = (
                    f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: {'close' if close else 'keep-alive'}"
                    "\r\n\r\n"
                ).encode("latin-1")
                writer.write(head_out if method == "HEAD" else head_out + body)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return  # shutting down: end quietly (asyncio would log a cancelled connection handler)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def serve(engine: Engine, host: str, port: int) -> None:
    server = await asyncio.start_server(engine.handle, host, port, limit=MAX_HEAD, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--page", required=True, help="file served at GET /metrics")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="tiny", help="model id in /v1/models")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer (default 0)")
    args = parser.parse_args(argv)
    with open(args.page, "rb") as fh:
        page = fh.read()
    try:
        asyncio.run(serve(Engine(page, args.model, args.delay), args.host, args.port))
    except OSError as exc:
        print(f"fake_engine: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
