"""Shared test fixtures: where the real engine pages live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def fixtures_dir() -> Path:
    """The shared engine pages: $OUTRIDER_FIXTURES, else ../shared/fixtures beside the repo (as in CI)."""
    root = Path(os.environ.get("OUTRIDER_FIXTURES", REPO.parent / "shared" / "fixtures"))
    pages = root / "engine-metrics"
    if not pages.is_dir():
        raise RuntimeError(f"engine metric fixtures not found at {pages}; set OUTRIDER_FIXTURES")
    return pages


@pytest.fixture(scope="session")
def engine_pages() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(fixtures_dir().glob("*.prom"))}
