"""Cold start with a real vLLM (CPU build): outrider, as a real process, is given the tiny model in S3 (moto, behind a
paced proxy) as its pod model; GET /startup answers 503 until every file is published, then 200; only then is vLLM
started, as the kubelet starts the engine container after the native sidecar's startupProbe, and it serves a
completion from the local copy. Timings are printed (run with -s)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx

from tests.e2e.engine import VllmProcess, free_port
from tests.e2e.outrider_process import outrider_process
from tests.servers.counting_proxy import CountingProxy
from tests.servers.moto import ADMIN, REGION, MotoServer

MIB = 1024 * 1024
# Each connection of the store gets this many bytes a second, so the download lasts long enough to be seen at 503.
PACE = 1 * MIB
WITHIN = 240.0  # vLLM on 2 CPU cores answers /health 20-60 s after it starts


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_engine_starts_after_startup_turns_200_and_serves_the_local_copy(
    vllm_python: str, tiny_model: Path, tmp_path: Path
) -> None:
    s3 = MotoServer()
    s3.start()
    files = {f.name: f for f in tiny_model.iterdir() if f.is_file()}
    s3.seed("models", {f"tiny/{name}": f.read_bytes() for name, f in files.items()})
    proxy = CountingProxy(s3.port, PACE).start()
    root = tmp_path / "models"
    root.mkdir()
    engine_port = free_port()
    pod = {
        "AWS_ACCESS_KEY_ID": ADMIN[0],
        "AWS_SECRET_ACCESS_KEY": ADMIN[1],
        "AWS_ENDPOINT_URL": proxy.url,
        "AWS_REGION": REGION,
    }
    args = ["-E", "vllm", "-B", f"http://127.0.0.1:{engine_port}", "--model-root", str(root)]
    args += ["--pod-model", "s3://models/tiny", "--log-level", "warning"]
    try:
        started = time.monotonic()
        with outrider_process(*args, env=pod) as url, httpx.Client(base_url=url, timeout=30) as outrider:
            first = outrider.get("/startup")
            assert first.status_code == 503 and first.json()["status"] == "downloading", first.text
            seen_503, missing_seen = 0, False
            while (answer := outrider.get("/startup")).status_code == 503:
                assert answer.json()["status"] == "downloading", answer.text
                # 503 while files are still missing (it may stay 503 a moment after the last rename, until the
                # job has recorded the directory complete: the guarantee is the other way, 200 means complete).
                missing_seen |= not all((root / "tiny" / name).exists() for name in files)
                seen_503 += 1
                assert time.monotonic() - started < WITHIN, answer.text
                time.sleep(0.1)
            took = time.monotonic() - started
            assert missing_seen, "never seen at 503 while a file was still missing"
            body = answer.json()
            assert body["status"] == "ready" and body["model_dir"] == str(root / "tiny")
            print(f"\npod model from S3 (moto, paced): /startup 200 after {took:.1f}s, 503 seen {seen_503} times")
            for name, original in files.items():  # complete when it says so
                assert sha(root / "tiny" / name) == sha(original), name
            assert outrider.get("/ready").status_code == 503  # no engine yet: the startup route alone said go

            with VllmProcess(vllm_python, root / "tiny", served_name="tiny", port=engine_port) as engine:
                print(f"vLLM ready {engine.wait_ready(WITHIN):.1f}s after its start")
                body = {"model": "tiny", "prompt": "hello", "max_tokens": 3, "temperature": 0}
                completion = httpx.post(f"{engine.base_url}/v1/completions", json=body, timeout=60)
                assert completion.status_code == 200 and completion.json()["choices"], completion.text
                deadline = time.monotonic() + 30
                while outrider.get("/ready").status_code != 200:  # outrider follows the engine it waited for
                    assert time.monotonic() < deadline, outrider.get("/ready").text
                    time.sleep(0.1)
    finally:
        proxy.stop()
        s3.stop()
