"""Accept-Encoding parsing for the gzip'd /metrics body."""

from __future__ import annotations

import pytest

from outrider.http.hot import accepts_gzip


@pytest.mark.parametrize(
    ("header", "gzip"),
    [
        (b"gzip", True),
        (b"identity, gzip", True),
        (b"GZIP;q=0.5", True),
        (b"*", True),
        (b"gzip;q=0", False),
        (b"gzip; q=0.0, identity", False),
        (b"deflate, br", False),
        (b"gzip;q=bogus", False),
        (None, False),
    ],
)
def test_accepts_gzip(header: bytes | None, gzip: bool) -> None:
    headers = [] if header is None else [(b"accept-encoding", header)]
    assert accepts_gzip({"headers": headers}) is gzip
