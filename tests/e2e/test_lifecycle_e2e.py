"""The engine lifecycle with a real vLLM (CPU build): outrider, as a real process, launches vLLM through its
allowlist for the tiny model fetched from a `pvc://` volume and from S3 (moto), serves a completion through the port
it answered, relays sleep and wake to vLLM's development routes, notices a killed engine, adopts a running engine
after its own restart, and leaves no process behind.

vLLM's CPU build refuses `--enable-sleep-mode` at start ("Sleep mode is not supported on current platform"), but its
development routes (VLLM_SERVER_DEV_MODE=1) answer /sleep, /wake_up and /is_sleeping: a sleeping engine pauses its
scheduling (frees no memory on CPU). So the relay is tested here against vLLM's own routes.
Timings are printed (run with -s).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from outrider.lifecycle import process
from outrider.lifecycle.records import RecordStore
from tests.e2e.engine import VLLM_ENV
from tests.e2e.outrider_process import outrider_process
from tests.servers.moto import MotoServer

# vLLM on 2 CPU cores answers /health 20-60 s after it starts; a fetch and a launch come before.
START_WITHIN = 240.0


def _launch_args(vllm_python: str, tmp_path: Path, state: Path, *more: str) -> tuple[str, ...]:
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "volume").mkdir(exist_ok=True)
    command = f"vllm={vllm_python} -m vllm.entrypoints.openai.api_server --max-model-len 256 --dtype float32"
    return (
        "-E", "vllm", "-B", "http://127.0.0.1:9",  # no engine of its own: the launched one is followed
        "--engine-launch", command,
        "--engine-host", "127.0.0.1", "--engine-ports", "23400-23409",
        "--engine-state-dir", str(state),
        "--model-root", str(tmp_path / "models"), "--pvc-root", str(tmp_path / "volume"),
        "--engine-dev-routes", "--engine-stop-grace", "20",
        # outrider's stderr is a pipe no one reads while it runs (tests/e2e/outrider_process.py): vLLM's output,
        # relayed at INFO, would fill it and block outrider's logging.
        "--log-level", "warning",
        *more,
    )  # fmt: skip


@pytest.fixture
def engine_tmp() -> Iterator[Path]:
    """A TMPDIR of the engines' own, removed after the test: vLLM leaves files there. Short, directly under /tmp:
    vLLM binds ZMQ sockets at ipc://$TMPDIR/<uuid>, and a Unix socket path holds at most 107 bytes, which
    pytest's tmp_path (/tmp/pytest-of-<user>/pytest-<n>/<test name>/...) exceeds."""
    path = Path(tempfile.mkdtemp(prefix="ort-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(engine_tmp: Path, **more: str) -> dict[str, str]:
    return {**VLLM_ENV, "TMPDIR": str(engine_tmp), **more}


@contextlib.contextmanager
def _client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=START_WITHIN) as client:
        yield client


def _activate(outrider: httpx.Client, state: Path, **body: Any) -> tuple[dict[str, Any], float]:
    """Activate and wait until the model list says ready; returns the answer and the seconds it all took."""
    started = time.monotonic()
    answer = outrider.post("/v1/runtime/models/activate", json=body)
    if answer.status_code != 200:
        output = RecordStore(state).failed_output_path(body["model_name"])
        tail = "\n".join(output.read_text().splitlines()[-30:]) if output.exists() else "(no output kept)"
        raise AssertionError(f"{answer.text}\nthe engine's last lines:\n{tail}")
    while not _models(outrider)[body["model_name"]]["ready"]:
        assert time.monotonic() - started < START_WITHIN, "the engine did not become ready"
        time.sleep(0.2)
    return answer.json(), time.monotonic() - started


def _models(outrider: httpx.Client) -> dict[str, dict[str, Any]]:
    response = outrider.get("/v1/runtime/models")
    assert response.status_code == 200, response.text
    return {m["model_name"]: m for m in response.json()["models"]}


def _complete(port: int, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "hello", "max_tokens": 3, "temperature": 0}
    return httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60)


def _engine_pgid(state: Path, model: str) -> int:
    pid = json.loads(RecordStore(state).path(model).read_text())["pid"]
    assert isinstance(pid, int)
    return pid


def _wait(check: Any, within: float, what: str) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"timed out after {within}s waiting for {what}"
        time.sleep(0.1)


def test_activate_from_pvc_serve_sleep_wake_deactivate(
    vllm_python: str, tiny_model: Path, tmp_path: Path, engine_tmp: Path
) -> None:
    shutil.copytree(tiny_model, tmp_path / "volume" / "tiny", dirs_exist_ok=True)
    state = tmp_path / "state"
    with (
        outrider_process(*_launch_args(vllm_python, tmp_path, state), env=_env(engine_tmp)) as url,
        _client(url) as outrider,
    ):
        answer, took = _activate(outrider, state, model_name="tiny-pvc", artifact_url="pvc://tiny")
        print(f"\nactivation from pvc:// (copy into the model root, launch, /health): {took:.1f}s")
        port = answer["port"]
        assert 23400 <= port <= 23409 and answer["ipc_name"] == "kvc_tiny-pvc"
        assert (tmp_path / "models" / "tiny-pvc" / "model.safetensors").exists()
        completion = _complete(port, "tiny-pvc")
        assert completion.status_code == 200 and completion.json()["choices"], completion.text
        # outrider follows the launched engine: its /metrics carries vLLM's page, /ready names the model.
        _wait(lambda: outrider.get("/ready").status_code == 200, 10, "/ready to follow the engine")
        assert outrider.get("/ready").json()["model"] == "tiny-pvc"
        assert 'model_name="tiny-pvc"' in outrider.get("/metrics").text

        slept = outrider.post(
            "/v1/runtime/models/sleep", json={"model_name": "tiny-pvc", "level": 1, "operation_id": "s-1"}
        )
        assert slept.status_code == 200 and slept.json()["applied"] is True, slept.text
        assert httpx.get(f"http://127.0.0.1:{port}/is_sleeping").json() == {"is_sleeping": True}
        repeat = outrider.post(
            "/v1/runtime/models/sleep", json={"model_name": "tiny-pvc", "level": 1, "operation_id": "s-1"}
        )
        assert repeat.json() == {**slept.json(), "applied": False}
        woken = outrider.post("/v1/runtime/models/wake", json={"model_name": "tiny-pvc", "operation_id": "w-1"})
        assert woken.status_code == 200 and woken.json()["phase"] == "active", woken.text
        assert httpx.get(f"http://127.0.0.1:{port}/is_sleeping").json() == {"is_sleeping": False}
        assert _complete(port, "tiny-pvc").status_code == 200
        kv = outrider.post(
            "/v1/runtime/models/kv-limit", json={"model_name": "tiny-pvc", "limit_bytes": 1 << 20, "operation_id": "k"}
        )
        assert kv.status_code == 409 and "does not run kvcached" in kv.json()["message"]

        pgid = _engine_pgid(state, "tiny-pvc")
        assert process.group_members(pgid), "vLLM's process group should be running"
        stopped = time.monotonic()
        gone = outrider.post("/v1/runtime/models/deactivate", json={"model_name": "tiny-pvc"})
        assert gone.status_code == 200 and gone.json() == {"status": "success"}
        print(f"deactivation (SIGTERM, vLLM's own shutdown): {time.monotonic() - stopped:.1f}s")
        assert process.group_members(pgid) == [], "a process of vLLM's group outlived the deactivation"
        assert _models(outrider) == {}


def test_activate_from_s3_then_a_killed_engine_is_reported(
    vllm_python: str, tiny_model: Path, tmp_path: Path, engine_tmp: Path
) -> None:
    s3 = MotoServer()
    s3.start()
    try:
        s3.seed("models", {f"tiny/{f.name}": f.read_bytes() for f in tiny_model.iterdir() if f.is_file()})
        s3.enforce_auth(True)
        state = tmp_path / "state"
        # The pod's own credentials, in AIBrix's spelling: the engine never sees them.
        pod = {"AWS_ACCESS_KEY_ID": s3.reader[0], "AWS_SECRET_ACCESS_KEY": s3.reader[1], "AWS_ENDPOINT_URL": s3.url}
        with (
            outrider_process(*_launch_args(vllm_python, tmp_path, state), env=_env(engine_tmp, **pod)) as url,
            _client(url) as outrider,
        ):
            answer, took = _activate(outrider, state, model_name="tiny-s3", artifact_url="s3://models/tiny")
            print(f"\nactivation from S3 (moto: fetch, verify, launch, /health): {took:.1f}s")
            assert _complete(answer["port"], "tiny-s3").status_code == 200
            log = RecordStore(state).output_path("tiny-s3").read_text()
            assert s3.reader[1] not in log and s3.reader[1] not in RecordStore(state).path("tiny-s3").read_text()

            pgid = _engine_pgid(state, "tiny-s3")
            os.kill(pgid, signal.SIGKILL)  # the API server; its engine core is left in the group

            _wait(lambda: _models(outrider)["tiny-s3"]["phase"] == "failed", 30, "the kill to be reported")
            snapshot = outrider.get("/v1/runtime/snapshot").json()["models"][0]
            assert snapshot["last_error"] == "the engine was killed by SIGKILL" and snapshot["alive"] is False
            _wait(lambda: not process.group_members(pgid), 60, "vLLM's engine core to be stopped too")
            assert outrider.post("/v1/runtime/models/deactivate", json={"model_name": "tiny-s3"}).status_code == 200
    finally:
        s3.stop()


def test_a_restarted_outrider_adopts_the_running_engine(
    vllm_python: str, tiny_model: Path, tmp_path: Path, engine_tmp: Path
) -> None:
    shutil.copytree(tiny_model, tmp_path / "models" / "tiny", dirs_exist_ok=True)
    state = tmp_path / "state"
    keep = _launch_args(vllm_python, tmp_path, state, "--engine-on-exit", "keep")
    with outrider_process(*keep, env=_env(engine_tmp)) as url, _client(url) as outrider:
        answer, took = _activate(outrider, state, model_name="tiny", artifact_url=str(tmp_path / "models" / "tiny"))
        print(f"\nactivation in place (launch, /health): {took:.1f}s")
    # That outrider is gone (SIGTERM); with --engine-on-exit keep its engine is not.
    pgid = _engine_pgid(state, "tiny")
    assert process.group_members(pgid)
    assert _complete(answer["port"], "tiny").status_code == 200

    with outrider_process(*_launch_args(vllm_python, tmp_path, state), env=_env(engine_tmp)) as url, _client(url) as o:
        models = _models(o)
        assert models["tiny"]["phase"] == "active" and models["tiny"]["ready"] is True
        assert models["tiny"]["port"] == answer["port"]
        assert o.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"}).status_code == 200
        assert process.group_members(pgid) == []


# The kvcached segments these tests' models get (kvc_<model name>), in /dev/shm.
SEGMENTS = tuple(Path("/dev/shm") / f"kvc_{name}" for name in ("tiny", "tiny-pvc", "tiny-s3"))


def _held_open(path: Path) -> bool:
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path):
                return True
    return False


@pytest.fixture(autouse=True)
def _no_stale_segment() -> None:
    """outrider refuses (409) a segment name that exists and that it did not create for the engine: one left in
    /dev/shm by an earlier run of these tests that was killed (its outrider never removed it) would fail them all.
    Removed here, and only while no process holds it open."""
    for segment in SEGMENTS:
        if segment.exists() and not _held_open(segment):
            segment.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _no_engine_left(tmp_path: Path) -> Iterator[None]:
    """Whatever a test did, no engine it launched outlives it (a failed assertion must not leave 2.5 GB behind)."""
    yield
    state = tmp_path / "state"
    for record in RecordStore(state).load_all() if state.exists() else []:
        ident = record.identity
        if ident is not None and process.group_is_ours(ident):
            process.signal_group(ident.pid, signal.SIGKILL)
