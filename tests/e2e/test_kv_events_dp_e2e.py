"""KV events from two data-parallel ranks, published by vLLM's own publisher classes, into a real Redis.

`vllm_kv_ranks.py` runs in the vLLM venv: one `ZmqEventPublisher` per rank, made as vLLM's scheduler makes it
(rank 1 on the configured ports plus one), and vLLM's own `/kv_event_sources` route. outrider is told only rank 0's
endpoint and the engine's base URL and has to find rank 1 itself; or, for an engine without the route, the number
of ranks (`--kv-events-ranks 2`) and rank 0's replay endpoint, from which it places rank 1 by vLLM's port rule.
Engine blocks hold 64 tokens (vLLM 0.34's default), four of the router's 16-token chunks each. Expected keys are
computed the router's way (tests/kv_router.py), independently of outrider's code.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.engine import _port_is_free, free_port
from tests.e2e.outrider_process import outrider_process
from tests.kv_router import router_keys
from tests.processes import stop
from tests.redis_server import RedisServer, redis_server

POD = "tiny-0.default"
BLOCK = 64
HELPER = Path(__file__).with_name("vllm_kv_ranks.py")
A = list(range(1000, 1000 + 2 * BLOCK))  # two engine blocks
B = list(range(2000, 2000 + BLOCK))
C = list(range(3000, 3000 + BLOCK))


def port_pairs(n: int) -> list[int]:
    """n ports P, each with P + 1 free too (vLLM's rank 1 publishes on the configured port plus one), no two pairs
    overlapping (a port the OS just handed out is free again at once, so it could be picked twice)."""
    taken: set[int] = set()
    out: list[int] = []
    for _ in range(100 * n):
        port = free_port()
        if port < 65535 and not {port, port + 1} & taken and _port_is_free(port + 1):
            out.append(port)
            taken |= {port, port + 1}
            if len(out) == n:
                return out
    raise AssertionError("no two consecutive free ports")


class Ranks:
    """The vLLM-side process: publish a batch from a rank, answered line by line."""

    def __init__(self, proc: subprocess.Popen[str], base_url: str, endpoint: str, replay: str, route: bool) -> None:
        self.proc, self.base_url, self.endpoint, self.replay, self.route = proc, base_url, endpoint, replay, route

    def outrider_args(self, redis_url: str) -> list[str]:
        args = ["-E", "vllm", "-B", self.base_url, "-N", "tiny", "-I", POD, "--redis-url", redis_url]
        args += ["--kv-events-endpoint", self.endpoint, "--kv-events-topic", "kv-events"]
        return args if self.route else [*args, "--kv-events-ranks", "2", "--kv-events-replay-endpoint", self.replay]

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def publish(self, rank: int, *events: dict[str, Any]) -> None:
        self.send({"rank": rank, "events": list(events)})


def stored(hashes: list[int], parent: int | None, tokens: list[int]) -> dict[str, Any]:
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent, "token_ids": tokens,
            "block_size": BLOCK}  # fmt: skip


@pytest.fixture(scope="module", params=["route", "no-route"])
def ranks(
    request: pytest.FixtureRequest, vllm_python: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ranks]:
    pub, replay = port_pairs(2)
    http = free_port()
    while http in (pub, pub + 1, replay, replay + 1):
        http = free_port()
    route = request.param == "route"
    log = tmp_path_factory.mktemp("logs") / "vllm-kv-ranks.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [vllm_python, str(HELPER), "--ranks", "2", "--endpoint", f"tcp://*:{pub}",
             "--replay-endpoint", f"tcp://*:{replay}", "--http-port", str(http), *([] if route else ["--no-route"])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # vLLM's imports take a while on a busy CPU
            assert line.startswith("ready"), f"the vLLM publishers did not start: {log.read_text()[-2000:]}"
            yield Ranks(proc, f"http://127.0.0.1:{http}", f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{replay}", route)
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            stop(proc)


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def wait_for(ranks: Ranks, srv: RedisServer, expected: set[str], what: str, within: float = 30.0) -> None:
    """Poll Redis until this pod holds exactly `expected`. Each round sends both ranks an empty batch: a
    subscriber that joined after a batch was sent learns of the stream from it and replays what it missed."""
    deadline = time.monotonic() + within
    while (held := set(srv.fields_of(POD))) != expected:
        assert time.monotonic() < deadline, f"{what}: missing {len(expected - held)}, extra {len(held - expected)}"
        for rank in (0, 1):
            ranks.send({"rank": rank, "tick": True})
        time.sleep(0.1)


def test_both_ranks_blocks_are_advertised_and_removed_per_rank(ranks: Ranks, redis_srv: RedisServer) -> None:
    # Published before outrider starts: both ranks' buffers replay them once it subscribes.
    ranks.publish(0, stored([101, 102], None, A), stored([301], None, C))
    ranks.publish(1, stored([101], None, A[:BLOCK]), stored([201], None, B))
    with outrider_process(*ranks.outrider_args(redis_srv.url)) as url:
        wait_for(ranks, redis_srv, router_keys(A) | router_keys(B) | router_keys(C), "both ranks' blocks")
        assert len(router_keys(A) | router_keys(B) | router_keys(C)) == 4 * 4  # four chunks per 64-token block
        assert "outrider_kv_event_ranks 2.0" in httpx.get(f"{url}/metrics", timeout=10).text.splitlines()

        # Rank 0 drops both blocks of A; rank 1 still holds A's first block, so its chunks stay advertised.
        ranks.publish(0, {"type": "BlockRemoved", "block_hashes": [101, 102]})
        wait_for(ranks, redis_srv, router_keys(A[:BLOCK]) | router_keys(B) | router_keys(C), "A's first block kept")

        # AllBlocksCleared on rank 1 forgets rank 1's blocks only: C, on rank 0, stays.
        ranks.publish(1, {"type": "AllBlocksCleared"})
        wait_for(ranks, redis_srv, router_keys(C), "only rank 0's block after rank 1's clear")
        ranks.publish(1, stored([201], None, B))
        wait_for(ranks, redis_srv, router_keys(B) | router_keys(C), "rank 1's block again after its clear")
    deadline = time.monotonic() + 10
    while redis_srv.fields_of(POD):
        assert time.monotonic() < deadline, "outrider's shutdown must remove its fields"
        time.sleep(0.1)
