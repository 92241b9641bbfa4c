"""The Kthena runtime's documented requests, sent as its users send them, answered in its shapes (issue #25):
LoRA output dirs under /models, field types as Kthena takes them, adapter names the engine takes.

Over real sockets: outrider, the stand-in vLLM (tests/fakes/lora_engine.py) and moto's S3 server. The layout is a
Kthena pod's: the model root `<tmp>/models` (Kthena's /models), the adapter root `<tmp>/models/adapters`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from outrider.sources.options import SourceOptions
from outrider.transfer.settings import DownloadSettings
from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import Running, start_outrider, wait_until
from tests.integration.lora_fixtures import assert_downloaded, lora_settings, vllm
from tests.integration.stores import signed_moto
from tests.servers.modelscope import ModelScopeServer
from tests.servers.moto import MotoServer

__all__ = ["moto", "vllm"]  # fixtures

BUCKET = "my-bucket"
ADAPTER = {
    "lora/qwen/adapter_config.json": b'{"peft_type": "LORA", "r": 8}',
    "lora/qwen/adapter_model.safetensors": bytes(range(256)) * 64,
}
MODEL = {"models/tiny/config.json": b'{"model_type": "llama"}', "models/tiny/model.safetensors": b"\1" * 4096}


moto = signed_moto(BUCKET, {**ADAPTER, **MODEL})


@pytest.fixture
def models(tmp_path: Path) -> Path:
    (tmp_path / "models" / "adapters").mkdir(parents=True)
    return tmp_path / "models"


async def _start(nursery: trio.Nursery, engine: FakeLoraEngine, models: Path) -> Running:
    downloads = DownloadSettings(model_root=str(models))
    return await start_outrider(nursery, lora_settings(engine, models / "adapters", downloads=downloads))


def _config(moto: MotoServer) -> str:
    """Kthena's `config`: a JSON string."""
    return json.dumps({"access_key": moto.reader[0], "secret_key": moto.reader[1], "endpoint": moto.url})


async def test_lora_output_dir_under_the_model_root_as_the_seed_example(
    nursery: trio.Nursery, vllm: FakeLoraEngine, models: Path, moto: MotoServer
) -> None:
    """The seed's example (Kthena's manifests put output dirs under /models): Kthena answers 202 and the adapter
    loads from output_dir; outrider answered 403 `output_dir must be a directory under '/adapters'`."""
    o = await _start(nursery, vllm, models)
    out = models / "lora" / "qwen"
    body = {
        "lora_name": "qwen-lora",
        "source": f"s3://{BUCKET}/lora/qwen",
        "output_dir": str(out),
        "config": _config(moto),
        "async_download": True,
    }

    response = await o.client.post("/v1/load_lora_adapter", json=body)

    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["status"] == "started"
    assert (answer["lora_name"], answer["source"], answer["output_dir"]) == ("qwen-lora", body["source"], str(out))

    async def loaded() -> bool:
        return [c.path for c in vllm.load_calls("qwen-lora") if c.status == 200] == [str(out)]

    await wait_until(loaded, within=30, what="the adapter loaded from output_dir")
    assert_downloaded(out, {k.removeprefix("lora/"): v for k, v in ADAPTER.items()})
    o.shutdown.set()


async def test_lora_output_dir_outside_both_roots_names_both_flags(
    nursery: trio.Nursery, vllm: FakeLoraEngine, models: Path, moto: MotoServer
) -> None:
    o = await _start(nursery, vllm, models)
    elsewhere = models.parent / "elsewhere" / "qwen"
    body = {"lora_name": "q", "source": f"s3://{BUCKET}/lora/qwen", "output_dir": str(elsewhere)}

    response = await o.client.post("/v1/load_lora_adapter", json={**body, "config": _config(moto)})

    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["field"] == "output_dir"
    assert "--adapter-root" in error["message"] and "--model-root" in error["message"]
    assert not elsewhere.parent.exists() and vllm.load_calls() == []
    o.shutdown.set()


@pytest.mark.parametrize(
    ("extra", "status", "shape"),
    [
        ({"max_workers": "8"}, 200, "completed"),
        ({"max_workers": 0}, 200, "completed"),  # clamped to 1
        ({"max_workers": 100}, 200, "completed"),  # clamped to the most outrider runs
        ({"async_download": "true"}, 202, "started"),
        ({"async_download": 1}, 202, "started"),
    ],
)
async def test_download_model_takes_kthenas_field_types(
    nursery: trio.Nursery,
    vllm: FakeLoraEngine,
    models: Path,
    moto: MotoServer,
    extra: dict[str, Any],
    status: int,
    shape: str,
) -> None:
    """Kthena answers these 200/202; outrider answered 400 (`max_workers`, `async_download`)."""
    o = await _start(nursery, vllm, models)
    body = {"source": f"s3://{BUCKET}/models/tiny", "output_dir": str(models / "tiny"), "config": _config(moto)}

    response = await o.client.post("/v1/download_model", json={**body, **extra}, timeout=60)

    assert response.status_code == status, response.text
    assert response.json()["status"] == shape
    assert response.json()["output_dir"] == str(models / "tiny")
    o.shutdown.set()


async def test_load_lora_adapter_takes_max_workers_as_text(
    nursery: trio.Nursery, vllm: FakeLoraEngine, models: Path, moto: MotoServer
) -> None:
    o = await _start(nursery, vllm, models)
    body = {"lora_name": "qwen", "source": f"s3://{BUCKET}/lora/qwen", "config": _config(moto), "max_workers": "4"}

    response = await o.client.post("/v1/load_lora_adapter", json=body, timeout=60)

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["lora_name"]) == ("success", "qwen")
    assert [c.path for c in vllm.load_calls("qwen")] == [str(models / "adapters" / "qwen")]
    o.shutdown.set()


@pytest.mark.parametrize(("name", "directory"), [("team/sql", "team%2Fsql"), ("sql:v2", "sql%3Av2")])
async def test_adapter_names_vllm_takes_are_served(
    nursery: trio.Nursery, vllm: FakeLoraEngine, models: Path, moto: MotoServer, name: str, directory: str
) -> None:
    """vLLM serves any lora_name; Kthena passes it on (200); outrider refused it (400). The name reaches the engine
    as given; its files land in one directory under the adapter root whose name cannot lead anywhere else."""
    o = await _start(nursery, vllm, models)
    body = {"lora_name": name, "source": f"s3://{BUCKET}/lora/qwen", "config": _config(moto)}

    response = await o.client.post("/v1/load_lora_adapter", json=body, timeout=60)

    assert response.status_code == 200, response.text
    assert response.json()["lora_name"] == name
    assert vllm.loaded == {name: str(models / "adapters" / directory)}
    assert [p.name for p in (models / "adapters").iterdir()] == [directory]
    listed = (await o.client.get("/v1/models")).json()
    assert name in {m["id"] for m in listed["data"]}
    response = await o.client.post("/v1/unload_lora_adapter", json={"lora_name": name})
    assert (response.status_code, response.json()["lora_name"]) == (200, name)
    assert vllm.loaded == {}
    o.shutdown.set()


async def test_pvc_with_an_absolute_path_is_that_directory(
    nursery: trio.Nursery, vllm: FakeLoraEngine, models: Path, tmp_path: Path
) -> None:
    """ModelBooster's `modelURI: pvc:///<claim>/<path>` (the claim mounted at /<claim>): Kthena copies that
    directory; outrider looked for `<pvc-root>/<claim>/<path>` and answered 404. Now it is the directory itself,
    when it lies under --pvc-root; elsewhere a 403 naming --pvc-root."""
    claim = tmp_path / "claim"
    (claim / "models" / "tiny").mkdir(parents=True)
    (claim / "models" / "tiny" / "config.json").write_bytes(b'{"model_type": "llama"}')
    downloads = DownloadSettings(model_root=str(models), pvc_root=str(claim))
    o = await start_outrider(nursery, lora_settings(vllm, models / "adapters", downloads=downloads))
    body = {"source": f"pvc://{claim}/models/tiny", "output_dir": str(models / "tiny")}

    response = await o.client.post("/v1/download_model", json=body, timeout=30)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    assert (models / "tiny" / "config.json").read_bytes() == b'{"model_type": "llama"}'
    outside = {"source": f"pvc://{models}/adapters", "output_dir": str(models / "other")}
    response = await o.client.post("/v1/download_model", json=outside, timeout=30)
    assert response.status_code == 403, response.text
    assert "--pvc-root" in response.json()["error"]["message"]
    o.shutdown.set()


def test_kthenas_downloader_command_line(tmp_path: Path, moto: MotoServer) -> None:
    """ModelBooster's init container runs Kthena's downloader as `... -s SOURCE -o OUTPUT_DIR -w WORKERS -c CONFIG`;
    with outrider's image that is `outrider download -s ... -o ... -w ... -c ...` (outrider exited 2 on -s)."""
    out = tmp_path / "models" / "tiny"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTRIDER_", "DOWNLOADER_", "AWS_"))}
    argv = ["-s", f"s3://{BUCKET}/models/tiny", "-o", str(out), "-w", "4", "-c", _config(moto)]

    done = subprocess.run(
        [sys.executable, "-m", "outrider", "download", *argv], env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    assert_downloaded(out, {k.removeprefix("models/"): v for k, v in MODEL.items()})


MS_TOKEN = "ms-sdk-token-0123456789abcdef"
MS_FILES = {"config.json": b'{"model_type": "qwen2"}', "weights/model.safetensors": bytes(range(256)) * 256}


@pytest.fixture(scope="module")
def modelscope() -> Iterator[ModelScopeServer]:
    server = ModelScopeServer(MS_TOKEN)
    server.add_repo("Qwen/tiny", MS_FILES, private=True)
    server.start()
    yield server
    server.stop()


async def test_download_model_from_modelscope(
    nursery: trio.Nursery, vllm: FakeLoraEngine, models: Path, modelscope: ModelScopeServer
) -> None:
    """Kthena's `ms://owner/name` source with its `ms_token` config key: Kthena downloads it (with the ModelScope
    SDK); outrider answered 400 `unknown source scheme 'ms'`."""
    o = await _start(nursery, vllm, models)
    config = json.dumps({"ms_token": MS_TOKEN, "ms_endpoint": modelscope.url})
    body = {"source": "ms://Qwen/tiny", "output_dir": str(models / "qwen"), "config": config}

    response = await o.client.post("/v1/download_model", json=body, timeout=60)

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["source"]) == ("completed", "ms://Qwen/tiny@master")
    for path, data in MS_FILES.items():
        assert (models / "qwen" / path).read_bytes() == data
    assert set(modelscope.seen_auth) == {f"Bearer {MS_TOKEN}"}
    o.shutdown.set()


async def test_the_pods_modelscope_token_never_goes_to_a_request_endpoint(
    nursery: trio.Nursery, vllm: FakeLoraEngine, models: Path, modelscope: ModelScopeServer
) -> None:
    """As with Hugging Face: the pod's MS_TOKEN goes only to the pod's own ModelScope endpoint, and an endpoint the
    request names is contacted only with the request's own token."""
    downloads = DownloadSettings(model_root=str(models), source_defaults=SourceOptions(ms_token=MS_TOKEN))
    o = await start_outrider(nursery, lora_settings(vllm, models / "adapters", downloads=downloads))
    modelscope.seen_auth.clear()
    body = {"source": "ms://Qwen/tiny", "output_dir": "qwen", "config": {"ms_endpoint": modelscope.url}}

    response = await o.client.post("/v1/download_model", json=body, timeout=60)

    assert response.status_code == 403, response.text
    assert response.json()["error"]["field"] == "config" and "ms_token" in response.json()["error"]["message"]
    assert modelscope.seen_auth == []  # not contacted: the pod's token never goes there, nor an anonymous request
    assert MS_TOKEN not in response.text
    o.shutdown.set()


def test_kthenas_downloader_command_line_with_modelscope(tmp_path: Path, modelscope: ModelScopeServer) -> None:
    out = tmp_path / "qwen"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTRIDER_", "DOWNLOADER_", "MS_"))}
    config = json.dumps({"ms_token": MS_TOKEN, "ms_endpoint": modelscope.url})

    done = subprocess.run(
        [sys.executable, "-m", "outrider", "download", "-s", "ms://Qwen/tiny", "-o", str(out), "-c", config],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert (out / "weights" / "model.safetensors").read_bytes() == MS_FILES["weights/model.safetensors"]
