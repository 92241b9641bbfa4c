"""The optional API token and the body limit, over real sockets, on the hot routes and the Quart routes alike."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import trio

from tests.fakes.engine import FakeEngine
from tests.integration.conftest import fast_settings, start_outrider

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
