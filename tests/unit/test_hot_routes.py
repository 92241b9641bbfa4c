"""The hot routes: Accept-Encoding parsing for the gzip'd /metrics body, and HEAD answered as GET without a body."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from outrider.http.hot import ASGIApp, HotRoutes, Message, Receive, Scope, Send, accepts_gzip
from outrider.metrics.scraper import Snapshot
from outrider.service import build_runtime
from outrider.settings import Settings
from tests.conftest import fixtures_dir


@pytest.mark.parametrize(
    ("header", "gzip"),
    [
        (b"gzip", True),
        (b"identity, gzip", True),
        (b"GZIP;q=0.5", True),
        (b"*", True),
        (b"gzip;q=0", False),
        (b"gzip; q=0.0, identity", False),
        (b"deflate, br", False),
        (b"gzip;q=bogus", False),
        (None, False),
    ],
)
def test_accepts_gzip(header: bytes | None, gzip: bool) -> None:
    headers = [] if header is None else [(b"accept-encoding", header)]
    assert accepts_gzip({"headers": headers}) is gzip


async def _call(app: ASGIApp, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[Message, bytes]:
    """One request straight to the ASGI app: the response start message and the body."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "headers": headers}, receive, send)
    start, body = sent
    return start, bytes(body["body"])


async def _not_hot(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError(f"{scope['path']} reached the app behind the hot routes")


@pytest.mark.parametrize("encoding", [b"identity", b"gzip"])
async def test_head_answers_what_get_would_without_the_body(
    mock_clock: trio.testing.MockClock, encoding: bytes
) -> None:
    """With the clock stopped the /metrics page is not recomposed between the two requests, so HEAD's headers
    (its content-length included) are held to GET's exactly, on every hot route."""
    settings = Settings(engine="vllm", engine_base_url="http://engine.invalid", pod="test-pod")
    runtime = build_runtime(settings)
    # A real engine page, served as it is: what matters here is a long page, not its rewriting.
    engine_page = (fixtures_dir() / "vllm-0.32.0-cpu.prom").read_bytes()
    runtime.scraper.snapshot = Snapshot(engine_page, trio.current_time())
    hot = HotRoutes(_not_hot, runtime)
    try:
        for path in sorted(hot.paths):
            got, body = await _call(hot, "GET", path, [(b"accept-encoding", encoding)])
            headed, empty = await _call(hot, "HEAD", path, [(b"accept-encoding", encoding)])
            assert got["status"] == 200, path
            assert headed == got and empty == b"", path
            assert (b"content-length", b"%d" % len(body)) in got["headers"], path
    finally:
        assert runtime.adapters is not None
        await runtime.adapters.engine.aclose()
