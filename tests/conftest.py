"""Shared test fixtures: the real engine pages, kept in the repository (tests/fixtures/engine-metrics)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = REPO / "tests" / "fixtures" / "engine-metrics"


def fixtures_dir() -> Path:
    """The engine pages served by real engines; SOURCES.md beside them says where each came from."""
    return PAGES


@pytest.fixture(scope="session")
def engine_pages() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(fixtures_dir().glob("*.prom"))}
