"""Where adapter files come from and where they may go, over real sockets: `pvc://` under `--pvc-root` on every
route (in place when the engine can read it, else copied), no write outside the adapter root through a symlink,
and downloaded adapters deleted once unloaded (volume ones never)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trio

from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import wait_until
from tests.integration.lora_fixtures import Layout, layout, start_on, vllm
from tests.servers.moto import MotoServer

__all__ = ["layout", "vllm"]  # fixtures

BUCKET = "loras"
FILES = {
    "lora/adapter_config.json": b'{"peft_type": "LORA", "r": 8}',
    "lora/adapter_model.safetensors": bytes(range(256)) * 64,
}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        server.seed(BUCKET, FILES)
        yield server
    finally:
        server.stop()


def s3_config(moto: MotoServer) -> dict[str, str]:
    return {"access_key": moto.reader[0], "secret_key": moto.reader[1], "endpoint": moto.url}


async def test_kthena_pvc_source_is_under_the_pvc_root_and_comes_back_after_an_engine_restart(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout
) -> None:
    o = await start_on(nursery, vllm, layout)
    out = layout.adapters / "a"
    body = {"lora_name": "a", "source": "pvc://lora-a", "output_dir": str(out)}
    response = await o.client.post("/v1/load_lora_adapter", json=body, timeout=30)
    assert response.status_code == 200, response.text
    # The engine cannot read the pvc volume: the files were copied, whole, into output_dir and loaded from there.
    assert [c.path for c in vllm.load_calls("a")] == [str(out)]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / name).read_bytes() == (layout.pvc / "lora-a" / name).read_bytes()
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
    vllm.forget()  # the engine restarts
    await wait_until(lambda: _async(len(vllm.load_calls("a")) == 2), what="the adapter to be loaded again")
    assert [c.path for c in vllm.load_calls("a")] == [str(out)] * 2
    o.shutdown.set()


async def test_pvc_and_absolute_sources_mean_the_same_on_the_native_and_aibrix_routes(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout
) -> None:
    o = await start_on(nursery, vllm, layout)
    response = await o.client.put("/v1/adapters/b", json={"source": "pvc://lora-a", "wait": True}, timeout=30)
    assert response.status_code == 200, response.text
    assert vllm.load_calls("b")[0].path == str(layout.adapters / "b")  # copied into <adapter-root>/<name>
    response = await o.client.post(
        "/v1/lora_adapter/load", json={"lora_name": "c", "lora_path": str(layout.pvc / "lora-a")}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert vllm.load_calls("c")[0].path == str(layout.adapters / "c")
    # A directory the engine can read is used where it is, never copied.
    response = await o.client.post(
        "/v1/lora_adapter/load", json={"lora_name": "d", "lora_path": str(layout.adapters / "in-place")}
    )
    assert response.status_code == 200, response.text
    assert vllm.load_calls("d")[0].path == str(layout.adapters / "in-place")
    assert not (layout.adapters / "d").exists()
    # The adapter root is not the pvc root: pvc://in-place names <pvc-root>/in-place, which does not exist.
    response = await o.client.put("/v1/adapters/e", json={"source": "pvc://in-place", "wait": True})
    assert response.status_code == 404 and response.json()["error"]["field"] == "source", response.text
    # The same source on the download route means the same directory.
    response = await o.client.post("/v1/downloads", json={"source": "pvc://lora-a", "dest": "dl", "wait": True})
    assert response.status_code == 200, response.text
    assert (layout.adapters / "dl" / "adapter_config.json").read_bytes() == (
        layout.pvc / "lora-a" / "adapter_config.json"
    ).read_bytes()
    o.shutdown.set()


@pytest.mark.parametrize("output_dir", ["escape/k3", "ESCAPE_ABS", "escape"])
async def test_no_write_outside_the_adapter_root_through_a_symlink(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout, moto: MotoServer, output_dir: str
) -> None:
    (layout.adapters / "escape").symlink_to(layout.elsewhere)
    output_dir = output_dir.replace("ESCAPE_ABS", str(layout.adapters / "escape" / "k3"))
    o = await start_on(nursery, vllm, layout)
    for async_download in (False, True):
        body = {
            "lora_name": "k",
            "source": f"s3://{BUCKET}/lora",
            "output_dir": output_dir,
            "config": json.dumps(s3_config(moto)),
            "async_download": async_download,
        }
        response = await o.client.post("/v1/load_lora_adapter", json=body, timeout=30)
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert (error["type"], error["field"]) == ("path_outside_root", "output_dir")
    assert list(layout.elsewhere.iterdir()) == []
    assert vllm.load_calls() == []
    assert (await o.client.get("/v1/adapters")).json()["adapters"] == []
    o.shutdown.set()


async def test_a_symlink_made_after_the_declaration_does_not_lead_the_download_out(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout, moto: MotoServer
) -> None:
    """The fetcher confines the destination again, symlinks resolved, right before it writes."""
    o = await start_on(nursery, vllm, layout)
    (layout.adapters / "k").symlink_to(layout.elsewhere)  # <adapter-root>/<name>, the default destination
    body = {"source": f"s3://{BUCKET}/lora", "config": s3_config(moto), "wait": True}
    response = await o.client.put("/v1/adapters/k", json=body, timeout=30)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "path_outside_root"
    assert list(layout.elsewhere.iterdir()) == []
    assert vllm.load_calls() == []
    o.shutdown.set()


async def test_unload_deletes_what_outrider_downloaded_and_keeps_volume_adapters(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout, moto: MotoServer
) -> None:
    o = await start_on(nursery, vllm, layout)
    body = {"lora_name": "s3", "source": f"s3://{BUCKET}/lora", "config": s3_config(moto)}
    assert (await o.client.post("/v1/load_lora_adapter", json=body, timeout=30)).status_code == 200
    copied = {"source": "pvc://lora-a", "wait": True}
    assert (await o.client.put("/v1/adapters/copied", json=copied, timeout=30)).status_code == 200
    in_place = {"lora_name": "vol", "lora_path": str(layout.adapters / "in-place")}
    assert (await o.client.post("/v1/lora_adapter/load", json=in_place)).status_code == 200
    assert (layout.adapters / "s3" / "adapter_model.safetensors").is_file()
    assert (layout.adapters / "copied" / "adapter_model.safetensors").is_file()

    assert (await o.client.post("/v1/unload_lora_adapter", json={"lora_name": "s3"})).status_code == 200
    assert (await o.client.delete("/v1/adapters/copied?wait=true")).status_code in (200, 204)
    assert (await o.client.post("/v1/lora_adapter/unload", json={"lora_name": "vol"})).status_code == 200
    await wait_until(
        lambda: _async(not (layout.adapters / "s3").exists() and not (layout.adapters / "copied").exists()),
        what="the downloaded adapters' files to be deleted",
    )
    # Given as a path on the volume: never deleted. The pvc source a copy was made from: untouched.
    assert (layout.adapters / "in-place" / "adapter_model.safetensors").is_file()
    assert (layout.pvc / "lora-a" / "adapter_model.safetensors").is_file()
    assert [c.name for c in vllm.unload_calls()] == ["s3", "copied", "vol"]
    o.shutdown.set()


async def _async(value: bool) -> bool:
    return value
