"""outrider as a real process: one-line start-up errors, and a graceful stop on SIGTERM/SIGINT within 2 s."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def outrider(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OUTRIDER_", "INFERENCE_ENGINE"))}
    return subprocess.Popen(
        [sys.executable, "-m", "outrider", *argv],
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["serve", "-E", "tgi"], {}, "unknown engine 'tgi'"),
        (
            ["serve"],
            {"INFERENCE_ENGINE": "vllm", "INFERENCE_ENGINE_ENDPOINT": "not a url"},
            "--engine-base-url",
        ),
        (["serve", "-E", "vllm", "--no-such-flag"], {}, "unrecognized arguments"),
    ],
)
def test_bad_start_up_is_one_clear_line(argv: list[str], env: dict[str, str], needle: str) -> None:
    proc = outrider(*argv, env=env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("outrider: error:")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_within_two_seconds(signum: signal.Signals) -> None:
    port = free_port()
    # The engine is absent on purpose: shutdown must not wait on a scrape in flight either.
    proc = outrider("serve", "-E", "vllm", "-H", "127.0.0.1", "-P", str(port), "-B", f"http://127.0.0.1:{free_port()}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "outrider did not start"
            time.sleep(0.05)
        # A keep-alive connection held open must not hold the shutdown up.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as held:
            assert held.get("/metrics").status_code == 200
            sent = time.monotonic()
            proc.send_signal(signum)
            code = proc.wait(timeout=10)
            took = time.monotonic() - sent
        assert code == 0
        assert took < 2.0, f"shutdown took {took:.2f}s"
        assert b"outrider stopped" in (proc.stderr.read() if proc.stderr else b"")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
