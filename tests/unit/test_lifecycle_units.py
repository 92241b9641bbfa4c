"""The engine lifecycle's pieces on their own: flags and environment, records, kvcached segments, engine output,
request activity, exit descriptions."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import struct
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing

from outrider.errors import InvalidRequest
from outrider.lifecycle import kvcache, output, process, stops
from outrider.lifecycle.api import loopback, parse_activity
from outrider.lifecycle.arguments import (
    command_line,
    engine_flags,
    environment,
    legacy_flags,
    sanitize_ipc_name,
)
from outrider.lifecycle.config import LaunchCommand, parse_port_range
from outrider.lifecycle.engine import Engine
from outrider.lifecycle.options import LifecycleSettings
from outrider.lifecycle.phases import IllegalTransition, Phase, allowed
from outrider.lifecycle.records import OPERATIONS_KEPT, EngineRecord, RecordStore
from outrider.lifecycle.supervisor import Supervisor
from outrider.transfer.jobs import JobManager


def test_allowed_flags_are_typed_and_normalized() -> None:
    tokens = engine_flags(
        "vllm",
        {"--max-model-len": " 2048", "--gpu-memory-utilization": "0.5", "--enforce-eager": "", "--seed": "7"},
        "args.",
    )
    assert tokens == ["--max-model-len", "2048", "--gpu-memory-utilization", "0.5", "--enforce-eager", "--seed", "7"]
    assert engine_flags("vllm", {"--enable-prefix-caching": "false"}, "args.") == []
    assert engine_flags("sglang", {"--tp-size": "2"}, "args.") == ["--tp-size", "2"]


@pytest.mark.parametrize(
    ("engine", "flag", "value", "words"),
    [
        ("vllm", "--gpu-memory-utilization", "0", "above 0"),
        ("vllm", "--gpu-memory-utilization", "nan", "above 0"),
        ("vllm", "--max-model-len", "1e9", "whole number"),
        ("vllm", "--quantization", "../../x", "letters, digits"),
        ("vllm", "--enforce-eager", "yes", "switch"),
        ("vllm", "--trust-remote-code", "true", "runs code"),
        ("vllm", "--tp-size", "2", "not an engine flag"),  # SGLang's spelling, not vLLM's
        ("sglang", "--max-model-len", "2", "not an engine flag"),
        ("vllm", "--served-model-name", "x", "outrider sets"),
        ("vllm", "--dtype", "x" * 65, "longer than"),
    ],
)
def test_a_flag_off_the_list_or_a_badly_typed_value_is_refused_naming_it(
    engine: str, flag: str, value: str, words: str
) -> None:
    with pytest.raises(InvalidRequest, match=words) as caught:
        engine_flags(engine, {flag: value}, "engine_config.args.")
    assert caught.value.field == f"engine_config.args.{flag}"


def test_legacy_flags_take_only_engine_arg_keys() -> None:
    assert legacy_flags({"engine-arg:--dtype": "half", "other": "x"}) == {"--dtype": "half"}


def test_the_command_line_puts_outriders_arguments_after_the_operators() -> None:
    vllm = LaunchCommand("vllm", ("/opt/vllm", "serve"))
    argv = command_line(vllm, model_path="/m/a", model_name="a", host="0.0.0.0", port=20000, api_key="k", flags=["-x"])
    assert argv == ["/opt/vllm", "serve", "--model", "/m/a", "--served-model-name", "a", "--host", "0.0.0.0",
                    "--port", "20000", "-x"]  # fmt: skip
    sglang = LaunchCommand("sglang", ("/py", "-m", "sglang.launch_server"))
    argv = command_line(sglang, model_path="/m/a", model_name="a", host="h", port=1, api_key="k", flags=[])
    assert argv[3:5] == ["--model-path", "/m/a"] and argv[-2:] == ["--api-key", "k"]


def test_the_environment_withholds_credentials_and_settings() -> None:
    inherited = {
        "PATH": "/bin",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "AWS_SECRET_ACCESS_KEY": "s",
        "SECRET_KEY": "s",
        "HF_TOKEN": "t",
        "OUTRIDER_API_TOKEN": "t",
        "INFERENCE_ENGINE_API_KEY": "k",
        "REDIS_PASSWORD": "p",
        "VLLM_API_KEY": "inherited",
    }
    env = environment(inherited, engine="vllm", ipc_name="kvc_a", api_key="mine", dev_routes=True)
    assert env == {
        "PATH": "/bin",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "KVCACHED_IPC_NAME": "kvc_a",
        "VLLM_API_KEY": "mine",
        "VLLM_SERVER_DEV_MODE": "1",
    }
    assert "VLLM_API_KEY" not in environment(inherited, engine="sglang", ipc_name="i", api_key="m", dev_routes=True)


def test_ipc_names_are_spelled_as_kvcached_spells_them() -> None:
    assert sanitize_ipc_name("kvc_qwen3-0.6b") == "kvc_qwen3-0-6b"
    assert sanitize_ipc_name("../x y") == "---x-y"


def test_port_ranges() -> None:
    assert parse_port_range("20000-20999") == (20000, 20999)
    for bad in ("20000", "80-90", "30000-20000", "a-b", "20000-70000"):
        with pytest.raises(ValueError):
            parse_port_range(bad)


def test_records_round_trip_and_keep_the_latest_operations(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "state")
    store.prepare()
    record = EngineRecord(
        "a", "vllm", "s3://b/a", 20000, "kvc_a", claim_ref={"namespace": "n", "name": "c", "uid": "u"}
    )
    record.set_identity(process.Identity(1234, 99, "boot"))
    for i in range(OPERATIONS_KEPT + 5):
        record.remember("sleep", f"op-{i}", "sleeping")
    store.save(record)

    (loaded,) = store.load_all()

    assert loaded == record
    assert (
        loaded.completed("sleep", "op-4") is None and loaded.completed("sleep", f"op-{OPERATIONS_KEPT}") == "sleeping"
    )
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "change",
    [{"version": 2}, {"pid": 1}, {"pid": "12"}, {"port": 0}, {"phase": "dancing"}, {"model_name": "other"}],
)
def test_a_record_that_is_not_right_is_ignored(tmp_path: Path, change: dict[str, object]) -> None:
    store = RecordStore(tmp_path)
    data = {**EngineRecord("a", "vllm", "x", 20000, "kvc_a").to_json(), **change}
    (tmp_path / "a.json").write_text(json.dumps(data))
    assert store.load_all() == []


def test_kvcached_segments_are_read_and_limited_under_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    claim = kvcache.create(tmp_path, "kvc_a")
    assert claim is not None
    assert kvcache.read_segment(tmp_path, "kvc_a", claim) is None  # created, not set up by kvcached yet
    assert kvcache.write_limit(tmp_path, "kvc_a", claim, 1) is False
    with open(tmp_path / "kvc_a", "r+b") as segment:  # kvcached opens the existing file and writes its figures
        segment.write(struct.pack("<3q", 100, 20, 5) + b"rest")
    assert kvcache.write_limit(tmp_path, "kvc_a", claim, 64) is True
    assert kvcache.read_segment(tmp_path, "kvc_a", claim) == (64, 20, 5)
    assert (tmp_path / "kvc_a").read_bytes()[24:] == b"rest"
    monkeypatch.setattr(kvcache, "LOCK_TIMEOUT", 0.05)
    with open(tmp_path / "kvc_a", "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # the engine, rewriting its struct
        with pytest.raises(TimeoutError):
            kvcache.write_limit(tmp_path, "kvc_a", claim, 1)
    assert kvcache.read_segment(tmp_path, "kvc_a", claim) == (64, 20, 5)


def test_a_segment_outrider_did_not_create_is_never_read_or_written(tmp_path: Path) -> None:
    foreign = tmp_path / "other"
    foreign.write_bytes(struct.pack("<3q", 7, 8, 9))
    with pytest.raises(kvcache.SegmentTaken):
        kvcache.create(tmp_path, "other")
    claim = kvcache.create(tmp_path, "kvc_b")
    assert claim is not None
    # The name swapped for another file (or a link to one) after the claim: not the engine's segment any more.
    (tmp_path / "kvc_b").unlink()
    (tmp_path / "kvc_b").symlink_to(foreign)
    assert kvcache.read_segment(tmp_path, "kvc_b", claim) is None
    assert kvcache.write_limit(tmp_path, "kvc_b", claim, 0) is False
    kvcache.remove(tmp_path, "kvc_b", claim)
    assert struct.unpack("<3q", foreign.read_bytes()) == (7, 8, 9) and (tmp_path / "kvc_b").is_symlink()
    assert kvcache.read_segment(tmp_path, "other", None) is None  # no claim: nothing is read
    assert kvcache.create(tmp_path / "absent", "kvc_c") is None  # no shm directory: no segment, no claim


def test_engine_output_is_logged_line_by_line_with_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="outrider.engine")
    monkeypatch.setattr(output, "MAX_LINE", 10)
    monkeypatch.setattr(output, "MAX_FILE_BYTES", 30)
    path = tmp_path / "a.log"
    follower = output.OutputFollower(path, "a")
    follower.read_new()  # no file yet: nothing, no error
    with open(path, "ab") as engine:
        engine.write(b"one\r\ntwo\nthr")
        engine.flush()
        follower.read_new()
        engine.write(b"ee\n" + b"x" * 25 + b"\n")
        engine.flush()
        follower.read_new()
    messages = [(r.getMessage(), getattr(r, "model", None)) for r in caplog.records]
    assert messages == [("one", "a"), ("two", "a"), ("three", "a"), ("x" * 10 + " ...", "a")]
    assert path.stat().st_size == 0 and follower.offset == 0  # read past MAX_FILE_BYTES: emptied


def test_request_activity_counts_only_the_models_series() -> None:
    page = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="a"} 2.0\n'
        'vllm:num_requests_running{engine="1",model_name="a"} 1.0\n'
        'vllm:num_requests_running{engine="0",model_name="b"} 9.0\n'
        "# TYPE vllm:request_success counter\n"
        'vllm:request_success_total{finished_reason="stop",model_name="a"} 4.0\n'
        'vllm:request_success_total{finished_reason="length",model_name="a"} 1.0\n'
    )
    activity = parse_activity(page, "a")
    assert activity.observed and activity.running == 3 and activity.waiting == 0 and activity.success_total == 5
    assert not parse_activity(page, "c").observed and parse_activity(page, "c").success_total is None
    assert not parse_activity("garbage{", "a").observed


def test_exits_are_described_for_people() -> None:
    assert process.describe_exit(3) == "exited with code 3"
    assert process.describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert "unknown" in process.describe_exit(None)
    assert loopback("0.0.0.0") == "127.0.0.1" and loopback("::") == "[::1]" and loopback("fd00::1") == "[fd00::1]"


def test_a_process_is_known_by_pid_and_start_time() -> None:
    me = process.identity(os.getpid())
    assert me is not None and process.is_running(me) and process.group_is_ours(me)
    reused = process.Identity(me.pid, me.start_ticks + 1, me.boot_id)  # another process under the same pid
    assert not process.is_running(reused) and not process.group_is_ours(reused)
    assert not process.is_running(process.Identity(me.pid, me.start_ticks, "another-boot"))


def test_an_impossible_transition_raises_and_changes_nothing() -> None:
    record = EngineRecord("m", "vllm", "/models/m", 20000, "kvc_m")
    for impossible in (Phase.ACTIVE, Phase.BOOTING, Phase.SLEEPING, Phase.FAILED, Phase.GONE):
        with pytest.raises(IllegalTransition):
            record.transition(impossible)  # nothing launched yet
    assert record.phase is Phase.DOWNLOADING
    for phase in (Phase.LAUNCHING, Phase.BOOTING, Phase.ACTIVE, Phase.SLEEPING, Phase.ACTIVE, Phase.FAILED):
        record.transition(phase)
    with pytest.raises(IllegalTransition):
        record.transition(Phase.ACTIVE)  # a failed engine is not revived: it is deactivated
    record.transition(Phase.STOPPING)
    for impossible in (Phase.ACTIVE, Phase.SLEEPING, Phase.FAILED, Phase.BOOTING):
        with pytest.raises(IllegalTransition):
            record.transition(impossible)  # a stop in flight is never undone by a late sleep, wake or exit
    record.transition(Phase.GONE)
    assert [p for p in Phase if allowed(Phase.GONE, p)] == []


async def test_the_shutdown_waits_for_every_stop_under_one_deadline(autojump_clock: trio.testing.MockClock) -> None:
    settings = LifecycleSettings(stop_grace=3.0)
    supervisor = Supervisor(settings, cast(JobManager, None), model_root="/models")
    quick, stuck = (Engine(EngineRecord(name, "vllm", "/m", 20000 + i, f"kvc_{name}")) for i, name in enumerate("qs"))
    for engine in (quick, stuck):
        supervisor._sh.engines[engine.name] = engine

    async def a_stop_that_ends() -> None:
        await quick.stop_wanted.wait()
        await trio.sleep(1.0)
        quick.done.set()

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a_stop_that_ends)
        await supervisor._shutdown()  # `stuck` never ends: a group that outlives SIGKILL
    await supervisor.api.aclose()

    assert quick.stop_wanted.is_set() and stuck.stop_wanted.is_set()  # every engine is asked at once
    assert trio.current_time() - began == pytest.approx(3.0 + process.KILL_WAIT + stops.SHUTDOWN_MARGIN)
