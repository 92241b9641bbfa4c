"""PodIndex: engine blocks of any size mapped onto the router's 16-token chunks, with exact removal."""

from __future__ import annotations

import hashlib
import random
import struct

import pytest

from outrider.kvevents.index import PodIndex
from outrider.kvevents.wire import AllBlocksCleared, BlockRemoved, BlockStored, Event


def router_hash(tokens: list[int]) -> int:
    """Independent of outrider.kvevents.hashing on purpose."""
    digest = hashlib.sha256(b"".join(struct.pack(">I", t) for t in tokens)).digest()
    return int(struct.unpack(">Q", digest[:8])[0]) & ~(1 << 63)


def router_chunks(tokens: list[int], c: int = 16) -> set[tuple[None, int]]:
    return {(None, router_hash(tokens[i : i + c])) for i in range(0, len(tokens) - c + 1, c)}


def engine_blocks(tokens: list[int], size: int, salt: str = "") -> list[tuple[int, list[int]]]:
    """(chained engine hash, tokens) per full block, as an engine numbers them."""
    out = []
    for i in range(len(tokens) // size):
        prefix = tokens[: (i + 1) * size]
        h = int.from_bytes(hashlib.blake2b(f"{salt}{prefix}".encode(), digest_size=8).digest(), "big")
        out.append((h, tokens[i * size : (i + 1) * size]))
    return out


def store_events(blocks: list[tuple[int, list[int]]], size: int, per_event: int) -> list[Event]:
    """Split a sequence's blocks over several BlockStored events linked by parent hashes."""
    events: list[Event] = []
    for i in range(0, len(blocks), per_event):
        group = blocks[i : i + per_event]
        parent = blocks[i - 1][0] if i else None
        events.append(
            BlockStored(tuple(h for h, _ in group), parent, tuple(t for _, ts in group for t in ts), size, medium="GPU")
        )
    return events


@pytest.mark.parametrize("block_size", [1, 5, 8, 16, 24, 32, 48, 64])
@pytest.mark.parametrize("per_event", [1, 3])
def test_advertised_keys_are_the_routers_chunks_of_the_cached_prefix(block_size: int, per_event: int) -> None:
    rng = random.Random(block_size * 10 + per_event)
    tokens = [rng.randrange(50_000) for _ in range(150)]
    index = PodIndex(16)
    blocks = engine_blocks(tokens, block_size)
    index.apply(store_events(blocks, block_size, per_event), ts=100)
    cached = tokens[: len(blocks) * block_size]
    assert set(index.snapshot()) == router_chunks(cached)
    assert set(index.pending) == router_chunks(cached)

    # Evict the last block: exactly the chunks that end inside it go, nothing else.
    index.take()
    last_hash, _ = blocks[-1]
    index.apply([BlockRemoved((last_hash,), "GPU")], ts=101)
    remaining = tokens[: (len(blocks) - 1) * block_size]
    assert set(index.snapshot()) == router_chunks(remaining)
    assert {k for k, v in index.pending.items() if v is None} == router_chunks(cached) - router_chunks(remaining)


def test_a_chunk_shared_by_two_blocks_stays_until_both_are_removed() -> None:
    common = list(range(16))
    seq_a = common + list(range(100, 116))
    seq_b = list(range(200, 216)) + common  # the same 16 tokens, elsewhere: same router hash (no chaining)
    index = PodIndex(16)
    a = engine_blocks(seq_a, 16, "a")
    b = engine_blocks(seq_b, 16, "b")
    index.apply(store_events(a, 16, 2) + store_events(b, 16, 2), ts=5)
    shared = (None, router_hash(common))
    assert shared in index.snapshot()
    index.take()
    index.apply([BlockRemoved((a[0][0],), "GPU")], ts=6)
    assert shared in index.snapshot() and shared not in index.pending
    index.apply([BlockRemoved((b[1][0],), "GPU")], ts=7)
    assert shared not in index.snapshot() and index.pending[shared] is None


def test_storing_a_block_again_refreshes_its_time_but_not_its_count() -> None:
    tokens = list(range(32))
    blocks = engine_blocks(tokens, 32)
    index = PodIndex(16)
    index.apply(store_events(blocks, 32, 1), ts=10)
    index.take()
    index.apply(store_events(blocks, 32, 1), ts=20)  # vLLM re-announces a block reused from its cache
    assert set(index.pending.values()) == {20} and set(index.snapshot().values()) == {20}
    index.apply([BlockRemoved((blocks[0][0],), "GPU")], ts=30)
    assert index.snapshot() == {} and index.tracked_blocks == 0


def test_blocks_with_an_unknown_parent_are_skipped_not_guessed() -> None:
    blocks = engine_blocks(list(range(64)), 32)
    index = PodIndex(16)
    stats = index.apply([BlockStored((blocks[1][0],), 999, tuple(blocks[1][1]), 32)], ts=1)
    assert stats.unplaced_blocks == 1 and index.snapshot() == {}


def test_lora_blocks_are_advertised_under_the_adapter_name_and_bare_ids_are_skipped() -> None:
    tokens = list(range(16))
    index = PodIndex(16)
    index.apply([BlockStored((1,), None, tuple(tokens), 16, lora_name="sql", lora_id=3)], ts=1)
    assert set(index.snapshot()) == {("sql", router_hash(tokens))}
    stats = index.apply([BlockStored((2,), None, tuple(tokens), 16, lora_id=4)], ts=1)
    assert stats.unattributed_blocks == 1 and len(index.snapshot()) == 1


def test_media_are_separate_namespaces() -> None:
    tokens = list(range(16))
    index = PodIndex(16)
    index.apply([BlockStored((1,), None, tuple(tokens), 16, medium="GPU")], ts=1)
    index.apply([BlockStored((1,), None, tuple(tokens), 16, medium="CPU")], ts=1)
    index.apply([BlockRemoved((1,), "GPU")], ts=2)
    assert set(index.snapshot()) == {(None, router_hash(tokens))}  # still held on CPU


def test_all_blocks_cleared_empties_the_state_and_asks_for_a_resync() -> None:
    index = PodIndex(16)
    index.apply(store_events(engine_blocks(list(range(64)), 16), 16, 4), ts=1)
    index.take()
    stats = index.apply([AllBlocksCleared()], ts=2)
    assert stats.cleared and index.snapshot() == {} and index.take() == (True, {})


def test_pending_changes_are_bounded_by_a_full_resync() -> None:
    index = PodIndex(16, max_pending=3)
    index.apply(store_events(engine_blocks(list(range(160)), 16), 16, 10), ts=1)
    assert index.take() == (True, {}) and len(index.snapshot()) == 10
    index2 = PodIndex(16, max_blocks=5)
    index2.apply(store_events(engine_blocks(list(range(160)), 16), 16, 10), ts=1)
    assert index2.tracked_blocks == 0 and index2.overflows == 1 and index2.full_resync


def test_data_parallel_ranks_hold_their_own_blocks_and_the_pod_advertises_their_union() -> None:
    # The same prompt cached on two ranks gives the same engine hashes on both; each rank's stream is its own.
    rng = random.Random(7)
    shared = [rng.randrange(50_000) for _ in range(128)]
    other = [rng.randrange(50_000) for _ in range(64)]
    first, second = engine_blocks(shared, 64)
    (alone,) = engine_blocks(other, 64, salt="1")
    index = PodIndex(16)
    index.apply(store_events([first, second], 64, 2), 1, rank=0)
    index.apply(store_events([first], 64, 1) + store_events([alone], 64, 1), 2, rank=1)
    assert set(index.snapshot()) == router_chunks(shared) | router_chunks(other)
    assert index.tracked_blocks == 4

    index.take()
    index.apply([BlockRemoved((first[0], second[0]), "GPU")], 3, rank=0)
    # The first block's chunks stay: rank 1 still holds it. Only the second block's are deleted.
    assert set(index.snapshot()) == router_chunks(shared[:64]) | router_chunks(other)
    full, changes = index.take()
    assert not full and {k for k, ts in changes.items() if ts is None} == router_chunks(shared[64:])

    index.apply(store_events([first, second], 64, 1), 4, rank=0)
    index.apply([AllBlocksCleared()], 5, rank=1)  # rank 1's blocks only
    assert set(index.snapshot()) == router_chunks(shared)
    assert index.tracked_blocks == 2 and index.take()[0]  # a full resync writes exactly what rank 0 holds


def test_a_child_is_placed_by_its_parent_on_its_own_rank_only() -> None:
    tokens = list(range(128))
    (first, second) = engine_blocks(tokens, 64)
    index = PodIndex(16)
    index.apply(store_events([first], 64, 1), 1, rank=0)
    stats = index.apply([BlockStored((second[0],), first[0], tuple(second[1]), 64)], 2, rank=1)
    assert stats.unplaced_blocks == 1  # rank 1 never stored the parent
    assert set(index.snapshot()) == router_chunks(tokens[:64])
