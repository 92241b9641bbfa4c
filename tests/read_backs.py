"""A probe on the download engine: which ranges it hashes by reading a part file back (rather than as it writes)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from outrider.transfer import engine


def count_read_backs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(start, end) of every range the engine hashes by reading the part file back, in the order it does so."""
    ranges: list[tuple[int, int]] = []
    real = engine._Run._hash_range

    def counted(self: engine._Run, task: Any, digest: Any, start: int, end: int, halt: threading.Event) -> None:
        ranges.append((start, end))
        real(self, task, digest, start, end, halt)

    monkeypatch.setattr(engine._Run, "_hash_range", counted)
    return ranges
