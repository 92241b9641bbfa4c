"""An endpoint a request names is contacted only with the request's own credentials, and never quoted.

Over real sockets: outrider with its production source opener, and an S3-dialect endpoint standing for any address
the pod can reach (tests/servers/faults.py: it answers every request with an error whose body carries a marker, and
counts what it is sent). Routes: the native download, Kthena's LoRA load, AIBrix's delegated load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from outrider.sources.options import env_defaults
from outrider.transfer.settings import DownloadSettings
from tests.fakes.engine import FakeEngine
from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import Running, fast_settings, start_outrider
from tests.integration.lora_fixtures import lora_settings, vllm
from tests.servers.faults import FaultServer

__all__ = ["vllm"]  # fixtures

MARK = "injected 403"  # in the endpoint's error body: what must never reach a caller of a request-named endpoint
KEYS = {"access_key": "AKIAREQUEST000000000", "secret_key": "request-secret-0123456789"}


@pytest.fixture
def endpoint() -> Iterator[FaultServer]:
    server = FaultServer(403)
    server.start()
    yield server
    server.stop()


def downloads(tmp_path: Path, **changes: Any) -> DownloadSettings:
    (tmp_path / "models").mkdir(exist_ok=True)
    return DownloadSettings(model_root=str(tmp_path / "models"), **changes)


async def download(o: Running, config: dict[str, str]) -> tuple[int, dict[str, Any]]:
    body = {"source": "s3://bucket/model", "dest": "m", "config": config, "wait": True}
    response = await o.client.post("/v1/downloads", json=body, timeout=30)
    return response.status_code, response.json()


async def test_a_request_endpoint_without_its_own_keys_is_refused_before_anything_is_sent(
    nursery: trio.Nursery, vllm_engine: FakeEngine, tmp_path: Path, endpoint: FaultServer
) -> None:
    o = await start_outrider(nursery, fast_settings(vllm_engine, downloads=downloads(tmp_path)))

    status, answer = await download(o, {"endpoint": endpoint.url})

    assert status == 403, answer
    assert (answer["error"]["type"], answer["error"]["field"]) == ("source_access_denied", "config")
    assert "--allow-request-endpoints" in answer["error"]["message"]
    assert endpoint.requests == 0 and not (tmp_path / "models" / "m").exists()
    o.shutdown.set()


async def test_a_request_endpoint_with_its_own_keys_is_contacted_and_its_answer_not_relayed(
    nursery: trio.Nursery, vllm_engine: FakeEngine, tmp_path: Path, endpoint: FaultServer
) -> None:
    o = await start_outrider(nursery, fast_settings(vllm_engine, downloads=downloads(tmp_path)))

    status, answer = await download(o, {"endpoint": endpoint.url, **KEYS})

    assert status == 403, answer
    assert answer["error"]["type"] == "source_access_denied"
    assert MARK not in str(answer) and "403" in answer["error"]["message"]
    assert endpoint.requests > 0 and all(KEYS["access_key"] in (auth or "") for auth in endpoint.seen_auth)
    o.shutdown.set()


async def test_the_pods_own_endpoint_is_quoted_and_the_operator_may_allow_request_endpoints(
    nursery: trio.Nursery, vllm_engine: FakeEngine, tmp_path: Path, endpoint: FaultServer
) -> None:
    """The controls: the store's words are relayed for the pod's own endpoint, and with --allow-request-endpoints
    a request without keys goes to the endpoint it names (with the pod's keys, as the flag says)."""
    keys = {"AWS_ACCESS_KEY_ID": "AKIAPOD0000000000000", "AWS_SECRET_ACCESS_KEY": "pod-secret"}
    own = downloads(tmp_path, source_defaults=env_defaults({"AWS_ENDPOINT_URL": endpoint.url, **keys}))
    o = await start_outrider(nursery, fast_settings(vllm_engine, downloads=own))
    status, answer = await download(o, {})
    assert status == 403 and MARK in answer["error"]["message"], answer
    o.shutdown.set()

    other = tmp_path / "other"
    other.mkdir()
    allowed = downloads(other, allow_request_endpoints=True, source_defaults=env_defaults(keys))
    o = await start_outrider(nursery, fast_settings(vllm_engine, downloads=allowed))
    endpoint.seen_auth.clear()
    status, answer = await download(o, {"endpoint": endpoint.url})
    assert status == 403 and endpoint.seen_auth, answer
    assert all("AKIAPOD0000000000000" in (auth or "") for auth in endpoint.seen_auth)
    o.shutdown.set()


async def test_lora_loads_naming_an_endpoint_need_their_own_keys(
    nursery: trio.Nursery, vllm: FakeLoraEngine, tmp_path: Path, endpoint: FaultServer
) -> None:
    root = tmp_path / "adapters"
    root.mkdir()
    o = await start_outrider(nursery, lora_settings(vllm, root, aibrix_adapter_dir=str(root)))
    kthena = {"lora_name": "k", "source": "s3://bucket/lora", "config": {"endpoint": endpoint.url}}
    aibrix = {"lora_name": "a", "artifact_url": "s3://bucket/lora", "credentials": {"endpoint": endpoint.url}}

    for route, body, field in [
        ("/v1/load_lora_adapter", kthena, "config"),
        ("/v1/lora_adapter/load", aibrix, "credentials"),
    ]:
        response = await o.client.post(route, json=body, timeout=30)
        assert response.status_code == 403, (route, response.text)
        assert response.json()["error"]["field"] == field, route

    assert endpoint.requests == 0 and vllm.load_calls() == []
    o.shutdown.set()
