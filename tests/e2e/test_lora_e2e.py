"""outrider keeping LoRA adapters loaded in a real vLLM (CPU build), across an engine crash and restart.

Two tiny adapters: one already on the shared directory (the "volume") and declared by the adapters file
(`pvc://`), one in an S3 bucket (moto's server) loaded through the AIBrix-compatible route with the pod's own
credentials from the AIBrix env spelling, which outrider downloads onto the volume. Both serve completions; after
vLLM is killed and started again, outrider puts both back with no call from anyone; an unload through the
compatible route really unloads; removing the file entry unloads the other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.engine import VllmProcess, build_adapter
from tests.e2e.outrider_process import outrider_process
from tests.servers.moto import MotoServer

SYNC_INTERVAL = 1.0


@pytest.fixture
def s3() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def adapters_in(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()["data"] if m.get("parent")}


def wait_for(check: Any, within: float, what: str) -> float:
    """Poll `check()` until true; returns the seconds it took, fails after `within`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"timed out after {within}s waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def complete(client: httpx.Client, model: str) -> httpx.Response:
    return client.post("/v1/completions", json={"model": model, "prompt": "hello", "max_tokens": 3, "temperature": 0})


def test_adapters_survive_an_engine_restart(
    vllm: VllmProcess, vllm_python: str, tiny_model: Path, tmp_path: Path, s3: MotoServer
) -> None:
    volume = tmp_path / "volume"
    build_adapter(vllm_python, tiny_model, volume / "lora-one", seed=1)
    built = build_adapter(vllm_python, tiny_model, tmp_path / "build" / "lora-two", seed=2)
    listing = tmp_path / "adapters.yaml"
    listing.write_text("- name: lora-one\n  source: pvc://lora-one\n")
    args: tuple[str, ...] = ("-E", "vllm", "-B", vllm.base_url, "--adapter-root", str(volume))
    args = (*args, "--pvc-root", str(volume), "--adapters-file", str(listing))
    s3.seed("adapters", {f"lora-two/{f.name}": f.read_bytes() for f in built.iterdir() if f.is_file()})
    s3.enforce_auth(True)
    # The pod's own store credentials, in the AIBrix runtime's env spelling.
    pod_env = {"AWS_ACCESS_KEY_ID": s3.reader[0], "AWS_SECRET_ACCESS_KEY": s3.reader[1], "AWS_ENDPOINT_URL": s3.url}
    with (
        outrider_process(*args, "--adapter-sync-interval", str(SYNC_INTERVAL), env=pod_env) as url,
        httpx.Client(base_url=url, timeout=120) as outrider,
        httpx.Client(base_url=vllm.base_url, timeout=120) as engine,
    ):
        wait_for(lambda: "lora-one" in adapters_in(engine), 60, "lora-one loaded from the adapters file")
        response = outrider.post(
            "/v1/lora_adapter/load", json={"lora_name": "lora-two", "lora_path": "s3://adapters/lora-two"}
        )
        assert response.status_code == 200, response.text
        for f in built.iterdir():
            if f.is_file():
                assert (volume / "lora-two" / f.name).read_bytes() == f.read_bytes(), f.name
        listed = adapters_in(engine)
        assert listed["lora-one"]["root"] == str(volume / "lora-one")
        assert listed["lora-two"]["root"] == str(volume / "lora-two")
        for name in ("lora-one", "lora-two"):
            response = complete(engine, name)
            assert response.status_code == 200, response.text
            assert response.json()["model"] == name

        vllm.kill()
        vllm.start()
        ready = vllm.wait_ready()
        assert adapters_in(engine) == {} or set(adapters_in(engine)) <= {"lora-one", "lora-two"}
        took = wait_for(
            lambda: set(adapters_in(engine)) == {"lora-one", "lora-two"},
            within=2 * SYNC_INTERVAL + 10,  # two intervals, plus the real loads on a busy 2-core machine
            what="both adapters back after the restart",
        )
        print(f"engine ready after {ready:.1f}s; both adapters back {took:.2f}s after that")
        assert took <= 2 * SYNC_INTERVAL + 10
        assert complete(engine, "lora-two").status_code == 200

        response = outrider.post("/v1/lora_adapter/unload", json={"lora_name": "lora-two"})
        assert response.status_code == 200, response.text
        assert "lora-two" not in adapters_in(engine)
        assert complete(engine, "lora-two").status_code == 404
        response = outrider.post("/v1/lora_adapter/unload", json={"lora_name": "lora-two"})
        assert response.status_code == 404

        listing.write_text("[]\n")
        wait_for(lambda: adapters_in(engine) == {}, 30, "lora-one unloaded after its file entry went away")
        state = outrider.get("/v1/adapters").json()
        assert state == {"adapters": []}
