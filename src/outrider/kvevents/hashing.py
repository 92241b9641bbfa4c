"""The Kthena router's token-chunk hash and the Redis key it reads.

The router (kthena `kvcache_aware.go`) splits a prompt's token ids into chunks of `blockSizeToHash` tokens counted
from the start of the prompt, and hashes each chunk on its own (no chaining): sha256 over the ids written as 4-byte
big-endian unsigned ints, the first 8 bytes of the digest read big-endian, the top bit cleared. It then looks up
`matrix:kv:block:{model}@{hash}` for each chunk and scores pods by the run of leading chunks they hold.

outrider advertises only full chunks. The router also hashes a prompt's trailing partial chunk, but that chunk ends
where that one prompt ends: an engine caches whole blocks, so a partial chunk's tokens are either not cached at all or,
when they are, followed by more tokens that make a later prompt's chunk at that place a different (full) one. The
only match an advertised partial chunk could earn is a later prompt ending at exactly the same token, and the router
counts a miss on the last chunk the same for every pod, so leaving it out never changes which pod wins.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

KEY_PREFIX = "matrix:kv:block:"
DEFAULT_CHUNK_TOKENS = 16  # the router's default blockSizeToHash
_MASK_63 = 0x7FFF_FFFF_FFFF_FFFF


def chunk_hash(token_ids: Sequence[int]) -> int:
    """The router's hash of one chunk of token ids (a 63-bit non-negative int)."""
    digest = hashlib.sha256(struct.pack(f">{len(token_ids)}I", *token_ids)).digest()
    return int.from_bytes(digest[:8], "big") & _MASK_63


def prompt_chunk_hashes(token_ids: Sequence[int], chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> list[int]:
    """Hashes of the full chunks of a token sequence, chunked from its start (what outrider can advertise)."""
    full = len(token_ids) // chunk_tokens
    return [chunk_hash(token_ids[i * chunk_tokens : (i + 1) * chunk_tokens]) for i in range(full)]


def redis_key(model: str, chunk: int) -> str:
    """The router's Redis key for one chunk of one served model."""
    return f"{KEY_PREFIX}{model}@{chunk}"
