"""Sleep, wake and KV limit relayed to a launched engine, idempotent by operation id; the model list, the snapshot
and the metrics as AIBrix's controller and Prometheus read them; the scrape and /ready following the engine."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import httpx
import trio

from outrider.lifecycle.options import LifecycleSettings
from outrider.lifecycle.records import RecordStore
from tests.fakes.engine import FakeEngine
from tests.integration.conftest import Running, start_outrider, wait_until
from tests.integration.lifecycle_fixtures import (
    lifecycle_settings,
    listed,
    make_artifact,
    outrider_settings,
    wait_metric,
)


async def _serving(
    nursery: trio.Nursery, tmp_path: Path, engine: FakeEngine, behaviour: dict[str, Any] | None = None, **changes: Any
) -> tuple[Running, LifecycleSettings, int]:
    lifecycle = lifecycle_settings(tmp_path, **changes)
    o = await start_outrider(nursery, outrider_settings(tmp_path, engine.base_url), lifecycle=lifecycle)
    make_artifact(tmp_path / "models" / "tiny", behaviour)
    answer = await o.client.post(
        "/v1/runtime/models/activate", json={"model_name": "tiny", "artifact_url": str(tmp_path / "models" / "tiny")}
    )
    assert answer.status_code == 200, answer.text
    return o, lifecycle, int(answer.json()["port"])


async def _op(o: Running, action: str, **body: Any) -> httpx.Response:
    return await o.client.post(f"/v1/runtime/models/{action}", json={"model_name": "tiny", **body})


async def _engine_sleeping(port: int) -> bool:
    async with httpx.AsyncClient() as engine:
        answer = await engine.get(f"http://127.0.0.1:{port}/is_sleeping")
    asleep: bool = answer.json()["is_sleeping"]
    return asleep


async def test_sleep_and_wake_are_relayed_and_idempotent_by_operation_id(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o, _, port = await _serving(nursery, tmp_path, vllm_engine, dev_routes=True)

    slept = await _op(o, "sleep", level=2, operation_id="op-1")

    assert slept.status_code == 200, slept.text
    assert slept.json() == {"status": "success", "model_name": "tiny", "operation_id": "op-1", "applied": True,
                            "phase": "sleeping"}  # fmt: skip
    assert await _engine_sleeping(port)
    assert (await listed(o.client))["tiny"]["phase"] == "sleeping"
    assert (await listed(o.client))["tiny"]["ready"] is False
    again = await _op(o, "sleep", level=2, operation_id="op-1")
    assert again.json() == {**slept.json(), "applied": False}

    woken = await _op(o, "wake", operation_id="op-2")

    assert woken.json()["applied"] is True and woken.json()["phase"] == "active"
    assert not await _engine_sleeping(port)
    # The first sleep's id again, now that the engine is awake: the first result, and the engine left awake.
    replay = await _op(o, "sleep", level=2, operation_id="op-1")
    assert replay.json() == {**slept.json(), "applied": False}
    assert not await _engine_sleeping(port)
    # A wake of an engine that is awake changes nothing, as AIBrix answers it.
    idle = await _op(o, "wake", operation_id="op-3")
    assert idle.json()["applied"] is False and idle.json()["phase"] == "active"


async def test_sleep_state_survives_in_the_record(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o, lifecycle, _ = await _serving(nursery, tmp_path, vllm_engine, dev_routes=True)
    assert (await _op(o, "sleep", level=1, operation_id="op-1")).status_code == 200

    record = RecordStore(lifecycle.state_dir).path("tiny").read_text()

    assert '"phase": "sleeping"' in record and '"op-1"' in record


async def test_sleep_without_the_engines_dev_routes_is_a_clear_409(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o, _, port = await _serving(nursery, tmp_path, vllm_engine)

    for action, body in (("sleep", {"level": 1, "operation_id": "op"}), ("wake", {"operation_id": "op"})):
        answer = await _op(o, action, **body)
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["type"] == "unsupported" and "--engine-dev-routes" in answer.json()["message"]
    async with httpx.AsyncClient() as engine:  # and the engine indeed has no such routes
        assert (await engine.get(f"http://127.0.0.1:{port}/is_sleeping")).status_code == 404


async def test_an_engine_refusing_to_sleep_is_reported_as_such(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o, _, _ = await _serving(nursery, tmp_path, vllm_engine, {"sleep_fails": True}, dev_routes=True)

    answer = await _op(o, "sleep", level=1, operation_id="op")

    assert answer.status_code == 502, answer.text
    assert answer.json()["status"] == "error" and "sleep failed" in answer.json()["message"]
    assert (await listed(o.client))["tiny"]["phase"] == "active"
    # Not remembered as done: the controller's retry is tried again.
    assert (await _op(o, "sleep", level=1, operation_id="op")).status_code == 502


async def test_kv_limit_without_a_kvcached_segment_is_a_clear_409_never_a_success(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o, _, _ = await _serving(nursery, tmp_path, vllm_engine)

    answer = await _op(o, "kv-limit", limit_bytes=1 << 30, operation_id="op")

    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["type"] == "unsupported" and "does not run kvcached" in answer.json()["message"]


async def test_kv_limit_writes_the_kvcached_segment_once_per_operation(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o, lifecycle, _ = await _serving(nursery, tmp_path, vllm_engine)
    segment = lifecycle.shm_dir / "kvc_tiny"  # what kvcached in the engine would have made
    segment.write_bytes(struct.pack("<3q", 8 << 30, 1 << 30, 1 << 20))

    answer = await _op(o, "kv-limit", limit_bytes=2 << 30, operation_id="op-1")

    assert answer.status_code == 200 and answer.json()["applied"] is True, answer.text
    assert struct.unpack("<3q", segment.read_bytes()) == (2 << 30, 1 << 30, 1 << 20)
    segment.write_bytes(struct.pack("<3q", 5 << 30, 1 << 30, 1 << 20))  # the engine's own figure since
    again = await _op(o, "kv-limit", limit_bytes=2 << 30, operation_id="op-1")
    assert again.json()["applied"] is False
    assert struct.unpack("<3q", segment.read_bytes())[0] == 5 << 30  # a repeated id writes nothing
    listing = (await listed(o.client))["tiny"]
    assert listing["kv_total_bytes"] == 5 << 30 and listing["kv_used_bytes"] == (1 << 30) + (1 << 20)


async def test_the_snapshot_reports_what_it_cannot_measure_as_unknown(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o, _, port = await _serving(nursery, tmp_path, vllm_engine)
    async with httpx.AsyncClient() as engine:
        await engine.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": "tiny", "prompt": "hi"})

    snapshot = (await o.client.get("/v1/runtime/snapshot")).json()

    assert snapshot["accelerators"] == []
    (model,) = snapshot["models"]
    assert model["kv_used_bytes"] == -1 and model["kv_capacity_bytes"] == -1 and model["hbm_peak_bytes"] == -1
    assert model["phase"] == "active" and model["ready"] is True and model["alive"] is True
    assert model["request_metrics_observed"] is True and model["request_success_total"] == 1
    assert model["restart_count"] == 0 and model["sleeping_footprint_bytes"] is None
    assert model["artifact_url"] == str(tmp_path / "models" / "tiny")
    listing = (await listed(o.client))["tiny"]
    assert listing["kv_used_bytes"] == 0 and listing["kv_total_bytes"] == 0  # the list's own spelling of unknown


async def test_engine_metrics_count_processes_activations_and_their_duration(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o, _, _ = await _serving(nursery, tmp_path, vllm_engine)

    await wait_metric(o.client, 'outrider_engine_processes{phase="active"} 1.0')
    page = (await o.client.get("/metrics")).text
    assert 'outrider_engine_processes{phase="booting"} 0.0' in page
    assert 'outrider_engine_activations_total{result="success"} 1.0' in page
    assert "outrider_engine_activation_duration_seconds_count 1.0" in page
    assert (await o.client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"})).status_code == 200
    await wait_metric(o.client, 'outrider_engine_processes{phase="active"} 0.0')


async def test_every_consumer_follows_one_engine_target_and_the_model_is_rediscovered(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    # No --model: the configured engine's model is asked of it, and asked again when the target comes back to it.
    o = await start_outrider(
        nursery, outrider_settings(tmp_path, vllm_engine.base_url, model=None), lifecycle=lifecycle_settings(tmp_path)
    )

    async def ready_for(model: str) -> bool:
        answer = await o.client.get("/ready")
        return answer.status_code == 200 and answer.json()["model"] == model

    await wait_until(lambda: ready_for(vllm_engine.model), 5, "/ready to name the configured engine's model")
    make_artifact(tmp_path / "models" / "launched")
    answer = await o.client.post(
        "/v1/runtime/models/activate",
        json={"model_name": "launched", "artifact_url": str(tmp_path / "models" / "launched")},
    )
    assert answer.status_code == 200, answer.text
    launched = f"http://127.0.0.1:{answer.json()['port']}"

    await wait_until(lambda: ready_for("launched"), 5, "/ready to follow the launched engine")
    assert o.runtime.scraper.current_url() == f"{launched}/metrics"
    assert o.runtime.adapters is not None and o.runtime.adapters.engine.base_url == launched  # the LoRA reconciler
    relayed = await o.client.get("/v1/models")  # AIBrix's relay of the engine's list, through the same client
    assert [m["id"] for m in relayed.json()["data"]] == ["launched"]
    assert "vllm:num_requests_running" in (await o.client.get("/metrics")).text

    assert (await o.client.post("/v1/runtime/models/deactivate", json={"model_name": "launched"})).status_code == 200
    await wait_until(lambda: ready_for(vllm_engine.model), 5, "the model to be asked of the configured engine again")
    assert o.runtime.scraper.current_url() == f"{vllm_engine.base_url}/metrics"
    assert o.runtime.adapters.engine.base_url == vllm_engine.base_url
    relayed = await o.client.get("/v1/models")
    assert [m["id"] for m in relayed.json()["data"]] == [vllm_engine.model]
