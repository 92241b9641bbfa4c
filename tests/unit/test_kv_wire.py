"""Decoding both wire formats (vLLM 0.32 maps, vLLM <= 0.20 / SGLang <= 0.5.15 tagged arrays)."""

from __future__ import annotations

import msgpack
import pytest

from outrider.kvevents.wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    UnknownEvent,
    WireError,
    decode_batch,
    decode_event,
    split_frames,
)

MAP_STORED = {
    "type": "BlockStored",
    "block_hashes": [11, 12],
    "parent_block_hash": None,
    "token_ids": list(range(64)),
    "block_size": 32,
    "lora_id": None,
    "medium": "GPU",
    "lora_name": None,
    "extra_keys": [None, None],
    "group_idx": 0,
    "kv_cache_spec_kind": "full_attention",
    "some_future_field": {"x": 1},
}


def test_map_and_array_formats_decode_to_the_same_event() -> None:
    array = ["BlockStored", [11, 12], None, list(range(64)), 32, None, "GPU", "ignored", "trailing"]
    from_map = decode_event(MAP_STORED)
    from_array = decode_event(array)
    assert isinstance(from_map, BlockStored) and isinstance(from_array, BlockStored)
    assert from_map.block_hashes == from_array.block_hashes == (11, 12)
    assert from_map.token_ids == from_array.token_ids == tuple(range(64))
    assert from_map.block_size == 32 and from_map.medium == from_array.medium == "GPU"
    assert from_map.group_idx == 0 and from_array.group_idx is None


def test_removed_cleared_unknown_and_bytes_hashes() -> None:
    assert decode_event({"type": "BlockRemoved", "block_hashes": [b"\x01" * 32], "medium": None}) == BlockRemoved(
        (b"\x01" * 32,), None, None
    )
    assert decode_event(["BlockRemoved", [5, 6], "CPU"]) == BlockRemoved((5, 6), "CPU", None)
    assert decode_event(["AllBlocksCleared"]) == AllBlocksCleared()
    assert decode_event({"type": "AllBlocksCleared"}) == AllBlocksCleared()
    assert decode_event({"type": "BlockMoved", "block_hashes": [1]}) == UnknownEvent("BlockMoved")


@pytest.mark.parametrize(
    "bad",
    [
        42,
        [],
        {"block_hashes": [1]},
        {"type": "BlockStored", "block_hashes": "x", "token_ids": [], "block_size": 16},
        {"type": "BlockStored", "block_hashes": [1], "token_ids": [-1], "block_size": 16},
        {"type": "BlockStored", "block_hashes": [1], "token_ids": [2**32], "block_size": 16},
        {"type": "BlockStored", "block_hashes": [1], "token_ids": [1], "block_size": 0},
        {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": "p", "token_ids": [1], "block_size": 1},
        {"type": "BlockRemoved", "block_hashes": [True]},
    ],
)
def test_malformed_events_raise_wire_error(bad: object) -> None:
    with pytest.raises(WireError):
        decode_event(bad)


def test_a_batch_keeps_good_events_and_counts_bad_ones() -> None:
    payload = msgpack.packb([1700000000.5, [MAP_STORED, {"type": 3}, ["AllBlocksCleared"]], 0])
    batch = decode_batch(payload)
    assert batch.ts == 1700000000.5 and batch.dp_rank == 0 and batch.malformed == 1
    assert [type(e) for e in batch.events] == [BlockStored, AllBlocksCleared]


@pytest.mark.parametrize("payload", [b"\xc1", msgpack.packb({"a": 1}), msgpack.packb(["x", []]), b""])
def test_unreadable_batches_raise_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_batch(payload)


def test_frames() -> None:
    assert split_frames([b"kv", (7).to_bytes(8, "big"), b"p"]) == (b"kv", 7, b"p")
    with pytest.raises(WireError):
        split_frames([b"kv", b"\x07", b"p"])
    with pytest.raises(WireError):
        split_frames([b"kv", b"p"])
