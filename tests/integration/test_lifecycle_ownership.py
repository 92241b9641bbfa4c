"""What belongs to one engine stays its own: its kvcached segment (created by outrider, never a file a request
names), its flags, segment and claim on re-activation, and its files in a directory of its own."""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from outrider.lifecycle.records import RecordStore
from tests.fakes.engine import FakeEngine
from tests.integration.conftest import Running, start_outrider
from tests.integration.lifecycle_fixtures import (
    group_gone,
    lifecycle_settings,
    listed,
    make_artifact,
    outrider_settings,
)


async def _outrider(nursery: trio.Nursery, tmp_path: Path, engine: FakeEngine, **changes: Any) -> Running:
    return await start_outrider(
        nursery, outrider_settings(tmp_path, engine.base_url), lifecycle=lifecycle_settings(tmp_path, **changes)
    )


async def _activate(o: Running, tmp_path: Path, model: str, **body: Any) -> httpx.Response:
    make_artifact(tmp_path / "models" / model)
    return await o.client.post(
        "/v1/runtime/models/activate",
        json={"model_name": model, "artifact_url": str(tmp_path / "models" / model), **body},
    )


async def test_a_request_cannot_point_a_segment_at_a_file_outrider_did_not_create(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o = await _outrider(nursery, tmp_path, vllm_engine)
    foreign = tmp_path / "shm" / "someone-elses"
    foreign.write_bytes(struct.pack("<3q", 111, 222, 333))

    answer = await _activate(o, tmp_path, "tiny", ipc_name="someone-elses")

    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["field"] == "ipc_name" and "not created by outrider" in answer.json()["message"]
    assert await listed(o.client) == {}
    assert struct.unpack("<3q", foreign.read_bytes()) == (111, 222, 333)  # never rewritten, and still there
    # Its own segment: created by outrider before the launch, limited once kvcached has set it up, gone with it.
    assert (await _activate(o, tmp_path, "tiny")).status_code == 200
    segment = tmp_path / "shm" / "kvc_tiny"
    assert segment.read_bytes() == bytes(0)
    limit = {"model_name": "tiny", "limit_bytes": 0, "operation_id": "op"}
    assert (await o.client.post("/v1/runtime/models/kv-limit", json=limit)).status_code == 409  # not set up yet
    segment.write_bytes(struct.pack("<3q", 8 << 30, 1 << 30, 0))  # kvcached in the engine: the same file, set up
    assert (await o.client.post("/v1/runtime/models/kv-limit", json=limit)).json()["applied"] is True
    assert struct.unpack("<3q", segment.read_bytes())[0] == 0
    assert (await o.client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"})).status_code == 200
    assert not segment.exists()


async def test_no_two_models_share_a_segment(nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine) -> None:
    o = await _outrider(nursery, tmp_path, vllm_engine)

    first, second = await _activate(o, tmp_path, "a.b"), await _activate(o, tmp_path, "a-b")

    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.json()["ipc_name"] == "kvc_a-b"  # as kvcached and AIBrix spell it
    assert second.json()["ipc_name"] != "kvc_a-b" and second.json()["ipc_name"].startswith("kvc_a-b-")
    taken = await _activate(o, tmp_path, "c", ipc_name="kvc_a.b")  # spelled kvc_a-b: a.b's segment
    assert taken.status_code == 409 and taken.json()["error"]["field"] == "ipc_name", taken.text
    assert "a.b" in taken.json()["message"]
    assert sorted(m["ipc_name"] for m in (await listed(o.client)).values()) == sorted(
        [first.json()["ipc_name"], second.json()["ipc_name"]]
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"engine_config": {"args": {"--max-model-len": "4096"}}}, "engine_config.args"),
        ({"engine_config": {"args": {}}}, "engine_config.args"),
        ({"ipc_name": "kvc_other"}, "ipc_name"),
        ({"claim_ref": {"namespace": "default", "name": "tiny", "uid": "uid-2"}}, "claim_ref"),
    ],
)
async def test_a_reactivation_asking_for_another_engine_is_a_409_naming_the_field(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine, change: dict[str, Any], field: str
) -> None:
    o = await _outrider(nursery, tmp_path, vllm_engine)
    first: dict[str, Any] = {
        "engine_config": {"args": {"--max-model-len": "2048"}},
        "ipc_name": "kvc_tiny",
        "claim_ref": {"namespace": "default", "name": "tiny", "uid": "uid-1"},
    }
    assert (await _activate(o, tmp_path, "tiny", **first)).status_code == 200
    assert (await _activate(o, tmp_path, "tiny", **first)).status_code == 200  # the same ask joins it

    answer = await _activate(o, tmp_path, "tiny", **{**first, **change})

    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["field"] == field
    store = RecordStore(tmp_path / "state")
    (record,) = store.load_all()
    assert record.flags == ["--max-model-len", "2048"] and record.ipc_name == "kvc_tiny"
    assert record.claim_ref == first["claim_ref"]
    line = [x for x in store.output_path("tiny").read_text().splitlines() if x.startswith("STANDIN ")]
    assert len(line) == 1 and '"--max-model-len", "2048"' in line[0]  # launched once, with the first flags


async def test_each_engines_files_are_its_own(nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine) -> None:
    o = await _outrider(nursery, tmp_path, vllm_engine)
    store = RecordStore(tmp_path / "state")
    make_artifact(tmp_path / "models" / "x", {"exit_after": 0.0, "exit_code": 4})
    failed = await o.client.post(
        "/v1/runtime/models/activate", json={"model_name": "x", "artifact_url": str(tmp_path / "models" / "x")}
    )
    assert failed.status_code == 500, failed.text
    assert "STANDIN " in store.failed_output_path("x").read_text()

    # The model named like x's failure log in the earlier layout (`x.failed.log`): its own files, x's untouched.
    assert (await _activate(o, tmp_path, "x.failed")).status_code == 200
    assert '"x.failed"' in store.output_path("x.failed").read_text()
    assert '"x.failed"' not in store.failed_output_path("x").read_text()
    assert (await o.client.post("/v1/runtime/models/deactivate", json={"model_name": "x.failed"})).status_code == 200
    assert "STANDIN " in store.failed_output_path("x").read_text()
    assert not store.engine_dir("x.failed").exists()


async def test_a_record_of_the_earlier_layout_is_still_read(tmp_path: Path, vllm_engine: FakeEngine) -> None:
    lifecycle = lifecycle_settings(tmp_path)
    async with trio.open_nursery() as serving:
        first = await start_outrider(
            serving,
            outrider_settings(tmp_path, vllm_engine.base_url),
            lifecycle=dataclasses.replace(lifecycle, on_exit="keep"),
        )
        assert (await _activate(first, tmp_path, "tiny")).status_code == 200
        first.shutdown.set()
    store = RecordStore(lifecycle.state_dir)
    # What an outrider before the per-engine directories left: <model>.json beside <model>.log.
    os.replace(store.path("tiny"), lifecycle.state_dir / "tiny.json")
    os.replace(store.output_path("tiny"), lifecycle.state_dir / "tiny.log")
    store.engine_dir("tiny").rmdir()

    async with trio.open_nursery() as serving:
        second = await start_outrider(serving, outrider_settings(tmp_path, vllm_engine.base_url), lifecycle=lifecycle)
        assert (await listed(second.client))["tiny"]["phase"] == "active"
        assert store.path("tiny").exists() and not (lifecycle.state_dir / "tiny.json").exists()
        assert "STANDIN " in store.output_path("tiny").read_text()
        pid = store.load_all()[0].pid
        second.shutdown.set()
    assert pid is not None and group_gone(pid)  # adopted, so stopped at shutdown
