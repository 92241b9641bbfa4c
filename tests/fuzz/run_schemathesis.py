"""Fuzz the live API with schemathesis: `nox -s fuzz` (extra arguments go to `schemathesis run`).

A real `outrider serve` process beside the stand-in vLLM of tests/fakes (LoRA API and /v1/models), on 127.0.0.1
ports the OS picks, with a temporary --model-root and --adapter-root, the engine lifecycle launching the stand-in
engine process (tests/fakes/standin_engine.py), an API token, and every store endpoint
(S3, TOS, Hugging Face) pointed at a closed local port, so no request waits on the internet: a store source ends
in a prompt 502/503. schemathesis reads /openapi.json from the live server, sends every operation a fixed budget
of generated requests (positive and negative, a fixed seed) plus stateful sequences over the spec's links, with
the bearer token, and runs all its checks. 502, 503 and 507 are expected answers here (the engine and the stores
are stand-ins or absent, and are documented as such); a 500 is a failure.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from tests.fakes.lora_engine import FakeLoraEngine

TOKEN = "fuzz-token-not-a-secret"
# One budget for every operation: 21 operations x this many examples, four phases: about 2,000 test cases in
# about 25 s on 2 cores.
MAX_EXAMPLES = 100
SEED = 20240607
STANDIN = Path(__file__).resolve().parent.parent / "fakes" / "standin_engine.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_endpoint() -> str:
    # A port that was free a moment ago: connections to it are refused at once.
    return f"http://127.0.0.1:{free_port()}"


async def wait_ready(url: str, within: float = 30.0) -> None:
    async with httpx.AsyncClient() as client:
        with trio.move_on_after(within):
            while True:
                try:
                    if (await client.get(url + "/openapi.json")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)
    raise SystemExit(f"outrider at {url} did not answer within {within}s")


async def main(extra: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="outrider-fuzz-"))
    (work / "models").mkdir()
    (work / "adapters").mkdir()
    engine = FakeLoraEngine("vllm")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dead = closed_endpoint()
    env = {
        **os.environ,
        "OUTRIDER_API_TOKEN": TOKEN,
        "ENDPOINT": dead,
        "TOS_ENDPOINT": dead,
        "HF_ENDPOINT": dead,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for name in ("AWS_ENDPOINT_URL", "ACCESS_KEY", "SECRET_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name, None)
    serve = [
        sys.executable, "-m", "outrider", "serve",
        "--engine", "vllm", "--host", "127.0.0.1", "--port", str(port), "--pod", "fuzz", "--model", "tiny",
        "--model-root", str(work / "models"), "--adapter-root", str(work / "adapters"),
        "--aibrix-adapter-dir", str(work / "aibrix-adapters"),
        "--log-level", "error",
        # The engine lifecycle on, launching the stand-in engine, so its routes are fuzzed past the 501 of "off".
        "--engine-launch", f"vllm={sys.executable} {STANDIN}", "--engine-host", "127.0.0.1",
        "--engine-ports", "24600-24619", "--engine-state-dir", str(work / "engines"), "--engine-ready-timeout", "10",
    ]  # fmt: skip
    async with trio.open_nursery() as nursery:
        await engine.start(nursery)
        serve += ["--engine-base-url", engine.base_url]
        process = await nursery.start(functools.partial(trio.run_process, serve, env=env, check=False))
        try:
            await wait_ready(url)
            command = [
                str(Path(sys.executable).with_name("schemathesis")),
                "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
                "run", url + "/openapi.json",
                "--checks", "all",
                "--phases", "examples,coverage,fuzzing,stateful",
                "--max-examples", str(MAX_EXAMPLES),
                "--seed", str(SEED),
                "--header", f"Authorization: Bearer {TOKEN}",
                "--workers", "1",
                "--request-timeout", "15",
                "--suppress-health-check", "all",
                "--generation-database", "none",
                *extra,
            ]  # fmt: skip
            started = time.monotonic()
            done = await trio.run_process(command, check=False)
            print(f"schemathesis exit {done.returncode} after {time.monotonic() - started:.0f}s", flush=True)
            return done.returncode
        finally:
            process.terminate()
            engine.stop()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    sys.exit(trio.run(main, sys.argv[1:]))
