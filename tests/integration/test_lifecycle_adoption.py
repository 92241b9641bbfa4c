"""An outrider that restarts finds its engines again from their records: it adopts those still running (the same
pid and start time), reports those that stopped meanwhile, stops those it may no longer run, and never signals a
process that merely reuses a recorded pid."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from outrider.lifecycle import process
from outrider.lifecycle.config import parse_launch
from outrider.lifecycle.options import LifecycleSettings
from outrider.lifecycle.phases import Phase
from outrider.lifecycle.records import EngineRecord, RecordStore
from tests.fakes.engine import FakeEngine
from tests.integration.conftest import Running, start_outrider, wait_until
from tests.integration.lifecycle_fixtures import (
    STANDIN,
    group_gone,
    lifecycle_settings,
    listed,
    make_artifact,
    outrider_settings,
    wait_phase,
)


async def _outrider(nursery: trio.Nursery, tmp_path: Path, engine: FakeEngine, lifecycle: LifecycleSettings) -> Running:
    return await start_outrider(nursery, outrider_settings(tmp_path, engine.base_url), lifecycle=lifecycle)


async def _left_running(tmp_path: Path, engine: FakeEngine, lifecycle: LifecycleSettings, **body: Any) -> EngineRecord:
    """An outrider that activates a model and stops, leaving its engine running; returns the engine's record."""
    make_artifact(tmp_path / "models" / "tiny", {"worker": True})
    async with trio.open_nursery() as serving:
        first = await _outrider(serving, tmp_path, engine, dataclasses.replace(lifecycle, on_exit="keep"))
        answer = await first.client.post(
            "/v1/runtime/models/activate",
            json={"model_name": "tiny", "artifact_url": str(tmp_path / "models" / "tiny"), **body},
        )
        assert answer.status_code == 200, answer.text
        first.shutdown.set()
    (record,) = RecordStore(lifecycle.state_dir).load_all()
    assert record.pid is not None and not group_gone(record.pid), "on_exit=keep stopped the engine"
    return record


async def test_a_restarted_outrider_adopts_a_running_engine(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    lifecycle = lifecycle_settings(tmp_path)
    claim = {"namespace": "n", "name": "c", "uid": "u"}
    record = await _left_running(tmp_path, vllm_engine, lifecycle, claim_ref=claim)
    assert record.pid is not None
    caplog.set_level(logging.INFO, logger="outrider.engine")

    second = await _outrider(nursery, tmp_path, vllm_engine, lifecycle)

    models = await listed(second.client)
    assert models["tiny"]["phase"] == "active" and models["tiny"]["ready"] is True
    assert models["tiny"]["port"] == record.port
    snapshot = (await second.client.get("/v1/runtime/snapshot")).json()["models"][0]
    assert snapshot["claim_ref"] == claim and snapshot["alive"] is True
    # Its output reaches the new outrider's log too.
    async with httpx.AsyncClient() as engine:
        await engine.get(f"http://127.0.0.1:{record.port}/v1/models")

    async def logged() -> bool:
        return any(getattr(r, "model", None) == "tiny" and "/v1/models" in r.getMessage() for r in caplog.records)

    await wait_until(logged, 5, "the adopted engine's output in the new outrider's log")
    # And it is the new outrider's to stop: all of it.
    assert (await second.client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"})).status_code == 200
    assert group_gone(record.pid)


async def test_an_adopted_engine_that_exits_is_reported(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    lifecycle = lifecycle_settings(tmp_path)
    record = await _left_running(tmp_path, vllm_engine, lifecycle)
    second = await _outrider(nursery, tmp_path, vllm_engine, lifecycle)
    pgid = record.pid
    assert pgid is not None

    os.kill(pgid, signal.SIGKILL)

    await wait_phase(second.client, "tiny", "failed")
    snapshot = (await second.client.get("/v1/runtime/snapshot")).json()["models"][0]
    assert "exit code is unknown" in snapshot["last_error"]  # not outrider's child any more: not its to read
    await wait_until(lambda: trio.to_thread.run_sync(group_gone, pgid), 10, "its worker to be stopped")


async def test_an_engine_that_stopped_while_outrider_was_down_is_failed(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    lifecycle = lifecycle_settings(tmp_path)
    record = await _left_running(tmp_path, vllm_engine, lifecycle)
    pgid = record.pid
    assert pgid is not None
    process.signal_group(pgid, signal.SIGKILL)
    await wait_until(lambda: trio.to_thread.run_sync(group_gone, pgid), 10, "the engine to be gone")

    second = await _outrider(nursery, tmp_path, vllm_engine, lifecycle)

    models = await listed(second.client)
    assert models["tiny"]["phase"] == "failed" and models["tiny"]["ready"] is False
    snapshot = (await second.client.get("/v1/runtime/snapshot")).json()["models"][0]
    assert snapshot["last_error"].endswith("while outrider was not running")
    assert (await second.client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"})).status_code == 200
    assert await listed(second.client) == {}


async def test_an_engine_outrider_may_no_longer_run_is_stopped(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    lifecycle = lifecycle_settings(tmp_path)
    record = await _left_running(tmp_path, vllm_engine, lifecycle)
    assert record.pid is not None
    only_sglang = dataclasses.replace(lifecycle, commands=parse_launch(f"sglang={sys.executable} {STANDIN}"))

    second = await _outrider(nursery, tmp_path, vllm_engine, only_sglang)

    await wait_phase(second.client, "tiny", None)
    assert group_gone(record.pid)
    assert not RecordStore(lifecycle.state_dir).path("tiny").exists()


async def test_a_reused_pid_is_never_signalled(nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine) -> None:
    lifecycle = lifecycle_settings(tmp_path)
    # A process that is not the recorded engine, under the recorded pid (as after a reboot or pid wrap-around).
    bystander = subprocess.Popen(  # noqa: ASYNC220 - started before outrider, nothing to wait for
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    try:
        ident = process.identity(bystander.pid)
        assert ident is not None
        store = RecordStore(lifecycle.state_dir)
        store.prepare()
        record = EngineRecord("tiny", "vllm", "/models/tiny", lifecycle.ports[0], "kvc_tiny", phase=Phase.ACTIVE)
        record.set_identity(dataclasses.replace(ident, start_ticks=ident.start_ticks - 1))
        store.save(record)

        second = await _outrider(nursery, tmp_path, vllm_engine, lifecycle)

        assert (await listed(second.client))["tiny"]["phase"] == "failed"
        assert (
            await second.client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"})
        ).status_code == 200
        assert bystander.poll() is None, "outrider signalled a process that only shares the recorded pid"
    finally:
        bystander.kill()
        bystander.wait()


async def test_a_record_of_an_activation_that_never_launched_is_dropped(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    lifecycle = lifecycle_settings(tmp_path)
    store = RecordStore(lifecycle.state_dir)
    store.prepare()
    store.save(EngineRecord("half", "vllm", "s3://b/half", lifecycle.ports[0], "kvc_half", phase=Phase.DOWNLOADING))
    (lifecycle.state_dir / "junk.json").write_text("{not json")

    second = await _outrider(nursery, tmp_path, vllm_engine, lifecycle)

    assert await listed(second.client) == {}
    assert not RecordStore(lifecycle.state_dir).path("half").exists()
    assert (lifecycle.state_dir / "junk.json").exists()  # unreadable: left for a person to look at
