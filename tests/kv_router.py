"""The Redis keys the Kthena router looks up for a prompt, computed its way (sha256 over 4-byte big-endian token
ids, 16-token chunks from the prompt's start), independently of outrider's code, for the KV-event tests."""

from __future__ import annotations

import hashlib
import struct


def router_keys(tokens: list[int], model: str = "tiny", chunk: int = 16) -> set[str]:
    keys = set()
    for i in range(0, len(tokens) - chunk + 1, chunk):
        digest = hashlib.sha256(struct.pack(f">{chunk}I", *tokens[i : i + chunk])).digest()
        keys.add(f"matrix:kv:block:{model}@{struct.unpack('>Q', digest[:8])[0] & 0x7FFFFFFFFFFFFFFF}")
    return keys
