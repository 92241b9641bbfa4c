"""The served OpenAPI spec against the routes outrider really answers, and strict native input, over sockets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio

from outrider.http.app import create_app
from outrider.http.hot import HotRoutes
from outrider.transfer.settings import DownloadSettings
from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import Running, start_outrider
from tests.integration.lora_fixtures import lora_settings, root, vllm

__all__ = ["root", "vllm"]  # fixtures

TOKEN = "spec-test-token"


async def _start(nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path, token: str | None) -> Running:
    downloads = DownloadSettings(model_root=str(root), pvc_root=str(root))
    return await start_outrider(nursery, lora_settings(vllm, root, api_token=token, downloads=downloads))


def _answered(o: Running) -> set[tuple[str, str]]:
    """(path template, method) for every route the running outrider answers, as the spec spells paths."""
    app = create_app(o.runtime)
    found = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]*:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                found.add((path, method))
    hot = HotRoutes(app, o.runtime).paths  # type: ignore[arg-type]
    return found | {(path, "GET") for path in hot}


@pytest.mark.parametrize("token", [TOKEN, None])
async def test_spec_lists_exactly_the_routes_answered(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path, token: str | None
) -> None:
    o = await _start(nursery, vllm, root, token)
    spec: dict[str, Any] = (await o.client.get("/openapi.json")).json()
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    assert described == _answered(o)
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            state_changing = method.upper() not in ("GET", "HEAD", "OPTIONS")
            lifecycle = path.startswith("/v1/runtime/")  # the engine lifecycle needs the token for reads too
            secured = op.get("security") == [{"bearer": []}]
            assert secured == ((state_changing or lifecycle) and token is not None), (path, method)
            if secured:
                assert {"401", "403"} <= set(op["responses"]), (path, method)
            if "requestBody" in op:
                assert {"400", "413"} <= set(op["responses"]), (path, method)
    assert ("securitySchemes" in spec["components"]) == (token is not None)
    # The examples hold placeholders only: nothing that looks like a real key or token.
    text = (await o.client.get("/openapi.json")).text
    assert not re.search(r"AKIA[0-9A-Z]{16}|hf_[A-Za-z0-9]{20,}|[A-Za-z0-9/+]{40}", text)
    o.shutdown.set()


async def test_docs_page_loads_without_the_internet(nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path) -> None:
    o = await _start(nursery, vllm, root, None)
    page = await o.client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in page.text
    # Everything the page loads comes from this server: no CDN, so it works where the internet is out of reach.
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and all(url.startswith("/docs/assets/") for url in urls), urls
    for url, kind, marker in zip(
        sorted(urls), ("text/javascript", "text/css"), ("SwaggerUIBundle", ".swagger-ui"), strict=True
    ):
        asset = await o.client.get(url)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), url
        assert marker in asset.text
    missing = await o.client.get("/docs/assets/passwd")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "asset"
    o.shutdown.set()


@pytest.mark.parametrize(
    ("method", "path", "content", "headers", "status", "field"),
    [
        ("PUT", "/v1/adapters/a", b'{"source": "pvc://a", "surprise": 1}', {}, 400, "surprise"),
        ("PUT", "/v1/adapters/a", b'{"source": "pvc://a", "config": {"endpoint": 5}}', {}, 400, "config.endpoint"),
        ("PUT", "/v1/adapters/a", b'{"source": "pvc://a", "config": {"nope": "x"}}', {}, 400, "config.nope"),
        ("PUT", "/v1/adapters/a", b'{"source": "' + b"x" * 4097 + b'"}', {}, 400, "source"),
        ("PUT", "/v1/adapters/a", b"source=x", {"content-type": "application/x-www-form-urlencoded"}, 400, "body"),
        ("PUT", "/v1/adapters/a", b'{"source": "pvc://a"}', {"content-type": "text/plain"}, 202, None),
        ("DELETE", "/v1/adapters/a", b'{"wait": "yes"}', {}, 400, "wait"),
        ("DELETE", "/v1/adapters/a?wait=soon", b"", {}, 400, "wait"),
        ("POST", "/v1/downloads", b'{"source": "s3://b/p", "dest": "m", "workers": 2.5}', {}, 400, "workers"),
        ("POST", "/v1/downloads", b'{"source": "s3://b/p", "dest": "' + b"d" * 4097 + b'"}', {}, 400, "dest"),
        ("POST", "/v1/downloads", b'{"source": "s3://b/p", "dest": "m", "exclude": ["a", 1]}', {}, 400, "exclude.1"),
        ("GET", "/v1/downloads/no-such-job", None, {}, 404, "id"),
        ("GET", "/v1/adapters/%00", None, {}, 400, "name"),
        ("POST", "/v1/load_lora_adapter", b'{"lora_name": "a", "source": "' + b"s" * 4097 + b'"}', {}, 400, "source"),
        ("PATCH", "/v1/downloads", None, {}, 405, None),
        # Found by `nox -s fuzz` (both were 500s): an endpoint the S3 SDK refuses, a name too long for the disk.
        (
            "POST",
            "/v1/downloads",
            '{"source": "s3://bucket/p", "dest": "m", "config": {"endpoint": "\u00f1D"}}'.encode(),
            {},
            400,
            "config",
        ),
        (
            "POST",
            "/v1/model/download",
            b'{"model_uri": "s3://bucket/p", "model_name": "' + b"0" * 1000 + b'"}',
            {},
            400,
            "model_name",
        ),
    ],
)
async def test_bad_input_is_a_json_4xx_naming_the_field(
    nursery: trio.Nursery,
    vllm: FakeLoraEngine,
    root: Path,
    method: str,
    path: str,
    content: bytes | None,
    headers: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    o = await _start(nursery, vllm, root, None)
    response = await o.client.request(method, path, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    if status >= 400:
        error = response.json()["error"]
        assert error["type"] and error["message"]
        assert error.get("field") == field, error
    if status == 405:
        assert "GET" in response.headers["allow"]
    o.shutdown.set()
