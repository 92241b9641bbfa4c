"""Proves the end-to-end harness against a real vLLM (CPU build).

Needs OUTRIDER_VLLM_PYTHON = the python of a venv made by tests/e2e/install_vllm.sh.
Without it the test fails on purpose: a silently skipped end-to-end test reads as green.

Optional: OUTRIDER_E2E_METRICS_OUT=FILE saves the scraped /metrics page there.
Timings are printed (run pytest with -s to see them).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.engine import VllmProcess, build_adapter, build_tiny_model

SERVED_NAME = "tiny"
ADAPTER_NAME = "adapter-a"


def require_vllm_python() -> str:
    """The vLLM venv's python, or a test failure (not a skip, not a fixture error)."""
    python = os.environ.get("OUTRIDER_VLLM_PYTHON")
    if not python:
        pytest.fail(
            "OUTRIDER_VLLM_PYTHON is not set. Install vLLM with "
            "`bash tests/e2e/install_vllm.sh /some/dir` and set "
            "OUTRIDER_VLLM_PYTHON=/some/dir/bin/python",
            pytrace=False,
        )
    if not os.access(python, os.X_OK):
        pytest.fail(f"OUTRIDER_VLLM_PYTHON={python} is not an executable file", pytrace=False)
    return python


def model_ids(client: httpx.Client) -> dict[str, dict[str, Any]]:
    resp = client.get("/v1/models")
    assert resp.status_code == 200, resp.text
    return {m["id"]: m for m in resp.json()["data"]}


def complete(client: httpx.Client, model: str) -> tuple[dict[str, Any], float]:
    """One greedy 5-token completion; returns the body and its latency in seconds."""
    started = time.monotonic()
    resp = client.post(
        "/v1/completions",
        json={"model": model, "prompt": "hello", "max_tokens": 5, "temperature": 0},
    )
    latency = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == model
    assert isinstance(body["choices"][0]["text"], str)
    assert 0 < body["usage"]["completion_tokens"] <= 5
    return body, latency


def counter_total(metrics_text: str, family: str) -> float:
    """Sum one counter family over all its label sets (Prometheus text format)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(family + "{") or line.startswith(family + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.e2e
def test_vllm_harness(tmp_path: Path) -> None:
    vllm_python = require_vllm_python()
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    model_dir = build_tiny_model(vllm_python, tmp_path / "model")
    timings["build_model_s"] = time.monotonic() - t0
    t1 = time.monotonic()
    adapter_dir = build_adapter(vllm_python, model_dir, tmp_path / "adapter-a", seed=1)
    timings["build_adapter_s"] = time.monotonic() - t1
    assert (model_dir / "model.safetensors").is_file()
    assert (adapter_dir / "adapter_model.safetensors").is_file()

    server = VllmProcess(vllm_python, model_dir, served_name=SERVED_NAME, log_path=tmp_path / "vllm.log")
    with server, httpx.Client(base_url=server.base_url, timeout=60) as client:
        timings["ready_s"] = server.wait_ready(timeout=180)

        assert set(model_ids(client)) == {SERVED_NAME}

        base_body, timings["first_completion_s"] = complete(client, SERVED_NAME)
        _, timings["second_completion_s"] = complete(client, SERVED_NAME)

        resp = client.post(
            "/v1/load_lora_adapter",
            json={"lora_name": ADAPTER_NAME, "lora_path": str(adapter_dir)},
        )
        assert resp.status_code == 200, resp.text
        assert "Success" in resp.text  # vLLM answers plain text here, not JSON
        listed = model_ids(client)
        assert listed[ADAPTER_NAME]["parent"] == SERVED_NAME
        assert listed[ADAPTER_NAME]["root"] == str(adapter_dir)

        lora_body, timings["adapter_completion_s"] = complete(client, ADAPTER_NAME)

        resp = client.get("/metrics")
        assert resp.status_code == 200
        metrics = resp.text
        if out := os.environ.get("OUTRIDER_E2E_METRICS_OUT"):
            Path(out).write_text(metrics)
        assert counter_total(metrics, "vllm:prompt_tokens_total") > 0
        assert counter_total(metrics, "vllm:generation_tokens_total") > 0

        # A crash, then a restart on the same port: runtime-loaded adapters are gone.
        server.kill()
        assert not server.is_running()
        t2 = time.monotonic()
        server.start()
        timings["restart_ready_s"] = server.wait_ready(timeout=180)
        timings["restart_total_s"] = time.monotonic() - t2
        assert set(model_ids(client)) == {SERVED_NAME}

    timings["total_s"] = time.monotonic() - t0
    print("\nvLLM harness timings:", {k: round(v, 2) for k, v in timings.items()})
    print(
        "base text:",
        repr(base_body["choices"][0]["text"]),
        "| adapter text:",
        repr(lora_body["choices"][0]["text"]),
    )
