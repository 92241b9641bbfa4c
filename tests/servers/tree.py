"""The model tree every store test serves: nested directories, an empty file, and one file of a few MiB that
spans several read pieces (PIECE_SIZE) and does not end on a piece boundary."""

from __future__ import annotations

import hashlib
import json
import random

from outrider.sources.base import PIECE_SIZE, Source

BIG = "model.safetensors"
BIG_SIZE = 3 * PIECE_SIZE + 12_345
# The ranges of BIG every store must read byte-exact.
BIG_RANGES = [
    (0, 1),  # first byte
    (BIG_SIZE // 2, BIG_SIZE // 2 + 4096),  # middle
    (BIG_SIZE - 1, BIG_SIZE),  # last byte
    (PIECE_SIZE - 7, PIECE_SIZE + 7),  # across a piece boundary
    (0, BIG_SIZE),  # whole file, several pieces
]


def read_all(source: Source, path: str, start: int, end: int) -> bytes:
    """A range read in full, checking the Source contract on the way: every piece non-empty and <= PIECE_SIZE."""
    pieces = list(source.read_range(path, start, end))
    assert all(0 < len(p) <= PIECE_SIZE for p in pieces)
    return b"".join(pieces)


def model_tree() -> dict[str, bytes]:
    rng = random.Random(20240611)  # fixed: the same bytes every run, so a failure reproduces
    return {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}).encode(),
        "tokenizer/tokenizer.json": json.dumps({"model": {"vocab": {"a": 0, "b": 1}}}).encode(),
        "tokenizer/merges/merges.txt": b"#version: 0.2\na b\n",
        "notes/empty.txt": b"",
        BIG: rng.randbytes(BIG_SIZE),
    }


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
