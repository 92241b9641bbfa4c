"""outrider as a real process, for end-to-end tests and the demo (stdlib + httpx only: the demo has no pytest)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

from tests.e2e.engine import free_port
from tests.processes import stop


@contextlib.contextmanager
def outrider_process(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`outrider serve ARGS` on a free loopback port; yields its base URL once /health answers."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OUTRIDER_", "INFERENCE_ENGINE"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "outrider", "serve", "-H", "127.0.0.1", "-P", str(port), *args],
        env={**clean, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"outrider exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "outrider did not start within 30s"
            time.sleep(0.05)
        yield url
    finally:
        stop(proc)
