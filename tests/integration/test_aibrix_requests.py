"""The AIBrix 0.8 runtime's documented requests, sent as its controller and users send them, answered in its
shapes (issue #25): delegated loads with every key the controller forwards, `credentials_secret` alone, a plain
load of a path on another volume, `cleanup_local` as text, downloads into DOWNLOADER_LOCAL_DIR, AIBrix's `ak`/`sk`.

Over real sockets: outrider, the stand-in vLLM (tests/fakes/lora_engine.py) and moto's S3 server checking
signatures (an anonymous or wrongly signed request is S3's 403, as on a real store)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from outrider.settings import Settings
from outrider.sources.options import SourceOptions
from outrider.transfer.settings import DownloadSettings
from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import Running, start_outrider, wait_until
from tests.integration.lora_fixtures import assert_downloaded, lora_settings, make_adapter, vllm
from tests.integration.stores import signed_moto
from tests.servers.moto import MotoServer

__all__ = ["moto", "vllm"]  # fixtures

BUCKET = "my-bucket"
ADAPTER = {
    "lora/sql/adapter_config.json": b'{"peft_type": "LORA", "r": 8}',
    "lora/sql/adapter_model.safetensors": bytes(range(256)) * 64,
}
MODEL = {"models/llama3/config.json": b'{"model_type": "llama"}', "models/llama3/model.safetensors": b"\1" * 8192}
API_KEY = "controller-api-key-value-0123"


moto = signed_moto(BUCKET, {**ADAPTER, **MODEL})


@dataclasses.dataclass
class Pod:
    models: Path  # --model-root (DOWNLOADER_LOCAL_DIR)
    adapters: Path  # --adapter-root
    aibrix: Path  # --aibrix-adapter-dir: AIBrix's /tmp/aibrix/adapters, the webhook's emptyDir
    other: Path  # another volume the engine mounts and outrider does not


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    made = Pod(tmp_path / "models", tmp_path / "models" / "adapters", tmp_path / "aibrix" / "adapters", tmp_path / "v")
    made.adapters.mkdir(parents=True)
    return made


def _settings(engine: FakeLoraEngine, pod: Pod, pod_store: SourceOptions | None = None) -> Settings:
    downloads = DownloadSettings(model_root=str(pod.models), source_defaults=pod_store or SourceOptions())
    return lora_settings(engine, pod.adapters, downloads=downloads, aibrix_adapter_dir=str(pod.aibrix))


def _pod_keys(moto: MotoServer) -> SourceOptions:
    return SourceOptions(access_key=moto.reader[0], secret_key=moto.reader[1], endpoint=moto.url)


async def _load(o: Running, body: dict[str, Any]) -> tuple[int, Any]:
    response = await o.client.post("/v1/lora_adapter/load", json=body, timeout=60)
    return response.status_code, response.json() if response.headers["content-type"].startswith(
        "application/json"
    ) else response.text


async def test_delegated_load_with_every_key_the_controller_forwards(
    nursery: trio.Nursery, vllm: FakeLoraEngine, pod: Pod, moto: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    """AIBrix's controller forwards every key of the credentials secret (`aws_endpoint_url`, `bucket`) and all of
    `spec.additionalConfig` (`api-key`): AIBrix 200, outrider answered 400 naming the key. The ones with a meaning
    are used (the endpoint), the rest ignored and never echoed; the adapter lands in AIBrix's directory."""
    o = await start_outrider(nursery, _settings(vllm, pod))
    credentials = {
        "aws_access_key_id": moto.reader[0],
        "aws_secret_access_key": moto.reader[1],
        "aws_endpoint_url": moto.url,
        "bucket": BUCKET,
    }
    body = {
        "lora_name": "sql",
        "artifact_url": f"s3://{BUCKET}/lora/sql",
        "credentials": credentials,
        "additional_config": {"api-key": API_KEY},
    }

    status, answer = await _load(o, body)

    assert status == 200, answer
    dest = pod.aibrix / "sql"
    assert answer == {
        "status": "success",
        "message": f"Successfully loaded adapter sql from s3://{BUCKET}/lora/sql",
        "local_path": str(dest),
        "engine_response": {"message": "Success: LoRA adapter 'sql' added successfully."},
    }
    assert_downloaded(dest, {k.removeprefix("lora/"): v for k, v in ADAPTER.items()})
    assert vllm.loaded == {"sql": str(dest)}
    assert API_KEY not in caplog.text and API_KEY not in json.dumps((await o.client.get("/v1/adapters")).json())
    o.shutdown.set()


async def test_delegated_load_with_credentials_secret_alone_uses_the_pods_keys(
    nursery: trio.Nursery, vllm: FakeLoraEngine, pod: Pod, moto: MotoServer
) -> None:
    """AIBrix reads /var/run/secrets/aibrix/<name> and goes on without it when absent: 200. outrider answered 400;
    it reads no secret files and goes on with the pod's own credentials (its env)."""
    o = await start_outrider(nursery, _settings(vllm, pod, _pod_keys(moto)))
    body = {"lora_name": "sql", "artifact_url": f"s3://{BUCKET}/lora/sql", "credentials_secret": "s3-credentials"}

    status, answer = await _load(o, body)

    assert status == 200, answer
    assert answer["status"] == "success" and answer["local_path"] == str(pod.aibrix / "sql")
    o.shutdown.set()


async def test_credentials_secret_alone_without_pod_keys_says_it_is_not_read(
    nursery: trio.Nursery, vllm: FakeLoraEngine, pod: Pod, moto: MotoServer
) -> None:
    o = await start_outrider(nursery, _settings(vllm, pod, SourceOptions(endpoint=moto.url)))
    body = {"lora_name": "sql", "artifact_url": f"s3://{BUCKET}/lora/sql", "credentials_secret": "s3-credentials"}

    status, answer = await _load(o, body)

    assert status == 403, answer
    assert answer["error"]["field"] == "credentials" and "credentials_secret is not read" in answer["error"]["message"]
    o.shutdown.set()


async def test_delegated_unload_takes_cleanup_local_as_text(
    nursery: trio.Nursery, vllm: FakeLoraEngine, pod: Pod, moto: MotoServer
) -> None:
    """`"cleanup_local": "yes"` is true to AIBrix's (pydantic) model: 200 and the files deleted; outrider 400."""
    o = await start_outrider(nursery, _settings(vllm, pod, _pod_keys(moto)))
    assert (await _load(o, {"lora_name": "sql", "artifact_url": f"s3://{BUCKET}/lora/sql"}))[0] == 200

    response = await o.client.post("/v1/lora_adapter/unload", json={"lora_name": "sql", "cleanup_local": "yes"})

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "success", "message": "Successfully unloaded adapter sql"}

    async def deleted() -> bool:
        return not (pod.aibrix / "sql").exists()

    await wait_until(deleted, what="the downloaded files deleted")
    o.shutdown.set()


async def test_plain_load_of_a_path_on_another_volume_goes_to_the_engine_as_given(
    nursery: trio.Nursery, vllm: FakeLoraEngine, pod: Pod
) -> None:
    """`lora_path: /other/volume/a1`: AIBrix hands it to the engine (200, the engine's text); outrider answered 403.
    Nothing is copied there or deleted from there."""
    make_adapter(pod.other, "a1")
    o = await start_outrider(nursery, _settings(vllm, pod))

    status, text = await _load(o, {"lora_name": "a1", "lora_path": str(pod.other / "a1")})

    assert (status, text) == (200, "Success: LoRA adapter 'a1' added successfully.")
    assert vllm.loaded == {"a1": str(pod.other / "a1")}
    assert (await o.client.post("/v1/lora_adapter/unload", json={"lora_name": "a1"})).status_code == 200
    assert sorted(p.name for p in (pod.other / "a1").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    o.shutdown.set()


async def _downloaded(o: Running, dest: Path) -> None:
    async def listed() -> bool:
        cards = (await o.client.get("/v1/model/list")).json()["data"]
        return any(c["model_root_path"] == str(dest) and c["model_status"] == "downloaded" for c in cards)

    await wait_until(listed, within=30, what=f"{dest} listed as downloaded")


async def test_model_download_into_downloader_local_dir(
    nursery: trio.Nursery, vllm: FakeLoraEngine, pod: Pod, moto: MotoServer
) -> None:
    """AIBrix's documented request names DOWNLOADER_LOCAL_DIR itself as `local_dir`, the parent of <model_name>:
    AIBrix 200 `downloading`; outrider answered 400 `local_dir must name a directory of its own`."""
    o = await start_outrider(nursery, _settings(vllm, pod, _pod_keys(moto)))
    body = {"model_uri": f"s3://{BUCKET}/models/llama3/", "local_dir": f"{pod.models}/", "model_name": "llama3"}

    response = await o.client.post("/v1/model/download", json=body)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["model_name"], answer["model_root_path"]) == ("llama3", str(pod.models / "llama3"))
    assert answer["model_status"] in ("downloading", "downloaded")
    await _downloaded(o, pod.models / "llama3")
    assert_downloaded(pod.models / "llama3", {k.removeprefix("models/"): v for k, v in MODEL.items()})
    o.shutdown.set()


async def test_model_download_signs_with_aibrix_ak_and_sk(
    nursery: trio.Nursery, vllm: FakeLoraEngine, pod: Pod, moto: MotoServer
) -> None:
    """AIBrix's DownloadExtraConfig keys `ak`, `sk`, `endpoint`, `region`: AIBrix signs with `ak`; outrider ignored
    `ak`/`sk` and went anonymous (S3's 403 here). The pod has no keys of its own."""
    o = await start_outrider(nursery, _settings(vllm, pod))
    extra = {"ak": moto.reader[0], "sk": moto.reader[1], "endpoint": moto.url, "region": "us-east-1"}
    body = {"model_uri": f"s3://{BUCKET}/models/llama3", "model_name": "llama3", "download_extra_config": extra}

    response = await o.client.post("/v1/model/download", json=body)

    assert response.status_code == 200, response.text
    await _downloaded(o, pod.models / "llama3")
    o.shutdown.set()
