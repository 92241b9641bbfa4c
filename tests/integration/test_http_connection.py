"""Keep-alive connections over a real socket: an answer given before the request body arrived must not wedge the
connection (the next request answered, or the connection closed; never silence). See http/shielded.py."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.fakes.engine import FakeEngine
from tests.integration.conftest import fast_settings, start_outrider

BODY = b'{"lora_name": "a", "lora_path": "/volume/adapters/a"}'


def request_head(method: str, path: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: outrider\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()


async def read_answer(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """(status line, rest already received); (b"", b"") when the server closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            piece = await stream.receive_some(65536)
        except trio.BrokenResourceError:  # a reset is a close too
            return b"", b""
        if not piece:
            return b"", b""
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    while len(rest) < length:
        rest += await stream.receive_some(65536)
    return lines[0], rest[length:]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("PATCH", "/v1/lora_adapter/load", b"405"),  # Quart's routing answers without reading the body
        ("PATCH", "/v1/downloads", b"405"),
        ("POST", "/no/such/route", b"404"),
        ("PATCH", "/health", b"405"),  # a hot route
    ],
)
async def test_an_answer_before_the_body_arrived_leaves_no_wedged_connection(
    nursery: trio.Nursery, vllm_engine: FakeEngine, method: str, path: str, status: bytes
) -> None:
    o = await start_outrider(nursery, fast_settings(vllm_engine))
    host, port = o.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    with trio.fail_after(5):
        await stream.send_all(request_head(method, path))
        line, _ = await read_answer(stream)  # answered from the headers alone
        assert status in line
        await trio.testing.wait_all_tasks_blocked()  # the server is done with that answer (in-process, same loop)
        await stream.send_all(BODY)  # the body arrives after the answer, as a second packet
        try:
            await stream.send_all(request_head("GET", "/v1/adapters"))
        except trio.BrokenResourceError:
            pass  # closed already: the client opens a new connection, as it must
        else:
            line, _ = await read_answer(stream)
            assert line == b"" or b"200" in line  # answered, or closed; never silence until the timeout
    await stream.aclose()
    o.shutdown.set()
