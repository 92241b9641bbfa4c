"""AIBrix 0.8's delegation mode of `/v1/lora_adapter/load` (a body with `artifact_url`: outrider fetches the adapter)
and `/v1/lora_adapter/unload` (a body with `cleanup_local`), over real sockets, against moto's S3 with its
signatures checked and a stand-in vLLM; every answer is checked against /openapi.json by the test client."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import Running, wait_until
from tests.integration.lora_fixtures import Layout, assert_downloaded, layout, start_on, vllm
from tests.integration.stores import moto_fixture
from tests.servers.moto import MotoServer

__all__ = ["layout", "moto", "vllm"]  # fixtures

BUCKET = "delegated"
TREE = {"adapter_config.json": b'{"peft_type": "LORA", "r": 8}', "adapter_model.safetensors": bytes(range(256)) * 1024}
FILES = {f"sql/{path}": data for path, data in TREE.items()}
WRONG_SECRET = "wrong-secret-value-0123456789"


# moto's S3 checking signatures: a wrong secret is S3's 403, as on a real store.
moto = moto_fixture(BUCKET, "sql", TREE, then=lambda server: server.enforce_auth(True))


def aws_credentials(moto: MotoServer, secret: str | None = None) -> dict[str, str]:
    # The spelling AIBrix's own S3 downloader reads; the endpoint comes in additional_config (merged over these).
    return {"aws_access_key_id": moto.reader[0], "aws_secret_access_key": secret or moto.reader[1]}


def delegated(name: str, url: object, **more: Any) -> dict[str, Any]:
    return {"lora_name": name, "artifact_url": url, **more}


async def load(o: Running, body: dict[str, Any]) -> tuple[int, Any]:
    response = await o.client.post("/v1/lora_adapter/load", json=body, timeout=60)
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.status_code, response.json()


async def unload(o: Running, body: dict[str, Any]) -> tuple[int, str]:
    response = await o.client.post("/v1/lora_adapter/unload", json=body, timeout=30)
    return response.status_code, response.text


async def test_delegated_load_from_s3_with_credentials_in_the_body(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout, moto: MotoServer
) -> None:
    o = await start_on(nursery, vllm, layout)
    elsewhere = layout.pvc.parent / "aibrix-local-dir"
    body = delegated(
        "sql",
        f"s3://{BUCKET}/sql",
        credentials=aws_credentials(moto),
        additional_config={"endpoint": moto.url},
        local_dir=str(elsewhere),
    )
    status, answer = await load(o, body)
    assert status == 200, answer
    dest = layout.adapters / "sql"
    assert answer == {
        "status": "success",
        "message": f"Successfully loaded adapter sql from s3://{BUCKET}/sql",
        "local_path": str(dest),
        "engine_response": {"message": "Success: LoRA adapter 'sql' added successfully."},
    }
    assert_downloaded(dest, FILES)
    assert not elsewhere.exists()  # local_dir is ignored: downloads land under the adapter root
    assert [c.path for c in vllm.load_calls("sql")] == [str(dest)]
    # Asked again: the same declaration, answered the same, with no second engine call.
    assert await load(o, body) == (200, answer)
    assert len(vllm.load_calls("sql")) == 1
    # A declaration like every outrider load: an engine restart loses it, outrider loads it again.
    vllm.forget()
    await wait_until(lambda: _async(len(vllm.load_calls("sql")) == 2), what="the adapter to be loaded again")
    o.shutdown.set()


async def test_delegated_load_with_wrong_credentials_names_them_and_loads_nothing(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout, moto: MotoServer
) -> None:
    o = await start_on(nursery, vllm, layout)
    body = delegated(
        "sql",
        f"s3://{BUCKET}/sql",
        credentials={**aws_credentials(moto, WRONG_SECRET), "endpoint": moto.url},
        credentials_secret="ignored-when-credentials-are-given",
    )
    response = await o.client.post("/v1/lora_adapter/load", json=body, timeout=60)
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert (error["type"], error["field"]) == ("source_access_denied", "credentials")
    assert WRONG_SECRET not in response.text
    assert vllm.load_calls() == [] and not (layout.adapters / "sql").exists()
    assert (await o.client.get("/v1/adapters")).json()["adapters"] == []  # withdrawn: it will not load later
    o.shutdown.set()


async def test_delegated_load_from_pvc_is_copied_under_the_adapter_root(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout
) -> None:
    o = await start_on(nursery, vllm, layout)
    status, answer = await load(o, delegated("a", "pvc://lora-a"))
    assert status == 200, answer
    dest = layout.adapters / "a"
    assert answer["local_path"] == str(dest)
    assert answer["message"] == "Successfully loaded adapter a from pvc://lora-a"
    assert (dest / "adapter_model.safetensors").read_bytes() == (
        layout.pvc / "lora-a" / "adapter_model.safetensors"
    ).read_bytes()
    assert [c.path for c in vllm.load_calls("a")] == [str(dest)]
    o.shutdown.set()


async def test_cleanup_local_decides_whether_downloaded_files_stay(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout, moto: MotoServer
) -> None:
    o = await start_on(nursery, vllm, layout)
    s3 = {"credentials": {"access_key": moto.reader[0], "secret_key": moto.reader[1], "endpoint": moto.url}}
    for name in ("kept", "cleaned", "plain", "null"):
        assert (await load(o, delegated(name, f"s3://{BUCKET}/sql", **s3)))[0] == 200
    in_place = delegated("vol", str(layout.adapters / "in-place"))
    status, answer = await load(o, in_place)
    assert (status, answer["local_path"]) == (200, str(layout.adapters / "in-place"))

    assert await unload(o, {"lora_name": "kept", "cleanup_local": False}) == (
        200,
        '{"message":"Successfully unloaded adapter kept","status":"success"}\n',
    )
    assert (await unload(o, {"lora_name": "cleaned", "cleanup_local": True}))[0] == 200
    assert (await unload(o, {"lora_name": "null", "cleanup_local": None}))[0] == 200  # null: AIBrix's default
    # No cleanup_local: the plain mode, answered in text as before, and what outrider downloaded is deleted.
    assert await unload(o, {"lora_name": "plain"}) == (200, "Success: LoRA adapter 'plain' removed successfully.")
    # A directory the engine reads in place is never deleted, whatever cleanup_local says.
    assert (await unload(o, {"lora_name": "vol", "cleanup_local": True}))[0] == 200
    await wait_until(
        lambda: _async(not any((layout.adapters / n).exists() for n in ("cleaned", "plain", "null"))),
        what="the cleaned-up adapters' files to be deleted",
    )
    assert [c.name for c in vllm.unload_calls()] == ["kept", "cleaned", "null", "plain", "vol"]
    await trio.sleep(0.5)  # a few reconcile passes: nothing comes back for the kept files either
    assert_downloaded(layout.adapters / "kept", FILES)
    assert (layout.adapters / "in-place" / "adapter_model.safetensors").is_file()
    assert (layout.pvc / "lora-a" / "adapter_model.safetensors").is_file()
    assert vllm.loaded == {}
    o.shutdown.set()


async def test_delegated_unload_of_an_adapter_the_engine_lacks_succeeds_and_the_plain_one_is_a_404(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout
) -> None:
    o = await start_on(nursery, vllm, layout)
    status, text = await unload(o, {"lora_name": "never-loaded", "cleanup_local": True})
    assert status == 200, text
    assert text == '{"message":"Successfully unloaded adapter never-loaded","status":"success"}\n'
    assert (await unload(o, {"lora_name": "never-loaded", "cleanup_local": "false"}))[0] == 200
    status, text = await unload(o, {"lora_name": "never-loaded"})
    assert status == 404, text
    # Loaded, unloaded, and unloaded again by a controller retrying: success each time in delegation mode.
    assert (await load(o, delegated("a", "pvc://lora-a")))[0] == 200
    for _ in range(2):
        assert (await unload(o, {"lora_name": "a", "cleanup_local": True}))[0] == 200
    assert [c.name for c in vllm.unload_calls()] == ["never-loaded", "never-loaded", "never-loaded", "a", "a"]
    assert vllm.loaded == {}
    o.shutdown.set()


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("load", delegated("a/b", "pvc://lora-a"), 400, "lora_name"),
        ("load", delegated("..", "pvc://lora-a"), 400, "lora_name"),
        ("load", delegated("a", 5), 400, "artifact_url"),
        ("load", delegated("a", "pvc://../etc"), 400, "artifact_url"),
        ("load", delegated("a", "gs://bucket/x"), 400, "artifact_url"),
        ("load", delegated("a", "pvc://missing"), 404, "artifact_url"),
        ("load", delegated("a", "huggingface://org/bad..name"), 400, "artifact_url"),
        ("load", delegated("a", "s3://b/x", credentials=["x"]), 400, "credentials"),
        ("load", delegated("a", "s3://b/x", credentials={"access_key": {"nested": [1]}}), 400, "credentials"),
        ("load", delegated("a", "s3://b/x", credentials={"access_key": "AKIDONLY"}), 400, "credentials"),
        ("load", delegated("a", "s3://b/x", additional_config={"endpoint": "ftp://x"}), 400, "additional_config"),
        ("load", delegated("a", "s3://b/x", credentials_secret=7), 400, "credentials_secret"),
        ("load", delegated("a", "s3://b/x", local_dir=["/tmp"]), 400, "local_dir"),
        ("load", {"lora_name": "a"}, 400, "lora_path"),
        ("unload", {"lora_name": "a", "cleanup_local": "maybe"}, 400, "cleanup_local"),
        ("unload", {"lora_name": "a", "cleanup_local": {"x": 1}}, 400, "cleanup_local"),
        ("unload", {"lora_name": "../a", "cleanup_local": False}, 400, "lora_name"),
        ("load", delegated("a", "s3://b/" + "x" * 5000), 400, "artifact_url"),
        ("load", delegated("a", "s3://b/x", credentials={"access_key": "k" * 2_000_000}), 413, "body"),
    ],
)
async def test_bad_delegation_input_is_a_json_4xx_naming_the_field(
    nursery: trio.Nursery,
    vllm: FakeLoraEngine,
    layout: Layout,
    path: str,
    body: dict[str, Any],
    status: int,
    field: str | None,
) -> None:
    o = await start_on(nursery, vllm, layout)
    response = await o.client.post(f"/v1/lora_adapter/{path}", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] and error["message"] and error.get("field") == field, error
    assert vllm.load_calls() == [] and vllm.unload_calls() == []
    o.shutdown.set()


async def _async(value: bool) -> bool:
    return value
