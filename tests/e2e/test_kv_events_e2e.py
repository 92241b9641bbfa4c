"""outrider beside a real vLLM (CPU) publishing KV events: the Redis keys the Kthena router computes hold this pod.

The expected keys are computed the router's way (tests/kv_router.py: sha256 over 4-byte big-endian ids, 16-token
chunks from the prompt's start) from the token ids vLLM's own /tokenize returns, independently of outrider's code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.engine import VllmProcess, free_port
from tests.e2e.outrider_process import outrider_process
from tests.kv_router import router_keys
from tests.redis_server import RedisServer, redis_server

POD = "tiny-0.default"
BLOCK = 64  # vLLM 0.34's default (on CPU a multiple of 32); the router hashes 16: four router chunks per engine block
PROMPTS = [
    "The cat loads the adapter again. The dog serves many prompts at night. Our server measures the queue today. "
    "Every pod keeps the logs on time. The operator reads a small file quickly.",
    "A user sends three numbers! The scheduler counts the weights. She answers a long answer again. "
    "This model forgets the cache. He likes hello world at night. My friend writes the metrics.",
]
PROMPTS = [p + " " + p.upper() for p in PROMPTS]
THIRD = "Three numbers answer the metrics today. " * 16  # long enough for several 64-token engine blocks


@pytest.fixture(scope="module")
def kv_vllm(vllm_python: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmProcess]:
    port, replay_port = free_port(), free_port()
    config = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        # A wildcard: vLLM binds only endpoints with `*` (tcp://127.0.0.1:P would make it connect instead).
        "endpoint": f"tcp://*:{port}",
        "replay_endpoint": f"tcp://*:{replay_port}",
        "topic": "kv-events",
    }
    args = ["--enable-prefix-caching", "--block-size", str(BLOCK), "--kv-events-config", json.dumps(config)]
    log = tmp_path_factory.mktemp("logs") / "vllm-kv.log"
    server = VllmProcess(
        vllm_python, tiny_model, served_name="tiny", extra_args=args, log_path=log, env={"VLLM_SERVER_DEV_MODE": "1"}
    )
    server.kv_port = port  # type: ignore[attr-defined]
    with server:
        server.wait_ready()
        yield server


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def cached_keys(client: httpx.Client, base: str, prompt: str) -> set[str]:
    """Send the prompt; return the router keys of its fully cached engine blocks."""
    r = client.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 1})
    assert r.status_code == 200, r.text
    tokens = client.post(f"{base}/tokenize", json={"model": "tiny", "prompt": prompt}).json()["tokens"]
    assert len(tokens) >= 2 * BLOCK, "the prompt must fill at least two engine blocks"
    return router_keys(tokens[: len(tokens) // BLOCK * BLOCK])


def poll(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_router_keys_follow_the_engines_cache(kv_vllm: VllmProcess, redis_srv: RedisServer) -> None:
    port = kv_vllm.kv_port  # type: ignore[attr-defined]
    with (
        outrider_process(
            "-E", "vllm", "-B", kv_vllm.base_url, "-N", "tiny", "-I", POD,
            "--kv-events-endpoint", f"tcp://127.0.0.1:{port}", "--kv-events-topic", "kv-events",
            "--redis-url", redis_srv.url,
        ) as url,
        httpx.Client(timeout=120) as client,
    ):  # fmt: skip
        # No wait for the subscriber: blocks published before it joins come back through the replay it asks for.
        expected: set[str] = set()
        for prompt in PROMPTS:
            expected |= cached_keys(client, kv_vllm.base_url, prompt)
        poll(lambda: expected <= set(redis_srv.fields_of(POD)), "the prompts' router keys to hold this pod")
        stamps = {int(v) for k, v in redis_srv.fields_of(POD).items() if k in expected}
        assert all(abs(s - time.time()) < 300 for s in stamps)

        r = client.post(f"{kv_vllm.base_url}/reset_prefix_cache")
        assert r.status_code == 200, f"/reset_prefix_cache needs VLLM_SERVER_DEV_MODE=1: {r.status_code} {r.text}"
        # vLLM queues AllBlocksCleared and publishes it with the next engine step: only the next request sends it,
        # in the same batch as that request's blocks.
        third = cached_keys(client, kv_vllm.base_url, THIRD)
        stale = expected - third
        assert stale

        def cleared() -> bool:
            held = set(redis_srv.fields_of(POD))
            return third <= held and not (held & stale)

        poll(cleared, "the old keys removed after AllBlocksCleared and the next prompt's keys advertised")

        kv_vllm.restart()
        poll(lambda: redis_srv.fields_of(POD) == {}, "every field removed after an engine restart")
        after = cached_keys(client, kv_vllm.base_url, PROMPTS[1])
        poll(lambda: after <= set(redis_srv.fields_of(POD)), "keys advertised by the restarted engine")

        page = client.get(f"{url}/metrics").text
        assert 'outrider_kv_events_received_total{type="BlockStored"}' in page
        assert 'outrider_kv_events_received_total{type="AllBlocksCleared"} 1.0' in page
    poll(lambda: redis_srv.fields_of(POD) == {}, "outrider's shutdown to remove its fields", within=10)
