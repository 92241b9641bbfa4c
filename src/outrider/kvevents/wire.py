"""Decoding the engines' KV-cache event messages (vLLM and SGLang, both wire formats).

A ZMQ message is three frames: `[topic, seq, payload]`, `seq` an 8-byte big-endian counter the publisher starts at
0, `payload` msgpack of a batch `[ts, events, dp_rank]`. Each event is either a map with a `type` key (vLLM 0.32+,
SGLang 0.5.23) or a tagged array (vLLM <= 0.20, SGLang <= 0.5.15):

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, ...]
    ["BlockRemoved", block_hashes, medium, ...]
    ["AllBlocksCleared"]

Unknown fields and trailing array items are ignored; an unknown event type decodes to `UnknownEvent` so that it can be
counted; a malformed event raises `WireError`, which costs that one event, not its batch. Block hashes are ints in
vLLM's default mode and bytes with `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`; both are kept as they come (hashable).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

BlockHash = int | bytes
SEQ_BYTES = 8


class WireError(ValueError):
    """A frame, batch or event that does not follow the wire format. Messages never quote token ids."""


@dataclasses.dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[BlockHash, ...]
    parent_block_hash: BlockHash | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_name: str | None = None
    lora_id: int | None = None
    medium: str | None = None
    group_idx: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[BlockHash, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class UnknownEvent:
    type: str


Event = BlockStored | BlockRemoved | AllBlocksCleared | UnknownEvent


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """One decoded payload. `events` holds the events that decoded; `malformed` counts the ones that did not."""

    ts: float
    events: tuple[Event, ...]
    dp_rank: int | None
    malformed: int = 0


def split_frames(frames: list[bytes]) -> tuple[bytes, int, bytes]:
    """`[topic, seq, payload]` -> (topic, seq, payload); raises WireError on any other shape."""
    if len(frames) != 3:
        raise WireError(f"expected 3 frames (topic, seq, payload), got {len(frames)}")
    topic, seq_bytes, payload = frames
    if len(seq_bytes) != SEQ_BYTES:
        raise WireError(f"sequence frame is {len(seq_bytes)} bytes, expected {SEQ_BYTES}")
    return bytes(topic), int.from_bytes(seq_bytes, "big"), bytes(payload)


def decode_batch(payload: bytes) -> Batch:
    """Decode one msgpack batch; raises WireError when the batch itself is unreadable."""
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WireError(f"payload is not msgpack: {type(exc).__name__}") from None
    if not isinstance(raw, list | tuple) or len(raw) < 2:
        raise WireError("batch is not an array [ts, events, dp_rank]")
    ts, events = raw[0], raw[1]
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise WireError("batch timestamp is not a number")
    if not isinstance(events, list):
        raise WireError("batch events is not an array")
    dp_rank = raw[2] if len(raw) > 2 and isinstance(raw[2], int) and not isinstance(raw[2], bool) else None
    decoded: list[Event] = []
    malformed = 0
    for item in events:
        try:
            decoded.append(decode_event(item))
        except WireError:
            malformed += 1
    return Batch(float(ts), tuple(decoded), dp_rank, malformed)


# Positions of the fields in the tagged-array format (index 0 is the tag).
_ARRAY_FIELDS = {
    "BlockStored": ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium"),
    "BlockRemoved": ("block_hashes", "medium"),
    "AllBlocksCleared": (),
}


def decode_event(item: Any) -> Event:
    """One event in either format -> its dataclass; raises WireError when malformed."""
    if isinstance(item, dict):
        kind = item.get("type")
        fields: dict[str, Any] = item
    elif isinstance(item, list | tuple) and item:
        kind = item[0]
        names = _ARRAY_FIELDS.get(kind, ()) if isinstance(kind, str) else ()
        fields = dict(zip(names, item[1:], strict=False))
    else:
        raise WireError("event is neither a map nor a tagged array")
    if not isinstance(kind, str):
        raise WireError("event has no type tag")
    if kind == "BlockStored":
        return _block_stored(fields)
    if kind == "BlockRemoved":
        return BlockRemoved(
            _hashes(fields.get("block_hashes")),
            _opt_str(fields.get("medium"), "medium"),
            _opt_int(fields.get("group_idx"), "group_idx"),
        )
    if kind == "AllBlocksCleared":
        return AllBlocksCleared()
    return UnknownEvent(kind[:64])


def _block_stored(fields: dict[str, Any]) -> BlockStored:
    hashes = _hashes(fields.get("block_hashes"))
    parent = fields.get("parent_block_hash")
    if parent is not None and not _is_hash(parent):
        raise WireError("BlockStored.parent_block_hash is not an int or bytes")
    tokens = fields.get("token_ids")
    if not isinstance(tokens, list | tuple) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**32 for t in tokens
    ):
        raise WireError("BlockStored.token_ids is not an array of 32-bit unsigned ints")
    size = fields.get("block_size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise WireError("BlockStored.block_size is not a positive int")
    lora_name = fields.get("lora_name")
    return BlockStored(
        hashes,
        parent if parent is None else _hash_value(parent),
        tuple(tokens),
        size,
        lora_name=lora_name if isinstance(lora_name, str) and lora_name else None,
        lora_id=_opt_int(fields.get("lora_id"), "lora_id"),
        medium=_opt_str(fields.get("medium"), "medium"),
        group_idx=_opt_int(fields.get("group_idx"), "group_idx"),
    )


def _is_hash(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, bytes | bytearray)


def _hash_value(value: Any) -> BlockHash:
    return bytes(value) if isinstance(value, bytearray) else value


def _hashes(value: Any) -> tuple[BlockHash, ...]:
    if not isinstance(value, list | tuple) or not all(_is_hash(h) for h in value):
        raise WireError("block_hashes is not an array of ints or bytes")
    return tuple(_hash_value(h) for h in value)


def _opt_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{name} is not an int")
    return value


def _opt_str(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise WireError(f"{name} is not a string")
    return value
