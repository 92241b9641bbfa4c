"""LoRA lifecycle benchmark: outrider's overhead on an adapter load, and how fast a restarted engine is repaired.

    python bench/lora_bench.py                       # against the stand-in vLLM (tests/fakes/lora_engine.py)
    python bench/lora_bench.py --vllm-python PY      # against a real vLLM on CPU (PY = python of its venv)

1. Load overhead: N times, load an adapter already on the volume directly at the engine
   (`POST /v1/load_lora_adapter`) and through outrider (`POST /v1/lora_adapter/load`, which declares, resolves the
   volume path, calls the engine and waits for the reconciler's answer); each load is followed by an unload that
   is not timed. Reports p50/p99 of both and their difference.
2. Restart repair: declare 4 adapters, restart the engine (the stand-in forgets everything; the real one is
   killed and started again), and time from the engine answering again to all 4 listed in its `/v1/models`.

outrider runs as its own process (`python -m outrider serve`), as in a pod; the stand-in engine and the
measuring client share this process's event loop, the same for both paths of the comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.engine import VllmProcess, build_adapter, build_tiny_model, free_port  # noqa: E402
from tests.fakes.lora_engine import FakeLoraEngine  # noqa: E402
from tests.processes import stop  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def outrider(engine_url: str, root: Path, interval: float) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTRIDER_", "INFERENCE_ENGINE"))}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "outrider", "serve", "-E", "vllm", "-B", engine_url, "-H", "127.0.0.1"),
            *("-P", str(port), "--adapter-root", str(root), "--adapter-sync-interval", str(interval)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


async def poll(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    started = trio.current_time()
    while not await check():
        if trio.current_time() - started > within:
            raise SystemExit(f"timed out after {within}s waiting for {what}")
        await trio.sleep(0.01)
    return trio.current_time() - started


async def load_overhead(engine_url: str, outrider_url: str, adapter: Path, loads: int) -> dict[str, float]:
    direct: list[float] = []
    via: list[float] = []
    async with httpx.AsyncClient(timeout=120) as c:
        for i in range(loads):
            name = f"bench-{i}"
            t = trio.current_time()
            r = await c.post(f"{engine_url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter)})
            direct.append(trio.current_time() - t)
            assert r.status_code == 200, r.text
            r = await c.post(f"{engine_url}/v1/unload_lora_adapter", json={"lora_name": name})
            assert r.status_code == 200, r.text

            t = trio.current_time()
            r = await c.post(
                f"{outrider_url}/v1/lora_adapter/load", json={"lora_name": name, "lora_path": str(adapter)}
            )
            via.append(trio.current_time() - t)
            assert r.status_code == 200, r.text
            r = await c.post(f"{outrider_url}/v1/lora_adapter/unload", json={"lora_name": name})
            assert r.status_code == 200, r.text
    out = {}
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        out[f"direct_{label}_ms"] = percentile(direct, q) * 1000
        out[f"outrider_{label}_ms"] = percentile(via, q) * 1000
        out[f"overhead_{label}_ms"] = out[f"outrider_{label}_ms"] - out[f"direct_{label}_ms"]
    out["outrider_mean_ms"] = statistics.fmean(via) * 1000
    return out


async def declare_four(outrider_url: str, engine_url: str, adapters: list[Path]) -> None:
    async with httpx.AsyncClient(timeout=120) as c:
        for i, path in enumerate(adapters):
            r = await c.put(f"{outrider_url}/v1/adapters/keep-{i}", json={"source": str(path), "wait": True})
            assert r.status_code == 200, r.text


async def all_four(engine_url: str) -> bool:
    async with httpx.AsyncClient(timeout=5) as c:
        try:
            data = (await c.get(f"{engine_url}/v1/models")).json()["data"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
    return {m["id"] for m in data if m.get("parent")} >= {f"keep-{i}" for i in range(4)}


async def wait_outrider(url: str) -> None:
    async def up() -> bool:
        async with httpx.AsyncClient(timeout=1) as c:
            try:
                return (await c.get(url + "/health")).status_code == 200
            except httpx.TransportError:
                return False

    await poll(up, 30, "outrider /health")


async def run_fake(args: argparse.Namespace, root: Path) -> dict[str, float]:
    adapters = []
    for i in range(4):
        path = root / f"a{i}"
        path.mkdir(parents=True)
        (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
        adapters.append(path)
    async with trio.open_nursery() as nursery:
        engine = FakeLoraEngine("vllm")
        await engine.start(nursery)
        with outrider(engine.base_url, root, args.interval) as url:
            await wait_outrider(url)
            result = await load_overhead(engine.base_url, url, adapters[0], args.loads)
            await declare_four(url, engine.base_url, adapters)
            engine.stop()
            engine.forget()
            await engine.start(nursery)
            result["restart_to_all_4_loaded_s"] = await poll(lambda: all_four(engine.base_url), 60, "4 adapters back")
        engine.stop()
        nursery.cancel_scope.cancel()
    return result


async def run_real(args: argparse.Namespace, root: Path) -> dict[str, float]:
    python = args.vllm_python
    model = await trio.to_thread.run_sync(build_tiny_model, python, root.parent / "model")
    adapters = []
    for i in range(4):
        adapters.append(await trio.to_thread.run_sync(build_adapter, python, model, root / f"a{i}", i))
    server = VllmProcess(python, model, die_with_parent=False, log_path=root.parent / "vllm.log")
    server.start()
    try:
        await trio.to_thread.run_sync(server.wait_ready)
        with outrider(server.base_url, root, args.interval) as url:
            await wait_outrider(url)
            result = await load_overhead(server.base_url, url, adapters[0], args.loads)
            await declare_four(url, server.base_url, adapters)
            await trio.to_thread.run_sync(server.kill)
            server.start()
            result["engine_ready_s"] = await trio.to_thread.run_sync(server.wait_ready)
            result["restart_to_all_4_loaded_s"] = await poll(lambda: all_four(server.base_url), 120, "4 back")
    finally:
        await trio.to_thread.run_sync(server.stop)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, default=50, help="adapter loads per path (default 50)")
    parser.add_argument("--interval", type=float, default=1.0, help="outrider's --adapter-sync-interval")
    parser.add_argument("--vllm-python", help="python of a vLLM CPU venv: bench a real vLLM instead of the stand-in")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        root = Path(tmp) / "volume"
        root.mkdir()
        started = time.monotonic()
        runner = run_real if args.vllm_python else run_fake
        result = trio.run(runner, args, root)
    result["bench_wall_s"] = time.monotonic() - started
    engine = "vLLM (real, CPU)" if args.vllm_python else "stand-in vLLM"
    print(f"engine: {engine}; loads: {args.loads}; sync interval: {args.interval}s")
    for key, value in result.items():
        print(f"  {key:28s} {value:10.2f}")


if __name__ == "__main__":
    main()
