"""The router-compatible chunk hash: computed independently here, plus vectors pinned once by hand.

The pinned vectors were derived outside Python as well:
    for i in $(seq 0 15); do printf "\\x00\\x00\\x00\\x$(printf %02x $i)"; done | sha256sum | cut -c1-16
gives 59d6cdbe5b0d6a50 -> 6473494984593326032 (top bit already clear).
"""

from __future__ import annotations

import hashlib
import struct

from outrider.kvevents.hashing import chunk_hash, prompt_chunk_hashes, redis_key


def reference(tokens: list[int]) -> int:
    digest = hashlib.sha256(b"".join(struct.pack(">I", t) for t in tokens)).digest()
    return int(struct.unpack(">Q", digest[:8])[0]) & ~(1 << 63)


def test_pinned_vectors() -> None:
    assert chunk_hash(list(range(16))) == 6473494984593326032
    # sha256 of 00 00 00 01 starts with a byte >= 0x80: the top bit must be cleared (raw 12972356667272345973).
    assert chunk_hash([1]) == 3748984630417570165


def test_matches_an_independent_computation_for_large_ids() -> None:
    tokens = [0, 1, 255, 256, 65535, 65536, 2**31, 2**32 - 1, 7, 8, 9, 10, 11, 12, 13, 14]
    assert chunk_hash(tokens) == reference(tokens)
    assert 0 <= chunk_hash(tokens) < 2**63


def test_prompt_hashes_chunk_from_the_start_and_skip_the_partial_tail() -> None:
    tokens = list(range(1000, 1000 + 40))
    assert prompt_chunk_hashes(tokens, 16) == [reference(tokens[0:16]), reference(tokens[16:32])]
    assert prompt_chunk_hashes(tokens[:15], 16) == []
    assert prompt_chunk_hashes(tokens, 8) == [reference(tokens[i : i + 8]) for i in range(0, 40, 8)]


def test_chunks_are_hashed_alone_not_chained() -> None:
    a, b = list(range(16)), list(range(100, 116))
    assert prompt_chunk_hashes(a + b)[1] == prompt_chunk_hashes(list(range(50, 66)) + b)[1]


def test_redis_key_layout() -> None:
    assert redis_key("deepseek-ai/DeepSeek-R1", 12345) == "matrix:kv:block:deepseek-ai/DeepSeek-R1@12345"
