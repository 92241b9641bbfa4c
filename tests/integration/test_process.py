"""outrider as a real process: one-line start-up errors, and a stop on SIGTERM/SIGINT nothing in flight holds up."""

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
def test_signal_stops_without_waiting_on_connections_or_scrapes(signum: signal.Signals) -> None:
    """Nothing in flight holds a stop up: the grace period and the scrape timeout are an hour, so a stop that
    waited on the held keep-alive connection or on the hanging scrape would outlast the 30 s `wait` below and fail.
    No elapsed time is asserted: how fast a stop is belongs in bench/."""
    port = free_port()
    with socket.socket() as silent:
        # An engine that accepts connections (the kernel does, from the backlog) and never answers: the scrape hangs.
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        engine = f"http://127.0.0.1:{silent.getsockname()[1]}"
        hour = ["--scrape-timeout", "3600", "--shutdown-grace", "3600"]
        proc = outrider("serve", "-E", "vllm", "-H", "127.0.0.1", "-P", str(port), "-B", engine, *hour)
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
            # A keep-alive connection held open must not hold the stop up.
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as held:
                assert held.get("/metrics").status_code == 200
                proc.send_signal(signum)
                code = proc.wait(timeout=30)
            assert code == 0
            assert b"outrider stopped" in (proc.stderr.read() if proc.stderr else b"")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_busy_port_is_one_line_naming_it_and_a_failing_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = outrider("serve", "-E", "vllm", "-H", "127.0.0.1", "-P", str(port), "-B", "http://127.0.0.1:9")
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    text = err.decode()
    assert "Traceback" not in text and "ExceptionGroup" not in text, text
    failures = [line for line in text.splitlines() if f"127.0.0.1:{port}" in line]
    assert len(failures) == 1 and "in use" in failures[0], text
