"""The engine lifecycle under the interleavings that broke it: a deactivation at each step of the launch, a
shutdown in the middle of a stop, an outrider killed at each step of the launch, and a bounded sweep of
deactivations a few milliseconds after an activation, against the stand-in engine.

The steps are put in place by the supervisor's step hook (`Supervisor.on_step`): a deterministic interleaving,
not a timing; the sweep is the timing check on top.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from outrider.lifecycle import process
from outrider.lifecycle.engine import Engine
from outrider.lifecycle.phases import Phase
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

ROOT = Path(__file__).resolve().parents[2]
STOP_STEPS = ("stop.begun", "stop.signalling", "stop.stopped")
LAUNCH_STEPS = ("artifact.ready", "launch.recorded", "launch.spawned", "launch.identified", "launch.saved")
# A deactivation must answer within this (the stand-in stops in milliseconds; the stop grace is 2 s).
ANSWER_BOUND = 10.0


def _standins(model_dir: Path) -> list[int]:
    """Live processes launched for `model_dir` (the stand-in's command line names it), whoever recorded them."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(model_dir).encode() in argv and process.group_members(process.group_of(int(entry.name)) or -1):
            found.append(int(entry.name))
    return found


async def _activate(o: Running, model: str, tmp_path: Path) -> httpx.Response:
    return await o.client.post(
        "/v1/runtime/models/activate", json={"model_name": model, "artifact_url": str(tmp_path / "models" / model)}
    )


@pytest.mark.parametrize("step", LAUNCH_STEPS)
async def test_a_deactivation_at_any_launch_step_answers_and_leaves_no_engine(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine, step: str
) -> None:
    o = await start_outrider(
        nursery, outrider_settings(tmp_path, vllm_engine.base_url), lifecycle=lifecycle_settings(tmp_path)
    )
    assert o.runtime.engines is not None
    make_artifact(tmp_path / "models" / "tiny", {"worker": True})
    seen: dict[str, Engine] = {}
    answers: dict[str, httpx.Response] = {}
    deactivated = trio.Event()

    async def deactivate() -> None:
        answers["deactivate"] = await o.client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"})
        deactivated.set()

    async def at(where: str, engine: Engine) -> None:
        if where == step and not seen:
            seen["engine"] = engine
            nursery.start_soon(deactivate)
            await engine.stop_wanted.wait()  # the deactivation has landed at this very step

    o.runtime.engines.on_step(at)
    with trio.fail_after(ANSWER_BOUND):
        activation = await _activate(o, "tiny", tmp_path)
        await deactivated.wait()

    assert activation.status_code == 409 and "deactivated before it served" in activation.json()["message"]
    assert answers["deactivate"].status_code == 200, answers["deactivate"].text
    engine = seen["engine"]
    assert engine.phase is Phase.GONE
    assert _standins(tmp_path / "models" / "tiny") == []
    if engine.record.launch_id is not None:
        assert process.carrying(engine.record.launch_id) == []
    assert await listed(o.client) == {}
    assert not RecordStore(tmp_path / "state").engine_dir("tiny").exists()


@pytest.mark.parametrize("step", STOP_STEPS)
async def test_a_shutdown_during_a_stop_finishes_it_with_sigkill(
    tmp_path: Path, vllm_engine: FakeEngine, step: str
) -> None:
    lifecycle = lifecycle_settings(tmp_path, stop_grace=0.5)
    make_artifact(tmp_path / "models" / "stubborn", {"ignore_sigterm": True, "worker": True})
    async with trio.open_nursery() as serving:
        o = await start_outrider(serving, outrider_settings(tmp_path, vllm_engine.base_url), lifecycle=lifecycle)
        assert o.runtime.engines is not None
        assert (await _activate(o, "stubborn", tmp_path)).status_code == 200
        pgid = o.runtime.engines.get("stubborn").pid
        assert pgid is not None

        async def at(where: str, engine: Engine) -> None:
            if where == step:
                o.shutdown.set()  # outrider is told to stop while this stop is under way

        o.runtime.engines.on_step(at)
        serving.start_soon(
            functools.partial(o.client.post, "/v1/runtime/models/deactivate", json={"model_name": "stubborn"})
        )
        began = trio.current_time()
    took = trio.current_time() - began

    assert group_gone(pgid), "outrider exited with the stopping engine's processes alive"
    assert RecordStore(lifecycle.state_dir).load_all() == []
    assert took < 0.5 + process.KILL_WAIT  # bounded
    if step != "stop.stopped":
        assert took >= 0.5  # the stop in flight was not cut short: its grace, then SIGKILL


@pytest.mark.parametrize("step", LAUNCH_STEPS)
async def test_an_outrider_killed_at_any_launch_step_leaves_no_engine_unlisted(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine, step: str
) -> None:
    lifecycle = lifecycle_settings(tmp_path)
    model_dir = make_artifact(tmp_path / "models" / "tiny", {"worker": True})
    low, high = lifecycle.ports
    crashed = await trio.run_process(
        [sys.executable, "-m", "tests.fakes.crashing_outrider", str(tmp_path), step, str(low), str(high)],
        cwd=ROOT,
        check=False,
    )
    assert crashed.returncode == -signal.SIGKILL, f"the outrider was not killed at {step}"
    left = _standins(model_dir)

    async with trio.open_nursery() as serving:
        second = await start_outrider(serving, outrider_settings(tmp_path, vllm_engine.base_url), lifecycle=lifecycle)
        models = await listed(second.client)
        alive = _standins(model_dir)
        # Every engine that still runs is listed (and so stopped at shutdown); none was left running unlisted.
        assert not alive or "tiny" in models, f"crash at {step}: {alive} run unlisted (listed: {list(models)})"
        if step in ("artifact.ready", "launch.recorded"):
            assert left == [] and models == {}
        second.shutdown.set()
    assert _standins(model_dir) == [], f"crash at {step}: the restarted outrider left the engine running"


async def test_a_bounded_sweep_of_deactivations_just_after_an_activation(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    """Deactivate 0, 5, ... 145 ms after the activation was sent (before its admission, during the fetch, each step
    of the launch, the wait for /health, once serving): every deactivation answers, and no engine is left running
    or listed. The counts of where the stop landed are printed (pytest -s)."""
    o = await start_outrider(
        nursery, outrider_settings(tmp_path, vllm_engine.base_url), lifecycle=lifecycle_settings(tmp_path)
    )
    assert o.runtime.engines is not None
    model_dir = make_artifact(tmp_path / "models" / "tiny", {"worker": True})
    landed: dict[str, int] = {}

    def count(what: str) -> None:
        landed[what] = landed.get(what, 0) + 1

    async def at(where: str, engine: Engine) -> None:
        if where == "stop.begun":  # what the stop found of the launch
            record = engine.record
            count("pid recorded" if record.pid is not None else "launch id only" if record.launch_id else "no launch")

    o.runtime.engines.on_step(at)
    tries = 0
    for delay_ms in range(0, 150, 5):
        tries += 1

        async def activation() -> None:
            answer = await _activate(o, "tiny", tmp_path)
            count(f"activation {answer.status_code}")  # 200: it served first; 409: deactivated before it served

        async with trio.open_nursery() as both:
            both.start_soon(activation)
            await trio.sleep(delay_ms / 1000)
            with trio.fail_after(ANSWER_BOUND):
                answer = await o.client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"})
        assert answer.status_code == 200, answer.text
        if "message" in answer.json():  # it came before the activation was admitted: that one went on
            count("before admission")
            with trio.fail_after(ANSWER_BOUND):
                again = await o.client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"})
            assert again.status_code == 200 and "message" not in again.json(), again.text
        assert await listed(o.client) == {}
        assert _standins(model_dir) == [], f"try {tries} ({delay_ms} ms): an engine is left running"
    print(f"sweep: {tries} tries, every deactivation answered, no engine left; the stop found: {landed}")
    assert tries == 30


async def test_a_bounded_sweep_of_outriders_killed_just_after_an_activation(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    """kill -9 of outrider 0, 10, ... 50 ms after it began an activation: the restarted outrider lists every engine
    still running (so stops it at shutdown), and none is left. The counts are printed (pytest -s)."""
    found: dict[str, int] = {}
    for delay_ms in range(0, 60, 10):
        tmp = tmp_path / f"try-{delay_ms}"
        tmp.mkdir()
        lifecycle = lifecycle_settings(tmp)
        model_dir = make_artifact(tmp / "models" / "tiny", {"worker": True})
        low, high = lifecycle.ports
        argv = [sys.executable, "-m", "tests.fakes.crashing_outrider", str(tmp), "none", str(low), str(high)]
        crashing = await trio.lowlevel.open_process(argv, cwd=ROOT, stdout=subprocess.PIPE)
        try:
            assert crashing.stdout is not None
            seen = b""
            with trio.fail_after(ANSWER_BOUND):
                while b"activating" not in seen:
                    seen += await crashing.stdout.receive_some()
            await trio.sleep(delay_ms / 1000)
        finally:
            crashing.send_signal(signal.SIGKILL)
            assert await crashing.wait() == -signal.SIGKILL
            if crashing.stdout is not None:
                await crashing.stdout.aclose()
        left = bool(_standins(model_dir))
        async with trio.open_nursery() as serving:
            second = await start_outrider(serving, outrider_settings(tmp, vllm_engine.base_url), lifecycle=lifecycle)
            models = await listed(second.client)
            alive = _standins(model_dir)
            assert not alive or "tiny" in models, f"killed after {delay_ms} ms: {alive} run unlisted"
            outcome = f"{'left running, adopted' if alive else 'nothing running'}{' (was running)' if left else ''}"
            found[outcome] = found.get(outcome, 0) + 1
            second.shutdown.set()
        assert _standins(model_dir) == [], f"killed after {delay_ms} ms: the engine outlived the restarted outrider"
    print(f"crash sweep: {sum(found.values())} tries: {found}")
