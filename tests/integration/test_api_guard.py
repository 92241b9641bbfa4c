"""The optional API token and the body limit, over real sockets, on the hot routes and the Quart routes alike."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from pydantic import SecretStr

from tests.fakes.engine import FakeEngine
from tests.integration.conftest import fast_settings, start_outrider
from tests.integration.lifecycle_fixtures import lifecycle_settings, outrider_settings

TOKEN = "tok-0123456789abcdef-outrider"


async def test_without_a_token_configured_nothing_is_challenged(nursery: trio.Nursery, vllm_engine: FakeEngine) -> None:
    o = await start_outrider(nursery, fast_settings(vllm_engine))
    response = await o.client.post("/v1/downloads", content=b"{}")
    assert response.status_code == 400  # validation, not auth
    assert response.json()["error"]["field"]
    o.shutdown.set()


async def test_state_changing_routes_need_the_token(
    nursery: trio.Nursery, vllm_engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    o = await start_outrider(nursery, fast_settings(vllm_engine, api_token=TOKEN))
    routes = [
        ("POST", "/v1/downloads"),
        ("POST", "/v1/download_model"),
        ("POST", "/v1/model/download"),
        ("PUT", "/v1/adapters/a"),
        ("DELETE", "/v1/adapters/a"),
        ("POST", "/v1/lora_adapter/load"),
        ("POST", "/v1/load_lora_adapter"),
        ("POST", "/v1/unload_lora_adapter"),
        ("POST", "/metrics"),  # a hot route: the guard covers those too
    ]
    for method, path in routes:
        missing = await o.client.request(method, path, content=b"{}")
        assert missing.status_code == 401, (method, path, missing.text)
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["error"]["type"] == "unauthorized"
        basic = await o.client.request(method, path, content=b"{}", headers={"authorization": "Basic " + TOKEN})
        assert basic.status_code == 401, (method, path)
        wrong = await o.client.request(method, path, content=b"{}", headers={"authorization": "Bearer nope" + TOKEN})
        assert wrong.status_code == 403, (method, path, wrong.text)
        assert wrong.json()["error"]["type"] == "forbidden"
        right = await o.client.request(method, path, content=b"{}", headers={"authorization": f"Bearer {TOKEN}"})
        assert right.status_code not in (401, 403), (method, path, right.text)
        assert TOKEN not in missing.text + wrong.text + right.text
    # Reads, probes and /metrics stay open by default.
    for path in ("/health", "/healthz", "/ready", "/metrics", "/v1/downloads", "/v1/adapters"):
        assert (await o.client.get(path)).status_code not in (401, 403), path
    assert TOKEN not in caplog.text
    o.shutdown.set()


async def test_protect_metrics_keeps_probes_open(nursery: trio.Nursery, vllm_engine: FakeEngine) -> None:
    o = await start_outrider(nursery, fast_settings(vllm_engine, api_token=TOKEN, protect_metrics=True))
    assert (await o.client.get("/metrics")).status_code == 401
    ok = await o.client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and "outrider_engine_up" in ok.text
    for path in ("/health", "/healthz"):
        assert (await o.client.get(path)).status_code == 200
    assert (await o.client.get("/ready")).status_code in (200, 503)
    o.shutdown.set()


async def test_bodies_over_the_limit_are_413_json(nursery: trio.Nursery, vllm_engine: FakeEngine) -> None:
    o = await start_outrider(nursery, fast_settings(vllm_engine, max_body_size=64 * 1024))
    big = b'{"source": "' + b"x" * (70 * 1024) + b'"}'
    declared = await o.client.post("/v1/downloads", content=big)
    assert declared.status_code == 413
    assert declared.json()["error"] == {
        "type": "payload_too_large",
        "message": f"request body of {len(big)} bytes is over the limit of {64 * 1024}",
        "field": "body",
    }

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: Quart's MAX_CONTENT_LENGTH must catch it
        yield big[: len(big) // 2]
        yield big[len(big) // 2 :]

    streamed = await o.client.post("/v1/downloads", content=chunked())
    assert streamed.status_code == 413
    assert streamed.headers["content-type"] == "application/json"
    assert "error" in streamed.json()
    o.shutdown.set()


# ----- path spellings: protection follows the route that answers, not how its path is written ------------------

PROTECTED_READS = ["/v1/runtime/models", "/v1/runtime/snapshot"]
PROTECTED_WRITES = [
    "/v1/runtime/models/activate",
    "/v1/runtime/models/deactivate",
    "/v1/runtime/models/sleep",
    "/v1/runtime/models/wake",
    "/v1/runtime/models/kv-limit",
]


def spellings(path: str) -> list[str]:
    """Other ways to write `path` in a request line: doubled slashes, dot segments, encoded slashes, case, a
    trailing slash, `;` parameters, a query, a `..` detour. A router may serve any of them as `path`."""
    parts = path.strip("/").split("/")
    out = ["/" + path, "//" + path, "/." + path, path + "/", path + ";x", path + "?x=1", path + "%3Fx", path + "/."]
    for i in range(1, len(parts)):
        head, tail = "/".join(parts[:i]), "/".join(parts[i:])
        out += [f"/{head}//{tail}", f"/{head}/./{tail}", f"/{head}%2f{tail}", f"/{head}%2F{tail}"]
        out += [f"/{head}/x/../{tail}", f"/{head};x/{tail}", f"/{head}/%2e/{tail}"]
    for i in range(len(parts)):
        for variant in (parts[i].upper(), parts[i].capitalize()):
            out.append("/" + "/".join([*parts[:i], variant, *parts[i + 1 :]]))
    out.append("/" + "/".join(f"%{ord(c):02X}" if c.isalpha() else c for c in path.strip("/")))
    return [s for s in dict.fromkeys(out) if s != path]


async def raw_request(url: str, method: str, target: str, token: str | None = None) -> tuple[int, bytes]:
    """One request with `target` sent exactly as written (an HTTP client would normalise it), over a socket."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = f"{method} {target} HTTP/1.1\r\nHost: outrider\r\n{auth}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    stream = await trio.open_tcp_stream(host, int(port))
    data = b""
    with trio.fail_after(10):
        await stream.send_all(head.encode())
        while piece := await stream.receive_some(65536):
            data += piece
    await stream.aclose()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_every_spelling_of_a_protected_route_needs_the_token(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    settings = outrider_settings(tmp_path, vllm_engine.base_url, api_token=SecretStr(TOKEN), protect_metrics=True)
    o = await start_outrider(nursery, settings, lifecycle=lifecycle_settings(tmp_path))
    checks = [("GET", p) for p in [*PROTECTED_READS, "/metrics"]] + [("HEAD", p) for p in PROTECTED_READS]
    checks += [("POST", p) for p in PROTECTED_WRITES]
    served = 0
    for method, path in checks:
        canonical, _ = await raw_request(o.url, method, path)
        assert canonical == 401, (method, path)
        for target in spellings(path):
            anonymous, body = await raw_request(o.url, method, target)
            authorised, _ = await raw_request(o.url, method, target, TOKEN)
            # What the route serves with the token, a request without one must not get: whatever the spelling.
            if 200 <= authorised < 300:
                served += 1
                assert anonymous == 401, (method, target, anonymous, body)
            assert not 200 <= anonymous < 300, (method, target, anonymous, body)
    # Some spellings are served (the router drops leading slashes, hypercorn decodes %2F): the loop tested those.
    assert served > 0
    for probe in ("/health", "/healthz", "/ready"):
        status, _ = await raw_request(o.url, "GET", probe)
        assert status in (200, 503), probe
    o.shutdown.set()
