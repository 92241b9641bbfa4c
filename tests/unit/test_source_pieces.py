"""Re-cutting a store's body into read pieces: never more than PIECE_SIZE, never past the range, never short."""

from __future__ import annotations

import pytest

from outrider.errors import SourceTransientError
from outrider.sources._common import repieced
from outrider.sources.base import PIECE_SIZE


def test_big_chunks_are_cut_to_piece_size() -> None:
    body = [bytes(3 * PIECE_SIZE + 5), b"", bytes(10)]
    pieces = list(repieced(body, 3 * PIECE_SIZE + 15, "s3://b/p", "f"))
    assert [len(p) for p in pieces] == [PIECE_SIZE, PIECE_SIZE, PIECE_SIZE, 5, 10]


def test_a_body_longer_than_the_range_is_cut_at_the_range() -> None:
    """A server that ignored Range from byte 0 sends the whole file: only the asked bytes come out."""
    pieces = list(repieced([b"abcdef", b"ghij"], 7, "s3://b/p", "f"))
    assert b"".join(pieces) == b"abcdefg"


def test_a_short_body_is_transient() -> None:
    with pytest.raises(SourceTransientError, match="4 of 10"):
        list(repieced([b"ab", b"cd"], 10, "s3://b/p", "f"))
