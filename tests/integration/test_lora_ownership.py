"""outrider writes only into directories that are its own and deletes only files it wrote, on every LoRA route.

A shared adapter volume holds an operator's adapters, used in place, beside the ones outrider downloads. Each test
drives the real download engine (pvc:// sources outside the adapter root are copied by it) and a stand-in vLLM,
over real sockets, and checks the operator's files byte for byte afterwards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio

from outrider.transfer import state
from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import Running
from tests.integration.lora_fixtures import Layout, layout, make_adapter, start_on, vllm

__all__ = ["layout", "vllm"]  # fixtures


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (links not followed) and its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


async def post(o: Running, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = await o.client.post(path, json=body, timeout=60)
    return response.status_code, response.json()


def conflict_on(answer: Any, field: str) -> bool:
    return bool(answer["error"]["type"] == "conflict" and answer["error"]["field"] == field)


async def test_a_delegated_load_named_after_an_operators_directory_neither_writes_nor_deletes_it(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout
) -> None:
    o = await start_on(nursery, vllm, layout)
    operators = layout.adapters / "in-place"
    (operators / "README.md").write_text("the operator's notes")
    before = snapshot(operators)

    status, answer = await post(o, "/v1/lora_adapter/load", {"lora_name": "in-place", "artifact_url": "pvc://lora-a"})

    assert status == 409 and conflict_on(answer, "lora_name"), answer
    assert "did not download" in answer["error"]["message"]
    assert snapshot(operators) == before and vllm.load_calls() == []
    status, _ = await post(o, "/v1/lora_adapter/unload", {"lora_name": "in-place", "cleanup_local": True})
    assert status == 200
    assert snapshot(operators) == before
    o.shutdown.set()


async def test_a_symlink_inside_the_root_does_not_lead_a_download_into_an_operators_directory(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout
) -> None:
    o = await start_on(nursery, vllm, layout)
    operators = layout.adapters / "in-place"
    before = snapshot(operators)
    os.symlink(operators, layout.adapters / "alias")

    status, answer = await post(o, "/v1/lora_adapter/load", {"lora_name": "alias", "artifact_url": "pvc://lora-a"})

    assert status == 409 and conflict_on(answer, "lora_name"), answer
    status, _ = await post(o, "/v1/lora_adapter/unload", {"lora_name": "alias", "cleanup_local": True})
    assert status == 200
    assert snapshot(operators) == before
    o.shutdown.set()


async def test_a_kthena_output_dir_naming_another_adapters_directory_is_refused_and_that_adapter_kept(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout
) -> None:
    make_adapter(layout.pvc, "lora-b")
    o = await start_on(nursery, vllm, layout)
    status, answer = await post(o, "/v1/lora_adapter/load", {"lora_name": "sql", "artifact_url": "pvc://lora-a"})
    assert status == 200, answer
    theirs = layout.adapters / "sql"
    before = snapshot(theirs)

    for source in ("pvc://lora-b", "pvc://lora-a"):  # another source, and the same one: sharing is refused too
        for output_dir in (str(theirs), str(theirs / "inside")):
            body = {"lora_name": "b", "source": source, "output_dir": output_dir}
            status, answer = await post(o, "/v1/load_lora_adapter", body)
            assert status == 409 and conflict_on(answer, "output_dir"), (source, output_dir, answer)

    assert (await o.client.post("/v1/unload_lora_adapter", json={"lora_name": "b"})).status_code == 404
    assert snapshot(theirs) == before
    assert vllm.loaded == {"sql": str(theirs)}
    o.shutdown.set()


async def test_an_output_dir_of_files_outrider_did_not_write_is_refused(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout
) -> None:
    o = await start_on(nursery, vllm, layout)
    before = snapshot(layout.adapters / "in-place")
    body = {"lora_name": "b", "source": "pvc://lora-a", "output_dir": str(layout.adapters / "in-place")}

    status, answer = await post(o, "/v1/load_lora_adapter", body)

    assert status == 409 and conflict_on(answer, "output_dir"), answer
    assert snapshot(layout.adapters / "in-place") == before
    o.shutdown.set()


async def test_an_unload_deletes_only_the_files_outrider_downloaded(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout
) -> None:
    o = await start_on(nursery, vllm, layout)
    for name in ("kept-dir", "gone-dir"):
        status, answer = await post(o, "/v1/lora_adapter/load", {"lora_name": name, "artifact_url": "pvc://lora-a"})
        assert status == 200, answer
    added = layout.adapters / "kept-dir" / "notes" / "operator.txt"
    added.parent.mkdir()
    added.write_text("written beside outrider's files")

    for name in ("kept-dir", "gone-dir"):
        status, _ = await post(o, "/v1/lora_adapter/unload", {"lora_name": name, "cleanup_local": True})
        assert status == 200

    async def deleted() -> bool:
        return (
            not (layout.adapters / "gone-dir").exists()
            and not (layout.adapters / "kept-dir" / state.RECORD_NAME).exists()
        )

    with trio.fail_after(10):
        while not await deleted():  # noqa: ASYNC110 - the delete runs in the reconciler's nursery, after the answer
            await trio.sleep(0.02)
    assert snapshot(layout.adapters / "kept-dir") == {"notes/operator.txt": b"written beside outrider's files"}
    o.shutdown.set()


async def test_a_new_source_for_an_adapter_replaces_its_old_download(
    nursery: trio.Nursery, vllm: FakeLoraEngine, layout: Layout
) -> None:
    (make_adapter(layout.pvc, "lora-b") / "adapter_model.safetensors").write_bytes(b"\1" * 32)
    o = await start_on(nursery, vllm, layout)
    for source in ("pvc://lora-a", "pvc://lora-b"):
        response = await o.client.put("/v1/adapters/x", json={"source": source, "wait": True}, timeout=60)
        assert response.status_code == 200, response.text
    dest = layout.adapters / "x"
    assert (dest / "adapter_model.safetensors").read_bytes() == b"\1" * 32
    record = state.load_record(dest)
    assert record is not None and record.source == "pvc://lora-b"
    o.shutdown.set()
