"""Engine processes outrider launches, with a stand-in engine (tests/fakes/standin_engine.py) as the program the
allowlist names: activation from every kind of artifact, the command line and environment a request can and cannot
shape, exits noticed and reported, stops that leave no process behind."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from outrider.lifecycle import process
from outrider.lifecycle.options import LifecycleSettings
from outrider.lifecycle.records import RecordStore
from tests.fakes.engine import FakeEngine
from tests.integration.conftest import Running, start_outrider, wait_until
from tests.integration.lifecycle_fixtures import (
    group_gone,
    lifecycle_settings,
    listed,
    make_artifact,
    outrider_settings,
    standin_line,
    wait_metric,
    wait_phase,
)
from tests.servers.moto import MotoServer

pytestmark = pytest.mark.usefixtures("vllm_engine")


async def _start(
    nursery: trio.Nursery, tmp_path: Path, engine: FakeEngine, lifecycle: LifecycleSettings, **changes: Any
) -> Running:
    return await start_outrider(nursery, outrider_settings(tmp_path, engine.base_url, **changes), lifecycle=lifecycle)


async def _activate(o: Running, **body: Any) -> httpx.Response:
    return await o.client.post("/v1/runtime/models/activate", json=body, timeout=30)


async def test_activate_in_place_serves_and_deactivate_leaves_no_process(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    lifecycle = lifecycle_settings(tmp_path)
    o = await _start(nursery, tmp_path, vllm_engine, lifecycle)
    artifact = make_artifact(tmp_path / "models" / "tiny", {"worker": True})

    answer = await _activate(o, model_name="tiny", artifact_url=str(artifact))

    assert answer.status_code == 200, answer.text
    body = answer.json()
    low, high = lifecycle.ports
    assert body["status"] == "success" and body["model_name"] == "tiny" and low <= body["port"] <= high
    assert body["ipc_name"] == "kvc_tiny" and body["message"] is None
    models = await listed(o.client)
    assert models["tiny"]["phase"] == "active" and models["tiny"]["ready"] is True
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{body['port']}") as engine:
        completion = await engine.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
    assert completion.status_code == 200 and completion.json()["model"] == "tiny"
    record = o.runtime.engines.get("tiny") if o.runtime.engines else None
    assert record is not None and record.pid is not None
    pgid = record.pid
    assert len(process.group_members(pgid)) == 2  # the server and the worker it forked

    gone = await o.client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"})

    assert gone.status_code == 200 and gone.json() == {"status": "success"}
    assert group_gone(pgid), "a process of the engine's group outlived the deactivation"
    assert await listed(o.client) == {}
    assert not RecordStore(lifecycle.state_dir).path("tiny").exists()
    assert artifact.is_dir()  # used in place: never the supervisor's to delete


async def test_activate_from_pvc_fetches_the_artifact_into_the_model_root(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    lifecycle = lifecycle_settings(tmp_path)
    o = await _start(nursery, tmp_path, vllm_engine, lifecycle)
    make_artifact(tmp_path / "volume" / "weights" / "tiny")

    answer = await _activate(o, model_name="tiny-pvc", artifact_url="pvc://weights/tiny")

    assert answer.status_code == 200, answer.text
    fetched = tmp_path / "models" / "tiny-pvc"
    assert (fetched / "model.safetensors").read_bytes() == (
        tmp_path / "volume" / "weights" / "tiny" / "model.safetensors"
    ).read_bytes()
    seen = standin_line(lifecycle.state_dir, "tiny-pvc")
    assert seen["argv"][seen["argv"].index("--model") + 1] == str(fetched)
    snapshot = (await o.client.get("/v1/runtime/snapshot")).json()
    assert snapshot["models"][0]["artifact_url"] == "pvc://weights/tiny"
    assert "pvc://weights/tiny" in snapshot["cached_artifacts"]


async def test_activate_from_s3_with_the_requests_credentials(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    built = make_artifact(tmp_path / "build" / "tiny")
    server = MotoServer()
    await trio.to_thread.run_sync(server.start)
    try:
        await trio.to_thread.run_sync(
            server.seed, "models", {f"tiny/{f.name}": f.read_bytes() for f in built.iterdir()}
        )
        await trio.to_thread.run_sync(server.enforce_auth, True)
        lifecycle = lifecycle_settings(tmp_path)
        o = await _start(nursery, tmp_path, vllm_engine, lifecycle)
        access, secret = server.reader

        answer = await _activate(
            o,
            model_name="tiny-s3",
            artifact_url="s3://models/tiny",
            credentials={"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret, "endpoint": server.url},
        )

        assert answer.status_code == 200, answer.text
        assert (tmp_path / "models" / "tiny-s3" / "model.safetensors").read_bytes() == (
            built / "model.safetensors"
        ).read_bytes()
        assert secret not in caplog.text
        assert secret not in RecordStore(lifecycle.state_dir).path("tiny-s3").read_text()
        env = standin_line(lifecycle.state_dir, "tiny-s3")["env"]
        # None of outrider's settings or credentials; only the launch id that finds the engine again.
        assert [name for name in env if name.startswith(("AWS_", "OUTRIDER_"))] == [process.LAUNCH_ID_VAR]
    finally:
        await trio.to_thread.run_sync(server.stop)


async def test_engine_flags_environment_and_api_key_are_outriders(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    # The engine inherits outrider's environment without its settings and credentials.
    inherited = (("PATH", os.environ["PATH"]), ("AWS_SECRET_ACCESS_KEY", "pod-secret"), ("OUTRIDER_API_TOKEN", "t"))
    lifecycle = lifecycle_settings(tmp_path, environment=inherited)
    o = await _start(nursery, tmp_path, vllm_engine, lifecycle, engine_api_key="engine-key-0123456789")
    make_artifact(tmp_path / "models" / "tiny")

    answer = await _activate(
        o,
        model_name="tiny",
        artifact_url=str(tmp_path / "models" / "tiny"),
        ipc_name="kvc tiny.v1",
        engine_config={"args": {"--max-model-len": "2048", "--enforce-eager": "", "--enable-prefix-caching": "false"}},
        additional_config={"engine-arg:--dtype": "float32", "unrelated": "ignored"},
        claim_ref={"namespace": "llm", "name": "claim", "uid": "u-1"},
    )

    assert answer.status_code == 200, answer.text
    assert answer.json()["ipc_name"] == "kvc-tiny-v1"  # kvcached's own spelling of the name
    seen = standin_line(lifecycle.state_dir, "tiny")
    port = str(answer.json()["port"])
    assert seen["argv"][-7:] == ["--port", port, "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32"]
    assert "--enable-prefix-caching" not in seen["argv"]
    assert seen["ipc_name"] == "kvc-tiny-v1" and seen["dev_mode"] is None
    assert seen["api_key_set"] and not any("engine-key" in a for a in seen["argv"])
    assert "AWS_SECRET_ACCESS_KEY" not in seen["env"] and "OUTRIDER_API_TOKEN" not in seen["env"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as engine:
        body = {"model": "tiny", "prompt": "hi"}
        assert (await engine.post("/v1/completions", json=body)).status_code == 401
        authorized = {"Authorization": "Bearer engine-key-0123456789"}
        assert (await engine.post("/v1/completions", json=body, headers=authorized)).status_code == 200
    snapshot = (await o.client.get("/v1/runtime/snapshot")).json()
    assert snapshot["models"][0]["claim_ref"] == {"namespace": "llm", "name": "claim", "uid": "u-1"}


async def test_engine_output_reaches_outriders_log_with_the_model_name(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="outrider.engine")
    o = await _start(nursery, tmp_path, vllm_engine, lifecycle_settings(tmp_path))
    make_artifact(tmp_path / "models" / "tiny")
    assert (await _activate(o, model_name="tiny", artifact_url=str(tmp_path / "models" / "tiny"))).status_code == 200

    async def logged() -> bool:
        return any(
            r.name == "outrider.engine" and getattr(r, "model", None) == "tiny" and r.getMessage().startswith("STANDIN")
            for r in caplog.records
        )

    await wait_until(logged, 5, "the engine's first line in outrider's log")


async def test_an_exit_is_reported_failed_with_its_code_and_its_workers_stopped(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o = await _start(nursery, tmp_path, vllm_engine, lifecycle_settings(tmp_path))
    make_artifact(tmp_path / "models" / "tiny", {"worker": True})
    port = (await _activate(o, model_name="tiny", artifact_url=str(tmp_path / "models" / "tiny"))).json()["port"]
    assert o.runtime.engines is not None
    pgid = o.runtime.engines.get("tiny").pid
    assert pgid is not None

    async with httpx.AsyncClient() as engine:
        await engine.post(f"http://127.0.0.1:{port}/standin/exit?code=3")

    await wait_phase(o.client, "tiny", "failed")
    snapshot = (await o.client.get("/v1/runtime/snapshot")).json()["models"][0]
    assert snapshot["last_error"] == "the engine exited with code 3"
    assert snapshot["alive"] is False and snapshot["ready"] is False
    await wait_until(lambda: trio.to_thread.run_sync(group_gone, pgid), 10, "the orphaned worker to be stopped")
    # A failed model stays listed until it is deactivated, and cannot be activated again before.
    again = await _activate(o, model_name="tiny", artifact_url=str(tmp_path / "models" / "tiny"))
    assert again.status_code == 409 and "deactivate it" in again.json()["message"]
    assert (await o.client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"})).status_code == 200
    assert await listed(o.client) == {}
    await wait_metric(o.client, "outrider_engine_exits_total 1.0")


async def test_a_killed_engine_is_reported(nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine) -> None:
    o = await _start(nursery, tmp_path, vllm_engine, lifecycle_settings(tmp_path))
    make_artifact(tmp_path / "models" / "tiny")
    assert (await _activate(o, model_name="tiny", artifact_url=str(tmp_path / "models" / "tiny"))).status_code == 200
    assert o.runtime.engines is not None
    pid = o.runtime.engines.get("tiny").pid
    assert pid is not None

    os.kill(pid, signal.SIGKILL)

    await wait_phase(o.client, "tiny", "failed")
    snapshot = (await o.client.get("/v1/runtime/snapshot")).json()["models"][0]
    assert snapshot["last_error"] == "the engine was killed by SIGKILL"


async def test_an_exit_during_start_fails_the_activation_and_leaves_nothing(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    lifecycle = lifecycle_settings(tmp_path)
    o = await _start(nursery, tmp_path, vllm_engine, lifecycle)
    make_artifact(tmp_path / "models" / "bad", {"never_healthy": True, "exit_after": 0, "exit_code": 7})

    answer = await _activate(o, model_name="bad", artifact_url=str(tmp_path / "models" / "bad"))

    assert answer.status_code == 500, answer.text
    body = answer.json()
    assert body["status"] == "error" and body["model_name"] == "bad" and body["port"] == 0
    assert body["error"]["type"] == "engine_failed" and "exited with code 7" in body["message"]
    assert await listed(o.client) == {}
    # Nothing left but the engine's output, kept for a person to read.
    failed = RecordStore(lifecycle.state_dir).failed_output_path("bad")
    assert [p.name for p in failed.parent.iterdir()] == ["failed.log"]
    assert "STANDIN " in failed.read_text()
    assert str(failed) in body["message"]
    await wait_metric(o.client, 'outrider_engine_activations_total{result="failed"} 1.0')


async def test_an_engine_that_never_answers_health_is_stopped_after_the_timeout(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o = await _start(nursery, tmp_path, vllm_engine, lifecycle_settings(tmp_path, ready_timeout=1.0))
    make_artifact(tmp_path / "models" / "mute", {"never_healthy": True})

    answer = await _activate(o, model_name="mute", artifact_url=str(tmp_path / "models" / "mute"))

    assert answer.status_code == 500 and "did not answer /health within 1s" in answer.json()["message"]
    assert await listed(o.client) == {}


async def test_a_stop_escalates_to_sigkill_for_an_engine_that_ignores_sigterm(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o = await _start(nursery, tmp_path, vllm_engine, lifecycle_settings(tmp_path, stop_grace=0.3))
    make_artifact(tmp_path / "models" / "stubborn", {"ignore_sigterm": True, "worker": True})
    artifact = str(tmp_path / "models" / "stubborn")
    assert (await _activate(o, model_name="stubborn", artifact_url=artifact)).status_code == 200
    assert o.runtime.engines is not None
    pgid = o.runtime.engines.get("stubborn").pid
    assert pgid is not None

    assert (await o.client.post("/v1/runtime/models/deactivate", json={"model_name": "stubborn"})).status_code == 200

    assert group_gone(pgid)


async def test_concurrent_activations_of_one_model_share_one_engine(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    lifecycle = lifecycle_settings(tmp_path)
    o = await _start(nursery, tmp_path, vllm_engine, lifecycle)
    make_artifact(tmp_path / "models" / "tiny", {"health_after": 0.5})
    answers: list[httpx.Response] = []

    async def activate() -> None:
        answers.append(await _activate(o, model_name="tiny", artifact_url=str(tmp_path / "models" / "tiny")))

    async with trio.open_nursery() as both:
        both.start_soon(activate)
        both.start_soon(activate)

    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert RecordStore(lifecycle.state_dir).output_path("tiny").read_text().count("STANDIN ") == 1


async def test_shutdown_stops_every_engine(tmp_path: Path, vllm_engine: FakeEngine) -> None:
    make_artifact(tmp_path / "models" / "tiny", {"worker": True})
    async with trio.open_nursery() as serving:  # outrider runs in it, and is gone once it closes
        o = await _start(serving, tmp_path, vllm_engine, lifecycle_settings(tmp_path))
        answer = await _activate(o, model_name="tiny", artifact_url=str(tmp_path / "models" / "tiny"))
        assert answer.status_code == 200
        assert o.runtime.engines is not None
        pgid = o.runtime.engines.get("tiny").pid
        assert pgid is not None
        o.shutdown.set()

    assert group_gone(pgid)


async def test_an_activation_still_starting_after_answer_within_is_answered_and_goes_on(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o = await _start(nursery, tmp_path, vllm_engine, lifecycle_settings(tmp_path, answer_within=0.2))
    go = tmp_path / "healthy-now"
    make_artifact(tmp_path / "models" / "slow", {"healthy_when": str(go)})

    answer = await _activate(o, model_name="slow", artifact_url=str(tmp_path / "models" / "slow"))

    assert answer.status_code == 200 and answer.json()["message"].startswith("the engine is still starting")
    assert (await listed(o.client))["slow"] == {**(await listed(o.client))["slow"], "phase": "booting", "ready": False}
    go.touch()
    await wait_phase(o.client, "slow", "active")
    again = await _activate(o, model_name="slow", artifact_url=str(tmp_path / "models" / "slow"))
    assert again.status_code == 200 and again.json()["message"] is None
