"""The peers' start-up lines, run as real processes: the command line a Kthena manifest gives (only `args:`), and
AIBrix's (`aibrix_runtime --port 8080`, no INFERENCE_ENGINE, a PROMETHEUS_MULTIPROC_DIR not made yet)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from outrider.cli import aibrix_argv, build_parser, serve_settings
from outrider.settings import Settings
from tests.integration.test_process import free_port
from tests.processes import stop


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OUTRIDER_", "INFERENCE_ENGINE", "PROMETHEUS"))}
    return subprocess.Popen(argv, env={**clean, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _until_up(proc: subprocess.Popen[bytes], url: str) -> httpx.Response:
    """Poll `url` until outrider answers it (the process has no readiness signal to wait on but its port)."""
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"exited {proc.returncode}: {err[-2000:]}")
        try:
            return httpx.get(url, timeout=1)
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "outrider did not start"
        time.sleep(0.05)


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[Any]]]:
    procs: list[subprocess.Popen[Any]] = []
    yield procs
    for proc in procs:
        stop(proc)


def test_kthena_args_without_a_command_serve(running: list[subprocess.Popen[Any]]) -> None:
    """Kthena's ModelBooster template: `args: [--port, N, --engine, vllm, ...]`, the image's command (outrider)
    kept: this ran `outrider --port N ...` and exited 2 (`invalid choice`)."""
    port = free_port()
    argv = ["--port", str(port), "--engine", "vllm", "--engine-base-url", "http://127.0.0.1:9", "-H", "127.0.0.1"]
    running.append(proc := _start([sys.executable, "-m", "outrider", *argv], {}))

    answer = _until_up(proc, f"http://127.0.0.1:{port}/health")

    assert (answer.status_code, answer.json()) == (200, {"status": "healthy", "service": "runtime"})


def test_aibrix_runtime_command_with_aibrix_env(running: list[subprocess.Popen[Any]], tmp_path: Path) -> None:
    """AIBrix's webhook runs `aibrix_runtime --port 8080` with INFERENCE_ENGINE unset (AIBrix defaults to vllm) and
    a PROMETHEUS_MULTIPROC_DIR it expects the runtime to create; its controller then lists the runtime's models."""
    port = free_port()
    multiproc = tmp_path / "prometheus" / "multiproc"
    command = str(Path(sys.executable).parent / "aibrix_runtime")
    env = {"INFERENCE_ENGINE_ENDPOINT": "http://127.0.0.1:9", "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    running.append(proc := _start([command, "--host", "127.0.0.1", "--port", str(port)], env))

    health = _until_up(proc, f"http://127.0.0.1:{port}/healthz")
    models = httpx.get(f"http://127.0.0.1:{port}/v1/runtime/models", timeout=5)

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (models.status_code, models.json()) == (200, {"models": []})
    assert multiproc.is_dir()


def test_aibrix_runtime_listens_on_aibrix_default_port() -> None:
    """Without --port, aibrix_runtime listens where AIBrix's does (8080), not on outrider's 9000: checked through
    the settings its command line builds, since a test cannot count on port 8080 being free."""

    def settings(argv: list[str], env: dict[str, str]) -> Settings:
        return serve_settings(build_parser().parse_args(aibrix_argv(argv, env)), env)

    assert settings(["--host", "127.0.0.1", "--enable-fastapi-docs"], {}).port == 8080
    assert settings(["--port", "8081"], {}).port == 8081
    assert settings([], {"OUTRIDER_PORT": "8082"}).port == 8082
