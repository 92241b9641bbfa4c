"""The transfer engine over real sockets: a local HTTP range store behind a fault-injecting proxy."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from outrider.transfer import download
from outrider.transfer.engine import Transfer, TransferOptions
from outrider.transfer.plan import Filters
from outrider.transfer.progress import Progress
from tests.fakes.http_store import FaultProxy, HttpRangeSource, RangeServer

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def model_tree() -> dict[str, bytes]:
    """A model-shaped tree: one file of tens of MB, a second shard, and small JSON files (46 MiB in all)."""
    return {
        "config.json": b'{"model_type": "llama"}',
        "model-00001-of-00002.safetensors": os.urandom(40 * MIB + 4321),
        "model-00002-of-00002.safetensors": os.urandom(6 * MIB),
        "tokenizer/tokenizer.json": os.urandom(200_000),
    }


@pytest.fixture
def server(model_tree: dict[str, bytes]) -> Iterator[RangeServer]:
    s = RangeServer(model_tree).start()
    yield s
    s.stop()


async def fetch(source: HttpRangeSource, dest: Path, options: TransferOptions) -> Progress:
    prepared = await trio.to_thread.run_sync(download.prepare, source, Filters(), dest, options.chunk_size)
    progress = download.progress_for(prepared, Progress())
    await download.run(prepared, Transfer(options), progress, threading.Event())
    return progress


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_same_tree(dest: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        assert sha((dest / path).read_bytes()) == sha(data), path
    assert not [p for p in dest.rglob("*") if p.name.endswith((".part", ".part.json"))]


async def test_tree_arrives_byte_exact_in_parallel_ranges(
    server: RangeServer, model_tree: dict[str, bytes], tmp_path: Path
) -> None:
    options = TransferOptions(workers=8, chunk_size=4 * MIB)
    await fetch(HttpRangeSource(server.url), tmp_path / "m", options)
    assert_same_tree(tmp_path / "m", model_tree)
    big = "model-00001-of-00002.safetensors"
    size = len(model_tree[big])
    assert sorted(server.gets_of(big)) == [(s, min(s + 4 * MIB, size)) for s in range(0, size, 4 * MIB)]


async def test_resets_stalls_and_a_500_burst_are_recovered(
    server: RangeServer, model_tree: dict[str, bytes], tmp_path: Path
) -> None:
    proxy = FaultProxy(server.port, reset_after=1_500_000)
    # The list call passes; then reads meet a reset, a stall (longer than the 1 s per-read timeout), another reset.
    proxy.actions.extend(["pass", "reset", "stall", "pass", "reset"])
    server.fail_next = 0
    options = TransferOptions(workers=4, chunk_size=4 * MIB, backoff_initial=0.05, backoff_max=0.2)
    source = HttpRangeSource(proxy.url, timeout=1.0)
    prepared = await trio.to_thread.run_sync(download.prepare, source, Filters(), tmp_path / "m", options.chunk_size)
    server.fail_next = 3  # a burst of 500s for the first ranged reads
    try:
        await download.run(prepared, Transfer(options), Progress(), threading.Event())
    finally:
        proxy.stop()
    assert_same_tree(tmp_path / "m", model_tree)
    chunks = sum(-(-len(d) // (4 * MIB)) for d in model_tree.values())
    # Every fault was met (a 500 may land on a connection meant to reset, so the count of retries varies).
    assert not proxy.actions and server.fail_next <= 0
    assert len(server.gets) >= chunks + 3
