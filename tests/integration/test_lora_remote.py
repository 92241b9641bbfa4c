"""Adapters that are not on the volume arrive through the download engine, from a real S3 protocol server (moto)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from outrider.sources.options import SourceOptions
from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import start_outrider
from tests.integration.lora_fixtures import assert_downloaded, lora_settings, root, vllm
from tests.servers.moto import MotoServer

__all__ = ["root", "vllm"]

BUCKET = "adapters"
FILES = {
    "sql/adapter_config.json": b'{"peft_type": "LORA", "r": 8}',
    "sql/adapter_model.safetensors": bytes(range(256)) * 4096,  # 1 MiB
}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        server.seed(BUCKET, FILES)
        server.enforce_auth(True)
        yield server
    finally:
        server.stop()


async def test_kthena_load_downloads_from_s3_with_request_credentials(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path, moto: MotoServer
) -> None:
    o = await start_outrider(nursery, lora_settings(vllm, root))
    config = {"access_key": moto.reader[0], "secret_key": moto.reader[1], "endpoint": moto.url}
    response = await o.client.post(
        "/v1/load_lora_adapter",
        json={"lora_name": "sql", "source": f"s3://{BUCKET}/sql", "config": config, "max_workers": 2},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    dest = root / "sql"
    assert_downloaded(dest, FILES)
    assert [c.path for c in vllm.load_calls("sql")] == [str(dest)]
    assert moto.reader[1] not in response.text
    o.shutdown.set()


async def test_aibrix_load_from_s3_uses_the_pods_own_credentials(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path, moto: MotoServer
) -> None:
    settings = lora_settings(vllm, root)
    pod_store = SourceOptions(access_key=moto.reader[0], secret_key=moto.reader[1], endpoint=moto.url)
    settings = dataclasses.replace(
        settings, downloads=dataclasses.replace(settings.downloads, source_defaults=pod_store)
    )
    o = await start_outrider(nursery, settings)
    response = await o.client.post(
        "/v1/lora_adapter/load", json={"lora_name": "sql2", "lora_path": f"s3://{BUCKET}/sql"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert_downloaded(root / "sql2", FILES)
    # Wrong credentials are the store's 403, relayed as JSON, and nothing is loaded.
    bad = {"access_key": moto.reader[0], "secret_key": "wrong-secret-value", "endpoint": moto.url}
    response = await o.client.post(
        "/v1/load_lora_adapter",
        json={"lora_name": "sql3", "source": f"s3://{BUCKET}/sql", "config": bad},
        timeout=60,
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "source_access_denied"
    assert "wrong-secret-value" not in response.text
    assert vllm.load_calls("sql3") == [] and not (root / "sql3").exists()
    o.shutdown.set()
