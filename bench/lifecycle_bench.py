"""Engine lifecycle benchmark: how long an activation of the tiny model takes, and outrider's share of it.

    python bench/lifecycle_bench.py --vllm-python PY [--rounds 2]     # PY = python of the vLLM CPU venv

Each round, in turn:
1. by hand: start the very command outrider would launch (same program, flags and environment) and poll its
   `/health` every 0.1 s until it answers 200; stop it;
2. outrider, artifact already in the model root (used in place): `POST /v1/runtime/models/activate` until the
   answer (outrider answers once `/health` answers); deactivate;
3. outrider, from `pvc://` (copied into the model root first, verified);
4. outrider, from S3 (moto on loopback, SigV4 enforced; fetched, verified).
A fresh model directory per run (by hand too), so every fetch is a real one and every run compiles alike (vLLM
keys its compile cache by the model's path). All runs share one TMPDIR and ~/.cache/vllm; the first run of all
warms what does not depend on the path and is reported apart.
outrider runs as its own process, as in a pod. Prints the median of each and the differences, and for outrider's
runs how long after the request the engine's process started (the kernel's start time of the pid in its record):
that part is outrider's alone (fetch, checks, record, spawn); the rest is the engine starting, plus up to one
0.5 s /health poll of outrider's against this bench's 0.1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.engine import VLLM_ENV, build_tiny_model, free_port  # noqa: E402
from tests.processes import stop  # noqa: E402
from tests.servers.moto import MotoServer  # noqa: E402

FLAGS = ["--max-model-len", "256", "--dtype", "float32"]
PORT = 23500
HEALTH_POLL = 0.1
WITHIN = 300.0


def by_hand(python: str, model: Path, env: dict[str, str]) -> float:
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", *FLAGS, "--model", str(model),
            "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(PORT)]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{PORT}/health", timeout=1).status_code == 200:
                    return time.monotonic() - started
            assert proc.poll() is None, "vLLM exited"
            assert time.monotonic() - started < WITHIN
            time.sleep(HEALTH_POLL)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait()


@contextlib.contextmanager
def outrider(python: str, work: Path, env: dict[str, str]) -> Iterator[httpx.Client]:
    port = free_port()
    command = f"vllm={python} -m vllm.entrypoints.openai.api_server {' '.join(FLAGS)}"
    argv = [sys.executable, "-m", "outrider", "serve", "-E", "vllm", "-B", "http://127.0.0.1:9",
            "-H", "127.0.0.1", "-P", str(port), "--log-level", "warning",
            "--engine-launch", command, "--engine-host", "127.0.0.1", "--engine-ports", f"{PORT}-{PORT}",
            "--engine-state-dir", str(work / "state"), "--model-root", str(work / "models"),
            "--pvc-root", str(work / "volume")]  # fmt: skip
    clean = {k: v for k, v in env.items() if not k.startswith(("OUTRIDER_", "INFERENCE_ENGINE"))}
    proc = subprocess.Popen(argv, env=clean, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WITHIN) as client:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/health").status_code == 200:
                        break
                assert time.monotonic() < deadline
                time.sleep(0.05)
            yield client
    finally:
        stop(proc, grace=30)


def launched_after(state: Path, asked: float) -> float:
    """Seconds from `asked` (CLOCK_BOOTTIME) to the start of the engine's process: its record's kernel start time,
    clock ticks on the same boot-time clock (10 ms resolution)."""
    ticks = int(json.loads((state / "tiny.json").read_text())["start_ticks"])
    return ticks / os.sysconf("SC_CLK_TCK") - asked


def activation(client: httpx.Client, artifact: str, state: Path) -> tuple[float, float]:
    """Seconds from the request to the answer, and of those, before the engine's process started (fetch, checks,
    record, spawn; 10 ms resolution)."""
    started, asked = time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)
    answer = client.post("/v1/runtime/models/activate", json={"model_name": "tiny", "artifact_url": artifact})
    assert answer.status_code == 200, answer.text
    while answer.json()["message"] is not None:  # answered before /health (over answer_within): ask again
        answer = client.post("/v1/runtime/models/activate", json={"model_name": "tiny", "artifact_url": artifact})
    took = time.monotonic() - started
    before_launch = launched_after(state, asked)
    assert client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"}).status_code == 200
    return took, before_launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vllm-python", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="outrider-lifecycle-bench-"))
    tiny = build_tiny_model(args.vllm_python, work / "build" / "tiny")
    size = sum(f.stat().st_size for f in tiny.iterdir())
    (work / "tmp").mkdir()
    env = {**os.environ, **VLLM_ENV, "TMPDIR": str(work / "tmp")}
    s3 = MotoServer()
    s3.start()
    s3.seed("models", {f"tiny/{f.name}": f.read_bytes() for f in tiny.iterdir()})
    s3.enforce_auth(True)
    env_s3 = {**env, "AWS_ACCESS_KEY_ID": s3.reader[0], "AWS_SECRET_ACCESS_KEY": s3.reader[1],
              "AWS_ENDPOINT_URL": s3.url}  # fmt: skip
    results: dict[str, list[float]] = {"by hand": [], "in place": [], "pvc://": [], "s3://": []}
    before: dict[str, list[float]] = {kind: [] for kind in results if kind != "by hand"}
    try:
        warm = by_hand(args.vllm_python, tiny, env)
        print(f"first start (warms vLLM's caches; not counted): {warm:.1f}s", flush=True)
        for round_ in range(args.rounds):
            for kind in results:
                run = work / f"run-{round_}-{kind.strip(':/').replace(' ', '-')}"
                (run / "models").mkdir(parents=True)
                shutil.copytree(tiny, run / "volume" / "tiny")
                if kind == "by hand":
                    # A fresh path too: vLLM keys its compile cache by the model's path, so a path it has seen
                    # skips the 15 s warm-up compile, which would flatter whichever run reuses one.
                    took = by_hand(args.vllm_python, shutil.copytree(tiny, run / "models" / "tiny"), env)
                else:
                    artifact = {"in place": str(run / "models" / "tiny"), "pvc://": "pvc://tiny",
                                "s3://": "s3://models/tiny"}[kind]  # fmt: skip
                    if kind == "in place":
                        shutil.copytree(tiny, run / "models" / "tiny")
                    with outrider(args.vllm_python, run, env_s3 if kind == "s3://" else env) as client:
                        took, ahead = activation(client, artifact, run / "state")
                    before[kind].append(ahead)
                results[kind].append(took)
                launch = "" if kind == "by hand" else f"  (engine launched after {ahead:.2f}s)"
                print(f"round {round_ + 1} {kind:9s} {took:6.1f}s{launch}", flush=True)
    finally:
        s3.stop()
    median = {kind: statistics.median(times) for kind, times in results.items()}
    print(f"\ntiny model: {size / 1e6:.1f} MB, {len(list(tiny.iterdir()))} files; {args.rounds} rounds; median:")
    for kind, value in median.items():
        if kind == "by hand":
            print(f"  {kind:9s} {value:6.1f}s  (start to /health answering, polled every {HEALTH_POLL}s)")
            continue
        ahead = statistics.median(before[kind])
        print(
            f"  {kind:9s} {value:6.1f}s  {value - median['by hand']:+.2f}s over by hand; before the engine's launch "
            f"{ahead:.2f}s (fetch, checks, record), launch to answer {value - ahead:.1f}s"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
