"""A body nested past the depth limit is a 400 naming the field on every JSON route, never a 500 (issue #14)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trio

from outrider.http.body import MAX_JSON_DEPTH
from outrider.transfer.settings import DownloadSettings
from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import Running, start_outrider
from tests.integration.lora_fixtures import lora_settings, root, vllm

__all__ = ["root", "vllm"]  # fixtures

# Deep enough to exhaust Python's recursion limit in json.loads: what turned into a 500 and a logged traceback.
DEEP = 100_000
DEEP_BODY = b"[" * DEEP + b"]" * DEEP

# Every route that reads a JSON body, with the method it takes.
JSON_ROUTES = [
    ("POST", "/v1/downloads"),
    ("PUT", "/v1/adapters/a"),
    ("DELETE", "/v1/adapters/a"),
    ("POST", "/v1/download_model"),
    ("POST", "/v1/load_lora_adapter"),
    ("POST", "/v1/unload_lora_adapter"),
    ("POST", "/v1/model/download"),
    ("POST", "/v1/lora_adapter/load"),
    ("POST", "/v1/lora_adapter/unload"),
]


async def _start(nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path) -> Running:
    return await start_outrider(nursery, lora_settings(vllm, root, downloads=DownloadSettings(model_root=str(root))))


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logged = [r for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]
    assert not logged, [r.getMessage() for r in logged]


async def test_a_deep_body_is_a_400_on_every_json_route(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    o = await _start(nursery, vllm, root)
    for method, path in JSON_ROUTES:
        response = await o.client.request(method, path, content=DEEP_BODY)
        assert response.status_code == 400, (method, path, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request" and error["field"] == "body", (method, path, error)
        assert "nest" in error["message"] and str(MAX_JSON_DEPTH) in error["message"], (method, path, error)
    _no_traceback(caplog)
    o.shutdown.set()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/download_model", {"source": "s3://b/p", "output_dir": "m", "config": _nested(DEEP)}, "config"),
        ("/v1/load_lora_adapter", {"lora_name": "a", "source": "pvc://a", "config": _nested(DEEP)}, "config"),
        (
            "/v1/model/download",
            {"model_uri": "s3://b/p", "download_extra_config": _nested(DEEP)},
            "download_extra_config",
        ),
        # Just past the limit, far under the recursion limit: refused all the same, not left to what parses it.
        (
            "/v1/download_model",
            {
                "source": "s3://b/p",
                "output_dir": "m",
                "config": '{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1),
            },
            "config",
        ),
    ],
)
async def test_a_deep_config_string_is_a_400_naming_it(
    nursery: trio.Nursery,
    vllm: FakeLoraEngine,
    root: Path,
    caplog: pytest.LogCaptureFixture,
    path: str,
    body: dict[str, object],
    field: str,
) -> None:
    """The compatible routes take `config` as a JSON string too; the string is held to the body's limit."""
    caplog.set_level(logging.DEBUG)
    o = await _start(nursery, vllm, root)
    response = await o.client.post(path, content=json.dumps(body).encode())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == field and "nest" in error["message"], error
    _no_traceback(caplog)
    o.shutdown.set()


async def test_a_body_at_the_limit_is_parsed(nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path) -> None:
    """At the limit, a body reaches the route's own checks: the limit does not refuse what it documents."""
    o = await _start(nursery, vllm, root)
    # The object holding `source` is level 1; `include` nests MAX_JSON_DEPTH - 1 more arrays.
    body = '{"source": "s3://b/p", "dest": "m", "include": ' + _nested(MAX_JSON_DEPTH - 1) + "}"
    response = await o.client.post("/v1/downloads", content=body.encode())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"].startswith("include"), response.text
    o.shutdown.set()
